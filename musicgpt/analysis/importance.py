"""Head importance: how much a model's NLL rises over pieces when one attention head is knocked out (torch).

Knocking out head h of layer l zeroes its output, the head's D channels of the attention output, before the
output projection (so the projection's bias stays, as it does for every head). Each piece is read as
[BOS] + its first `max_tokens` - 1 tokens and teacher-forced through the model's own forward pass and
sliding-window KV cache (as `musicgpt attend` and the head atlas read it); its NLL is the mean over its
predicted tokens (every token after BOS). A head's importance is the NLL with it knocked out minus the
NLL of the whole model, in nats per token, averaged over pieces (each piece counts once, as the atlas's
measures). Heads are knocked out a batch at a time: row b of a batch knocks out its own head.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from musicgpt.model.prefill import PREFILL_CHUNK, teacher_force

IMPORTANCE_TOKENS = 512  # per piece, BOS included: about 15 s a piece for the bundled model (2 cores)
RULE = ("NLL (nats per predicted token, teacher forcing) with the head's output zeroed before the output "
        "projection, minus the whole model's; mean over pieces")


class _KnockOut:
    """A forward pre-hook on a layer's output projection: zero, per batch row, the channels of one head."""

    def __init__(self, heads_of_rows: list[int | None], n_head: int, head_dim: int):
        self.mask = torch.ones(len(heads_of_rows), 1, n_head * head_dim)  # (B, 1, C)
        for row, head in enumerate(heads_of_rows):
            if head is not None:
                self.mask[row, 0, head * head_dim : (head + 1) * head_dim] = 0.0

    def __call__(self, module, inputs):
        (y,) = inputs  # (B, T, C)
        return (y * self.mask.to(y.device, y.dtype),)


@torch.no_grad()
def knocked_out_nll(model, ids: np.ndarray, knocked: list[tuple[int, int] | None], *,
                    chunk: int = PREFILL_CHUNK) -> np.ndarray:
    """Mean NLL per predicted token of `ids` (T,) with each (layer, head) of `knocked` zeroed (None: nothing),
    one batch row each: (len(knocked),)."""
    cfg = model.config
    hooks = []
    try:
        for layer, block in enumerate(model.blocks):
            rows = [k[1] if k is not None and k[0] == layer else None for k in knocked]
            if any(r is not None for r in rows):
                hooks.append(block.attn.proj.register_forward_pre_hook(
                    _KnockOut(rows, cfg.n_head, cfg.d_model // cfg.n_head)))
        device = next(model.parameters()).device
        batch = torch.as_tensor(np.asarray(ids, np.int64))[None].expand(len(knocked), -1).to(device)
        nll = np.full((len(knocked), len(ids)), np.nan)
        teacher_force(model, batch, model.new_cache(), chunk=chunk, token_nll=nll)
    finally:
        for hook in hooks:
            hook.remove()
    return np.nanmean(nll[:, 1:], axis=1)


def head_importance(model, pieces_ids: Iterable[np.ndarray], *, batch: int = 8, progress=None) -> dict:
    """{"importance": (L, H) mean NLL rise per token, "base_nll": the whole model's mean NLL, "pieces": n} over
    the token sequences `pieces_ids` (each starting with BOS). progress(i): called after each piece."""
    cfg = model.config
    heads = [(layer, head) for layer in range(cfg.n_layer) for head in range(cfg.n_head)]
    was_training = model.training
    model.eval()
    rises, bases = [], []
    try:
        for i, ids in enumerate(pieces_ids):
            runs = [None, *heads]
            nll = np.concatenate([knocked_out_nll(model, ids, runs[j : j + batch]) for j in range(0, len(runs), batch)])
            bases.append(nll[0])
            rises.append((nll[1:] - nll[0]).reshape(cfg.n_layer, cfg.n_head))
            if progress is not None:
                progress(i)
    finally:
        model.train(was_training)
    return {"importance": np.mean(rises, axis=0), "base_nll": float(np.mean(bases)), "pieces": len(rises)}
