"""Which tokens may come next, per sequence: the tokenizer's grammar and the long-note limit, as (B, V) masks.

`GrammarMask` tracks one `GrammarState` per sequence (the tokenizer's rules: no NOTE_OFF for a
silent pitch, no NOTE_ON for a sounding one, after VELOCITY only a NOTE_ON, no PAD or BOS
mid-stream) and adds two rules of its own: VELOCITY only when some NOTE_ON could follow it, and
EOS only when the caller lets a sequence end. `closing_tokens` ends every sounding note.
`LongNoteLimit` forces the NOTE_OFF of a note that has sounded too long. The sampler
(`musicgpt.generation.sampling.sample`) takes the resulting `blocked` mask.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor

from musicgpt.tokens.base import PerformanceEvents, Tokenizer
from musicgpt.tokens.grammar import GrammarState

__all__ = ["GrammarMask", "LongNoteLimit", "TimeLimit"]


class GrammarMask:
    """Per-sequence grammar states of a tokenizer and the (B, V) mask of tokens allowed next.

    `allowed` is kept up to date by `push` in a few scalar writes for the PerformanceTokenizer's
    grammar (a NOTE_ON closes its pitch to NOTE_ON, a NOTE_OFF reopens it, a TIME_SHIFT opens the
    NOTE_OFFs of the notes begun in the step, a VELOCITY leaves only NOTE_ONs); anything else (a
    token that was not allowed, EOS, a tokenizer with other rules) recomputes the row from the
    GrammarState. `blocked` (B, V) torch bool shares memory with `~allowed`: the sampler masks with it
    without building a tensor per step. tests/test_sampling.py checks the rows against the
    GrammarState at every step.

    Tokenizers whose `grammar()` is None (the miditok ones) get the generic rule only: no PAD, no
    BOS after the start, EOS only when allowed. A tokenizer with a grammar has performance events.
    """

    def __init__(self, tokenizer: Tokenizer, batch: int, allow_eos: bool = True, width: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = int(tokenizer.vocab_size)
        self.allow_eos = allow_eos
        states = [tokenizer.grammar() for _ in range(batch)]
        self.states: list[GrammarState] | None = None if states[0] is None else states
        self._generic = np.ones(self.vocab_size, bool)
        for special in (tokenizer.pad_id, tokenizer.bos_id):
            self._generic[special] = False
        self._generic[tokenizer.eos_id] = allow_eos
        # (B, width): `width` is the model's vocabulary when it has ids the tokenizer never uses (always blocked)
        full = np.ones((batch, max(width or 0, self.vocab_size)), bool)
        self._blocked = full[:, : self.vocab_size]
        self.blocked = torch.from_numpy(full)  # the same memory
        self._fast = False
        kind = tokenizer.token_type(np.arange(self.vocab_size))  # -1 for ids outside the vocabulary
        onehot = np.zeros((full.shape[1], int(kind.max()) + 2), np.float32)
        onehot[np.arange(self.vocab_size), kind] = 1.0
        onehot[self.vocab_size:, -1] = 1.0  # ids the tokenizer never uses: a type of their own (always blocked)
        self.types: Tensor = torch.from_numpy(onehot)  # (width, T) one-hot event types, for `sample(types=...)`
        if self.states is not None:
            if not isinstance(tokenizer, PerformanceEvents):
                raise TypeError(f"{type(tokenizer).__name__} has a grammar but no performance events")
            first, count = tokenizer.ranges["NOTE_ON"]
            self._on = slice(first, first + count)
            first, count = tokenizer.ranges["VELOCITY"]
            self._vel = slice(first, first + count)
            names = ("NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY")
            self._fast = (isinstance(self.states[0], GrammarState) and not self.states[0].canonical
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

    def snapshot(self, b: int = 0) -> tuple:
        """Sequence b's state as it is now, for `restore` (a duet takes back the tokens it had not played yet)."""
        state = None if self.states is None else _copy_state(self.states[b])
        fast = None
        if self._fast:
            fast = (self._saved[b].copy(), self._after_velocity[b], list(self._opened[b]), self._n_sounding[b])
        return state, self._blocked[b].copy(), fast

    def restore(self, b: int, snapshot: tuple) -> None:
        """Put sequence b back in a state `snapshot` took (the snapshot stays usable)."""
        state, row, fast = snapshot
        if state is not None:
            self.states[b] = _copy_state(state)
        self._blocked[b] = row  # in place: `blocked` shares this memory
        if fast is not None:
            saved, self._after_velocity[b], opened, self._n_sounding[b] = fast
            self._saved[b] = saved
            self._opened[b] = list(opened)

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


class LongNoteLimit:
    """Ends notes that have sounded `seconds`: the next token of that sequence must be one of their NOTE_OFFs.

    An undertrained model tends to forget NOTE_OFFs (notes hang for the rest of the piece). Real piano
    performances rarely hold a note that long (ASAP, pedal folded: 0.08% of notes last over 10 s), so
    the limit changes almost nothing a model that does close its notes would write; Magenta's
    `max_note_duration` truncates such notes when decoding instead. Time moves only with TIME_SHIFT
    tokens, so a note ends at the first token boundary at or after its limit (at most one shift late).
    Only for tokenizers with performance events (`PerformanceEvents`); others are left alone.
    """

    def __init__(self, tokenizer: Tokenizer, batch: int, seconds: float):
        self.enabled = seconds > 0 and isinstance(tokenizer, PerformanceEvents)
        self.seconds = float(seconds)
        if not self.enabled:
            return
        ids = np.arange(tokenizer.vocab_size)
        kind, value = tokenizer.token_type(ids), tokenizer.token_value(ids)
        self._on = np.where(kind == tokenizer.type_code("NOTE_ON"), value, -1)  # pitch per id, -1 elsewhere
        self._off = np.where(kind == tokenizer.type_code("NOTE_OFF"), value, -1)
        self._velocity = kind == tokenizer.type_code("VELOCITY")
        self._shift = tokenizer.seconds_per_id()
        self._off_id = np.asarray(tokenizer.note_off(np.arange(tokenizer.ranges["NOTE_OFF"][1])), np.int64)
        self.now = np.zeros(batch)  # seconds since the start of each sequence
        self.onset = np.full((batch, tokenizer.ranges["NOTE_ON"][1]), np.nan)  # (B, pitches): when each note began
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


class TimeLimit:
    """Keeps each sequence's clock at or before `steps` TIME_SHIFT steps after the prompt (an infilled middle
    ends at END exactly): a TIME_SHIFT longer than what is left is blocked, and `reached(b)` says when none is.

    Only for tokenizers with performance events; `steps` None leaves everything alone.
    """

    def __init__(self, tokenizer: Tokenizer, batch: int, steps: int | None):
        self.enabled = steps is not None and isinstance(tokenizer, PerformanceEvents)
        if not self.enabled:
            return
        ids = np.arange(tokenizer.vocab_size)
        shift = tokenizer.token_type(ids) == tokenizer.type_code("TIME_SHIFT")
        self._steps = np.where(shift, tokenizer.token_value(ids), 0)  # (V,) steps each id moves the clock
        self.left = np.full(batch, int(steps))  # steps left per sequence

    def push(self, b: int, token: int) -> None:
        """Advance sequence b by one token."""
        if self.enabled and 0 <= token < len(self._steps):
            self.left[b] -= self._steps[token]

    def reached(self, b: int) -> bool:
        """Sequence b's clock is at the limit."""
        return self.enabled and self.left[b] <= 0

    def apply(self, blocked: Tensor, active: list[int]) -> Tensor:
        """`blocked` (B, V), or a copy in which no TIME_SHIFT runs past the limit."""
        if not self.enabled:
            return blocked
        blocked = blocked.clone()
        too_long = torch.from_numpy(self._steps[None, :] > self.left[:, None])  # (B, V)
        width = too_long.shape[1]
        blocked[active, :width] |= too_long[active]
        return blocked


def _copy_state(state):
    """A grammar state's copy that shares nothing mutable with it."""
    copied = copy.copy(state)
    for name, value in vars(state).items():
        if isinstance(value, np.ndarray) and not name.startswith("_"):
            setattr(copied, name, value.copy())
    return copied
