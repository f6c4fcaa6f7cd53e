"""Choosing the next token: grammar masks, temperature, top-k, top-p, min-p, a seeded generator.

Order of operations on one row of logits: tokens the grammar forbids get -inf; temperature
divides; top-k keeps the k most likely; top-p keeps the smallest set whose probability reaches p;
min-p drops tokens less likely than min_p times the most likely one; one token is drawn by the
Gumbel-max trick, argmax(logits + g) with g = -log(-log(u)), u uniform from a `torch.Generator`
seeded by the caller (temperature 0: the argmax). That is an exact draw from softmax(logits) in
two ops on the logits (an add and an argmax) instead of softmax, cumulative sum, search and clamp;
`GumbelNoise` draws the noise of many steps in one call, so a generation step adds no RNG op.
Every filter keeps the most likely allowed token, so a row never ends up empty. Which tokens are
allowed at all is decided by `musicgpt.generation.constraints` (the grammar, the long-note limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from musicgpt.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    """How to turn logits into a token; the defaults sample from the model's distribution as it is."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p: float = 1.0  # nucleus: the smallest set with this much probability (1 = off)
    min_p: float = 0.0  # drop tokens below min_p * p(most likely) (0 = off)
    keep_type_mass: bool = True  # masked mass goes to the allowed tokens of the same event type (see `sample`)

    def __post_init__(self):
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ConfigError(f"temperature: must be a finite number >= 0, got {self.temperature!r}")
        if int(self.top_k) != self.top_k or self.top_k < 0:
            raise ConfigError(f"top_k: must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must lie in (0, 1] (1 = off), got {self.top_p!r}")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"min_p: must lie in [0, 1) (0 = off), got {self.min_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: Tensor, config: SamplingConfig) -> Tensor:
    """Temperature, top-k, top-p and min-p applied to (B, V) float logits; removed tokens get -inf."""
    if config.temperature not in (0.0, 1.0):
        logits = logits / config.temperature
    if config.top_k and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p  # the mass before it already reaches p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if config.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < config.min_p * probs.amax(dim=-1, keepdim=True), float("-inf"))
    return logits


def sample(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None,
           allowed: Tensor | None = None, *, blocked: Tensor | None = None, noise: Tensor | None = None,
           types: Tensor | None = None) -> Tensor:
    """One token id per row of (B, V) logits, (B,) int64; `allowed` (B, V) bool masks the rest out.

    `blocked` (B, V) bool is the complement of `allowed` (as `GrammarMask.blocked` keeps it).
    `noise` (B, V): standard Gumbel noise for this draw (a `GumbelNoise` row); drawn from
    `generator` when None. `types` (V, T) float one-hot of each token's event type: with
    `config.keep_type_mass`, the probability the mask takes from a type (a NOTE_OFF for a pitch
    that is not sounding) goes to that type's allowed tokens, so masking keeps the model's odds
    of each kind of event. Without it a model that is unsure of the pitch to release loses those
    NOTE_OFFs to the other types, emits fewer NOTE_OFFs than NOTE_ONs, and notes pile up.
    """
    logits = logits.float()
    if allowed is not None:
        blocked = ~allowed
    if blocked is not None:
        if types is not None and config.keep_type_mass:
            logits = keep_type_mass(logits, blocked, types)
        logits = logits.masked_fill(blocked, float("-inf"))
    if config.greedy:
        return logits.argmax(dim=-1)
    filtered = filter_logits(logits, config)
    if noise is None:
        noise = gumbel(filtered.shape, generator)
    if filtered is not logits or blocked is not None:  # a fresh tensor: add in place
        return filtered.add_(noise).argmax(dim=-1)
    return (filtered + noise).argmax(dim=-1)


def keep_type_mass(logits: Tensor, blocked: Tensor, types: Tensor) -> Tensor:
    """(B, V) logits whose allowed tokens carry their type's whole probability (before the mask is applied)."""
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    total = probs @ types  # (B, T): probability of each event type
    kept = probs.masked_fill(blocked, 0.0) @ types  # (B, T): of it, on allowed tokens
    gain = torch.where(kept > 0, total / kept.clamp_min(1e-30), torch.ones_like(kept)).log_()  # (B, T)
    return logits + gain @ types.T  # (B, V): each token gets its type's gain


def gumbel(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Standard Gumbel noise, float32: -log(-log(u)) with u uniform in (0, 1)."""
    u = torch.rand(shape, generator=generator).clamp_(min=torch.finfo(torch.float32).tiny)
    return u.log_().neg_().log_().neg_()


class GumbelNoise:
    """Gumbel noise rows (B, V) for successive sampling steps, drawn `chunk` steps at a time."""

    def __init__(self, generator: torch.Generator, batch: int, vocab_size: int, chunk: int = 256):
        self.generator, self.shape, self.chunk = generator, (chunk, batch, vocab_size), chunk
        self._rows: list[Tensor] = []

    def next(self) -> Tensor:
        """The noise of the next step, (B, V)."""
        if not self._rows:
            self._rows = list(gumbel(self.shape, self.generator).unbind(0))[::-1]
        return self._rows.pop()


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (sampling runs on the CPU whatever the model's device)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen
