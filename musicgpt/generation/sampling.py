"""Choosing the next token: grammar masks, temperature, top-k, top-p, min-p, a seeded generator.

Order of operations on one row of logits: tokens the grammar forbids get -inf; temperature
divides; top-k keeps the k most likely; top-p keeps the smallest set whose probability reaches p;
min-p drops tokens less likely than min_p times the most likely one; one token is drawn by the
Gumbel-max trick, argmax(logits + g) with g = -log(-log(u)), u uniform from a `torch.Generator`
seeded by the caller (temperature 0: the argmax). That is an exact draw from softmax(logits) in
two ops on the logits (an add and an argmax) instead of softmax, cumulative sum, search and clamp;
`GumbelNoise` draws the noise of many steps in one call, so a generation step adds no RNG op.
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


class GrammarMask:
    """Per-sequence grammar states of a tokenizer and the (B, V) mask of tokens allowed next.

    `allowed` is kept up to date by `push` in a few scalar writes for the PerformanceTokenizer's
    grammar (a NOTE_ON closes its pitch to NOTE_ON, a NOTE_OFF reopens it, a TIME_SHIFT opens the
    NOTE_OFFs of the notes begun in the step, a VELOCITY leaves only NOTE_ONs); anything else (a
    token that was not allowed, EOS, a tokenizer with other rules) recomputes the row from the
    GrammarState. `blocked` (B, V) torch bool shares memory with `~allowed`: the sampler masks with it
    without building a tensor per step. tests/test_sampling.py checks the rows against the
    GrammarState at every step.

    Tokenizers without a `grammar()` (the miditok ones) get the generic rule only: no PAD, no
    BOS after the start, EOS only when allowed.
    """

    def __init__(self, tokenizer, batch: int, allow_eos: bool = True, width: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.allow_eos = allow_eos
        self.states = [tokenizer.grammar() for _ in range(batch)] if hasattr(tokenizer, "grammar") else None
        self._generic = np.ones(self.vocab_size, bool)
        for special in (tokenizer.pad_id, tokenizer.bos_id):
            self._generic[special] = False
        self._generic[tokenizer.eos_id] = allow_eos
        # (B, width): `width` is the model's vocabulary when it has ids the tokenizer never uses (always blocked)
        full = np.ones((batch, max(width or 0, self.vocab_size)), bool)
        self._blocked = full[:, : self.vocab_size]
        self.blocked = torch.from_numpy(full)  # the same memory
        self._fast = False
        self.types: Tensor | None = None  # (width, T) one-hot event types, for `sample(types=...)`
        if hasattr(tokenizer, "token_type"):
            kind = tokenizer.token_type(np.arange(self.vocab_size))  # -1 for ids outside the vocabulary
            onehot = np.zeros((full.shape[1], int(kind.max()) + 2), np.float32)
            onehot[np.arange(self.vocab_size), kind] = 1.0
            onehot[self.vocab_size:, -1] = 1.0  # ids the tokenizer never uses: a type of their own (always blocked)
            self.types = torch.from_numpy(onehot)
        if self.states is not None:
            first, count = tokenizer.ranges["NOTE_ON"]
            self._on = slice(first, first + count)
            first, count = tokenizer.ranges["VELOCITY"]
            self._vel = slice(first, first + count)
            names = ("NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY")
            self._fast = (type(self.states[0]).__name__ == "GrammarState" and not self.states[0].canonical
                          and tokenizer.ranges["NOTE_ON"][1] == tokenizer.ranges["NOTE_OFF"][1] == 128)
            if self._fast:  # per id: 0 NOTE_ON, 1 NOTE_OFF, 2 TIME_SHIFT, 3 VELOCITY, -1 other; and the pitch
                kinds = np.full(self.vocab_size, -1)
                pitch = np.zeros(self.vocab_size, np.int64)
                for k, name in enumerate(names):
                    first, count = tokenizer.ranges[name]
                    kinds[first : first + count] = k
                    pitch[first : first + count] = np.arange(count)
                self._kind, self._pitch = kinds.tolist(), pitch.tolist()
                self._on0, self._off0 = tokenizer.ranges["NOTE_ON"][0], tokenizer.ranges["NOTE_OFF"][0]
                self._saved = np.empty((batch, self.vocab_size), bool)  # the row before a VELOCITY
                self._after_velocity = [False] * batch
                self._opened: list[list[int]] = [[] for _ in range(batch)]  # NOTE_ONs of the current step
                self._n_sounding = [0] * batch
        for b in range(batch):
            self._recompute(b)

    def feed(self, b: int, ids) -> None:
        """Push a prefix of sequence b (its BOS and primer)."""
        if self.states is not None:
            self.states[b].feed(ids)
            self._recompute(b)

    def push(self, b: int, token: int) -> None:
        """Advance sequence b by one token, and its row of the mask."""
        if self.states is None:
            return
        token = int(token)
        was_allowed = 0 <= token < self.vocab_size and not self._blocked[b, token]
        self.states[b].push(token)
        if not (self._fast and was_allowed):
            self._recompute(b)
            return
        kind, pitch, row = self._kind[token], self._pitch[token], self._blocked[b]
        if kind == 3:  # VELOCITY: keep the row, allow NOTE_ONs only
            self._saved[b] = row
            row[:] = True
            row[self._on] = self._saved[b, self._on]
            self._after_velocity[b] = True
            return
        if self._after_velocity[b]:
            row[:] = self._saved[b]
            self._after_velocity[b] = False
        if kind == 0:  # NOTE_ON: no second NOTE_ON of the pitch; its NOTE_OFF waits for a TIME_SHIFT
            row[self._on0 + pitch] = True
            self._opened[b].append(pitch)
            self._n_sounding[b] += 1
            if self._n_sounding[b] == 128:  # every pitch sounds: no NOTE_ON, so no VELOCITY
                row[self._vel] = True
        elif kind == 1:  # NOTE_OFF
            row[self._on0 + pitch] = False
            row[self._off0 + pitch] = True
            if self._n_sounding[b] == 128:
                row[self._vel] = False
            self._n_sounding[b] -= 1
        elif kind == 2:  # TIME_SHIFT: the notes begun in the step may now end
            for p in self._opened[b]:
                row[self._off0 + p] = False
            self._opened[b].clear()
        else:
            self._recompute(b)

    def finish(self, b: int) -> None:
        """Sequence b takes no more tokens: its row falls back to the generic rule (never empty)."""
        self._blocked[b] = ~self._generic

    def _recompute(self, b: int) -> None:
        self._blocked[b] = ~self.allowed_row(b)
        if self._fast:
            state = self.states[b]
            self._after_velocity[b] = bool(state.after_velocity)
            self._saved[b] = ~self.allowed_row(b, after_velocity=False)
            self._opened[b] = np.flatnonzero(state.opened_now).tolist()
            self._n_sounding[b] = int(state.sounding.sum())

    def allowed_row(self, b: int, after_velocity: bool | None = None) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens sequence b may take next, from its GrammarState.

        after_velocity=False gives the row as if the last token were not a VELOCITY.
        """
        if self.states is None:
            return self._generic
        state = self.states[b]
        if after_velocity is not None and after_velocity != state.after_velocity:
            flag, state.after_velocity = state.after_velocity, after_velocity
            try:
                mask = state.allowed()
            finally:
                state.after_velocity = flag
        else:
            mask = state.allowed()
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


def shift_seconds_per_id(tokenizer) -> np.ndarray:
    """Seconds each token id moves the clock (its TIME_SHIFT), per id; zeros for tokenizers without TIME_SHIFTs."""
    ids = np.arange(tokenizer.vocab_size)
    if "TIME_SHIFT" not in getattr(tokenizer, "ranges", {}):
        return np.zeros(len(ids))
    shift = tokenizer.token_type(ids) == tokenizer.type_names.index("TIME_SHIFT")
    return np.where(shift, tokenizer.token_value(ids) * tokenizer.time_step, 0.0)


class LongNoteLimit:
    """Ends notes that have sounded `seconds`: the next token of that sequence must be one of their NOTE_OFFs.

    An undertrained model tends to forget NOTE_OFFs (notes hang for the rest of the piece). Real piano
    performances rarely hold a note that long (ASAP, pedal folded: 0.08% of notes last over 10 s), so
    the limit changes almost nothing a model that does close its notes would write; Magenta's
    `max_note_duration` truncates such notes when decoding instead. Time moves only with TIME_SHIFT
    tokens, so a note ends at the first token boundary at or after its limit (at most one shift late).
    Only for tokenizers with NOTE_ON/NOTE_OFF/TIME_SHIFT/VELOCITY tokens; others are left alone.
    """

    def __init__(self, tokenizer, batch: int, seconds: float):
        ranges = getattr(tokenizer, "ranges", {})
        self.enabled = seconds > 0 and all(k in ranges for k in ("NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY"))
        self.seconds = float(seconds)
        if not self.enabled:
            return
        ids = np.arange(tokenizer.vocab_size)
        kind, value = tokenizer.token_type(ids), tokenizer.token_value(ids)
        names = tokenizer.type_names
        self._on = np.where(kind == names.index("NOTE_ON"), value, -1)  # pitch per id, -1 elsewhere
        self._off = np.where(kind == names.index("NOTE_OFF"), value, -1)
        self._velocity = kind == names.index("VELOCITY")
        self._shift = shift_seconds_per_id(tokenizer)
        self._off_id = np.asarray(tokenizer.note_off(np.arange(ranges["NOTE_OFF"][1])), np.int64)
        self.now = np.zeros(batch)  # seconds since the start of each sequence
        self.onset = np.full((batch, ranges["NOTE_ON"][1]), np.nan)  # (B, pitches): when each sounding note began
        self._after_velocity = [False] * batch

    def feed(self, b: int, ids) -> None:
        """Replay a prefix (BOS and primer) of sequence b."""
        for t in ids:
            self.push(b, int(t))

    def push(self, b: int, token: int) -> None:
        """Advance sequence b by one token."""
        if not self.enabled or not 0 <= token < len(self._shift):
            return
        if self._on[token] >= 0:
            self.onset[b, self._on[token]] = self.now[b]
        elif self._off[token] >= 0:
            self.onset[b, self._off[token]] = np.nan
        self.now[b] += self._shift[token]
        self._after_velocity[b] = bool(self._velocity[token])

    def apply(self, blocked: Tensor, active: list[int]) -> Tensor:
        """`blocked` (B, V), or a copy in which overdue sequences may only close their overdue notes."""
        if not self.enabled:
            return blocked
        overdue = self.now[:, None] - self.onset >= self.seconds - 1e-9  # (B, pitches); NaN compares False
        rows = [b for b in active if not self._after_velocity[b] and overdue[b].any()]
        if not rows:
            return blocked
        blocked = blocked.clone()
        for b in rows:
            blocked[b] = True
            blocked[b, torch.from_numpy(self._off_id[np.flatnonzero(overdue[b])])] = False
        return blocked
