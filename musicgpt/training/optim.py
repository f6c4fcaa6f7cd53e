"""The optimizer and its schedule: AdamW parameter groups and linear warmup + cosine decay (torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from musicgpt.training.config import Config

__all__ = ["parameter_groups", "train_only_rows", "freeze_rows", "Schedule", "schedule_for"]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on Linear weights only (not embeddings, relative embeddings, norms, biases)."""
    no_decay_modules = (nn.Embedding, nn.LayerNorm)
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, no_decay_modules) or p.dim() < 2 or "emb" in full.rsplit(".", 1)[-1]:
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def train_only_rows(model: nn.Module, embedding: nn.Embedding, rows: list[int]) -> None:
    """Freeze every weight but these rows of `embedding` (prompt tuning of the control tokens).

    The rows' gradient is kept and the rest of the table's zeroed, so AdamW (no weight decay on
    embeddings) never moves them, tied output head included: outside `rows` the model stays bit-identical.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    embedding.weight.requires_grad_(True)
    _mask_row_gradients(embedding, rows, keep=True)


def freeze_rows(embedding: nn.Embedding, rows: list[int]) -> None:
    """Keep these rows of `embedding` (tied output head included) bit-identical while everything else trains.

    Their gradient is zeroed: a row whose token never occurs in a batch still gets one through a tied
    head (the softmax pushes every non-target logit down), and AdamW scales even a tiny gradient to a
    step of about the learning rate. With zero gradients its moments stay zero and it never moves (no
    weight decay on embeddings)."""
    _mask_row_gradients(embedding, rows, keep=False)


def _mask_row_gradients(embedding: nn.Embedding, rows: list[int], keep: bool) -> None:
    """Multiply the table's gradient by a (V, 1) mask: 1 on `rows` and 0 elsewhere (keep), or the reverse."""
    weight = embedding.weight
    mask = torch.full((weight.shape[0], 1), float(not keep), dtype=weight.dtype, device=weight.device)  # (V, 1)
    mask[torch.as_tensor(rows, dtype=torch.long, device=weight.device)] = float(keep)
    weight.register_hook(lambda grad: grad * mask)  # (V, d) * (V, 1)


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to `peak`, then cosine decay to `floor` at `total` steps.

    A run resumed with another step count (or learning rates) goes on from where it was: from
    `from_step` on, the rate falls along a cosine from `from_lr` (the old schedule's rate there) to
    `floor` at the new `total`, instead of jumping back up the new schedule (see `continued`).
    """

    peak: float
    floor: float
    warmup: int
    total: int
    from_step: int = 0
    from_lr: float | None = None

    def continued(self, old: "Schedule", step: int) -> "Schedule":
        """This schedule (the new settings) taking over at `step` from `old` without a jump in the rate."""
        if step < old.warmup or step >= self.total:
            return self  # still warming up (the new peak is the target), or nothing left to decay
        return replace(self, from_step=step, from_lr=old.lr(step))

    def same_settings(self, other: "Schedule") -> bool:
        """Whether both come from the same peak, floor, warmup and total."""
        return (self.peak, self.floor, self.warmup, self.total) == (other.peak, other.floor, other.warmup, other.total)

    def lr(self, step: int) -> float:
        """Learning rate of optimizer step `step` (0-based)."""
        if self.from_lr is not None and step >= self.from_step:
            progress = min(1.0, (step - self.from_step) / max(1, self.total - self.from_step))
            return self.floor + 0.5 * (self.from_lr - self.floor) * (1.0 + math.cos(math.pi * progress))
        if step < self.warmup:
            return self.peak * (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + 0.5 * (self.peak - self.floor) * (1.0 + math.cos(math.pi * progress))


def schedule_for(config: Config, finetune: bool) -> tuple[Schedule, int]:
    """The schedule and step count: [optim] and train.steps, or [finetune] with --init-from."""
    if finetune:
        ft = config.finetune
        steps = ft.steps if ft.steps is not None else config.train.steps
        return Schedule(ft.lr, ft.min_lr, ft.warmup_steps, steps), steps
    o = config.optim
    return Schedule(o.lr, o.min_lr, o.warmup_steps, config.train.steps), config.train.steps
