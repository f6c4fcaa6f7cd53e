"""Choosing the next token: grammar masks, temperature, top-k, top-p, min-p, a seeded generator.

Order of operations on one row of logits: tokens the grammar forbids get -inf; temperature
divides; top-k keeps the k most likely; top-p keeps the smallest set whose probability reaches p;
min-p drops tokens less likely than min_p times the most likely one; one token is drawn by
inverse CDF with a uniform from a `torch.Generator` seeded by the caller (temperature 0: the argmax).
Every filter keeps the most likely allowed token, so a row never ends up empty.

`GrammarMask` tracks one `GrammarState` per sequence (the tokenizer's rules: no NOTE_OFF for a
silent pitch, no NOTE_ON for a sounding one, after VELOCITY only a NOTE_ON, no PAD or BOS
mid-stream) and adds two rules of its own: VELOCITY only when some NOTE_ON could follow it, and
EOS only when the caller lets a sequence end. `closing_tokens` ends every sounding note.
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


def sample(logits: Tensor, config: SamplingConfig, generator: torch.Generator,
           allowed: Tensor | None = None) -> Tensor:
    """One token id per row of (B, V) logits, (B,) int64; `allowed` (B, V) bool masks the rest out."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if config.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, config), dim=-1)
    # Inverse CDF: the first token whose cumulative mass exceeds u. A token of zero probability adds
    # nothing to the sum, so it is never chosen. One draw per row; 5x cheaper than torch.multinomial.
    cdf = probs.cumsum(dim=-1)  # (B, V)
    u = torch.rand((probs.shape[0], 1), generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).view(-1).clamp_(max=probs.shape[-1] - 1)


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (sampling runs on the CPU whatever the model's device)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return gen


class GrammarMask:
    """Per-sequence grammar states of a tokenizer and the (B, V) mask of tokens allowed next.

    Tokenizers without a `grammar()` (the miditok ones) get the generic rule only: no PAD, no
    BOS after the start, EOS only when allowed.
    """

    def __init__(self, tokenizer, batch: int, allow_eos: bool = True):
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.allow_eos = allow_eos
        self.states = [tokenizer.grammar() for _ in range(batch)] if hasattr(tokenizer, "grammar") else None
        self._generic = np.ones(self.vocab_size, bool)
        for special in (tokenizer.pad_id, tokenizer.bos_id):
            self._generic[special] = False
        self._generic[tokenizer.eos_id] = allow_eos
        if self.states is not None:
            first, count = tokenizer.ranges["NOTE_ON"]
            self._on = slice(first, first + count)
            first, count = tokenizer.ranges["VELOCITY"]
            self._vel = slice(first, first + count)

    def feed(self, b: int, ids) -> None:
        """Push a prefix of sequence b (its BOS and primer)."""
        if self.states is not None:
            self.states[b].feed(ids)

    def push(self, b: int, token: int) -> None:
        """Advance sequence b by one token."""
        if self.states is not None:
            self.states[b].push(token)

    def allowed_row(self, b: int) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens sequence b may take next."""
        if self.states is None:
            return self._generic
        mask = self.states[b].allowed()
        if not mask[self._on].any():  # a VELOCITY must be followed by a NOTE_ON
            mask[self._vel] = False
        mask[self.tokenizer.eos_id] &= self.allow_eos
        mask[self.tokenizer.bos_id] = False
        mask[self.tokenizer.pad_id] = False
        if not mask.any():  # cannot happen with the rules above; keep the sampler total anyway
            mask = self._generic.copy()
        return mask

    def allowed(self, rows: list[int]) -> Tensor:
        """(len(rows), V) bool tensor of the tokens each listed sequence may take next."""
        return torch.from_numpy(np.stack([self.allowed_row(b) for b in rows]))

    def closing_tokens(self, b: int, trailing: list[int]) -> tuple[list[int], int]:
        """(tokens that end every note still sounding in sequence b, how many trailing tokens to drop).

        A trailing VELOCITY (no NOTE_ON after it) is dropped. Notes that began in the current time
        step get one TIME_SHIFT first so they keep a length of one step; then a NOTE_OFF per
        sounding pitch, ascending. Tokenizers without a grammar get nothing (decoding closes notes).
        """
        if self.states is None:
            return [], 0
        tok = self.tokenizer
        drop = 1 if trailing and int(tok.token_type(trailing[-1])) == tok.type_names.index("VELOCITY") else 0
        state = self.states[b]
        sounding = np.flatnonzero(state.sounding)
        if not len(sounding):
            return [], drop
        tokens = [int(tok.time_shift(1))] if state.opened_now.any() else []
        tokens += [int(t) for t in tok.note_off(sounding)]
        return tokens, drop
