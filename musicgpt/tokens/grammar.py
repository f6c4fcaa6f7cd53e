"""GrammarState: which performance token may come next after a prefix (no torch).

The sampler masks with it (musicgpt.generation.constraints), so that what is sampled decodes to
exactly the notes it spells: no NOTE_OFF for a silent pitch, no NOTE_ON for a sounding one, a
VELOCITY always followed by its NOTE_ON. With canonical=True it also enforces the encoder's order,
so `PerformanceTokenizer.encode` output is exactly what it accepts (a check used by the tests).
"""

from __future__ import annotations

import numpy as np

from musicgpt.tokens.base import PerformanceEvents

__all__ = ["GrammarState"]


class GrammarState:
    """Which token may come next after a prefix: feed tokens with `push`, ask `allowed()`.

    Always (the rules that make decoding mean what was sampled): after EOS only PAD; BOS only as
    the first token; never PAD before EOS; after VELOCITY only a NOTE_ON; NOTE_ON only for a pitch
    not sounding; NOTE_OFF only for a pitch sounding since an earlier time step.
    CONTROL and GAP tokens are skipped, and so is a suffix block (INFILL_SUFFIX ... INFILL_PREFIX: a time
    line of its own, see `musicgpt.tokens.infill`); none of them is ever allowed next.
    canonical=True adds the encoder's order (exactly what `encode` emits): within a time step
    NOTE_OFFs before NOTE_ONs, each in ascending pitch; VELOCITY only when the bin changes and a
    NOTE_ON can follow; the first NOTE_ON needs a VELOCITY; a TIME_SHIFT shorter than the maximum
    is not followed by another TIME_SHIFT.
    """

    def __init__(self, tokenizer: PerformanceEvents, canonical: bool = False) -> None:
        self.tok = tokenizer
        self.canonical = canonical
        self.sounding = np.zeros(128, bool)
        self.opened_now = np.zeros(128, bool)  # NOTE_ON in the current time step
        self.started = False
        self.ended = False
        self.after_velocity = False
        self.after_short_shift = False
        self.last_off = -1  # highest NOTE_OFF pitch in this step
        self.last_on = -1  # highest NOTE_ON pitch in this step
        self.bin = -1  # current velocity bin (-1: none yet)
        self.in_suffix = False  # inside an infilling sequence's suffix block
        self._pitches = np.arange(128)
        ids = np.arange(tokenizer.vocab_size)
        self._names = [tokenizer.type_names[k] for k in tokenizer.token_type(ids).tolist()]  # per id, plain Python
        self._values = tokenizer.token_value(ids).tolist()
        self._first = tuple(tokenizer.ranges[name][0] for name in ("NOTE_ON", "NOTE_OFF", "TIME_SHIFT", "VELOCITY"))

    def push(self, token: int) -> None:
        """Advance the state by one token."""
        tok, token = self.tok, int(token)
        inside = 0 <= token < tok.vocab_size
        name = self._names[token] if inside else None
        value = self._values[token] if inside else 0
        if name in ("CONTROL", "GAP"):
            return
        if name == "INFILL":
            self.in_suffix = value == 0
            return
        if self.in_suffix:
            return
        self.started = True
        if self.ended or name in (None, "PAD", "BOS"):
            return
        self.after_velocity = name == "VELOCITY"
        self.after_short_shift = name == "TIME_SHIFT" and value < tok.max_shift_steps
        if name == "EOS":
            self.ended = True
        elif name == "TIME_SHIFT":
            self.opened_now[:] = False
            self.last_off = self.last_on = -1
        elif name == "VELOCITY":
            self.bin = value
        elif name == "NOTE_ON":
            self.sounding[value] = True
            self.opened_now[value] = True
            self.last_on = max(self.last_on, value)
        elif name == "NOTE_OFF":
            self.sounding[value] = False
            self.opened_now[value] = False
            self.last_off = max(self.last_off, value)

    def feed(self, ids) -> "GrammarState":
        """Push every token of a prefix; returns self."""
        for token in np.asarray(ids).reshape(-1):
            self.push(token)
        return self

    def allowed(self) -> np.ndarray:
        """Boolean mask over the vocabulary of the tokens that may come next."""
        tok = self.tok
        mask = np.zeros(tok.vocab_size, bool)
        if self.ended:
            mask[tok.pad_id] = True
            return mask
        on0, off0, sh0, vel0 = self._first
        ons = ~self.sounding
        if self.canonical:
            ons = ons & (self._pitches > self.last_on)
        mask[on0:on0 + 128] = ons & (self.bin >= 0 or not self.canonical or self.after_velocity)
        if self.after_velocity:
            return mask
        offs = self.sounding & ~self.opened_now
        if self.canonical:
            offs = offs & (self._pitches > self.last_off) & (self.last_on < 0)
        mask[off0:off0 + 128] = offs
        mask[sh0:sh0 + tok.max_shift_steps] = not (self.canonical and self.after_short_shift)
        vel = np.ones(tok.velocity_bins, bool)
        if self.canonical:
            if self.bin >= 0:
                vel[self.bin] = False
            vel &= ons.any()
        mask[vel0:vel0 + tok.velocity_bins] = vel
        mask[tok.eos_id] = True
        if not self.started:
            mask[tok.bos_id] = True
        return mask

    def accepts(self, ids) -> bool:
        """True when every token of `ids` is allowed after the tokens before it (skipped tokens: see the class)."""
        for token in np.asarray(ids).reshape(-1):
            if not (0 <= token < self.tok.vocab_size):
                return False
            if self.in_suffix or self._names[token] in ("CONTROL", "GAP", "INFILL"):
                self.push(token)
                continue
            if not self.allowed()[token]:
                return False
            self.push(token)
        return True
