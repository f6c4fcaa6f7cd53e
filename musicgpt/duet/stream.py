"""The duet's token stream: both players' events as one performance-token sequence on one clock (no model here).

The stream is what the model reads: [CONTROL*] [BOS] primer, then the human's notes and the model's, in time
order. Time is counted in the tokenizer's steps (10 ms) from the session's origin; a human event at clock
time t is written at step round(t / step), after the TIME_SHIFTs that bring the stream there (never back:
an event that arrives within a step already written lands in it). Tokens are grammatical by construction
(the sampler's `GrammarMask` follows every token): a note lasts at least one step, a re-struck key first
ends its sounding note (a strike within the note's own step is merged into it, as the encoder does), a
release of a key not sounding is ignored.

The sustain pedal is folded as `musicgpt.music.midi` folds it for files: CC64 >= 64 is down; a key released
while the pedal is down sounds until the pedal is lifted (or the key is struck again). Other controllers
are no events of the music.
"""

from __future__ import annotations

import numpy as np

from musicgpt.generation.constraints import GrammarMask
from musicgpt.music.midi import SUSTAIN_CC, SUSTAIN_THRESHOLD
from musicgpt.tokens.base import PerformanceEvents

__all__ = ["TokenStream", "HUMAN", "MODEL"]

HUMAN, MODEL = 0, 1  # who wrote a token (forced tokens, the primer's and the closing ones count as the human's)


class TokenStream:
    """The token ids so far, who wrote each, the step each ends at, and the grammar state after them."""

    def __init__(self, tokenizer: PerformanceEvents, prompt: np.ndarray, width: int):
        self.tok, self.width = tokenizer, width
        self.prompt = np.asarray(prompt, np.int64)
        self.shift_steps = np.where(tokenizer.token_type(np.arange(tokenizer.vocab_size))
                                    == tokenizer.type_code("TIME_SHIFT"), tokenizer.token_value(
                                        np.arange(tokenizer.vocab_size)), 0)  # (V,) steps each id moves the clock
        self.ids: list[int] = []
        self.nll: list[float] = []  # the model's -log p of each token it sampled, NaN for the rest
        self.who: list[int] = []
        self.step_at: list[int] = []  # the stream's step after each token
        self.human_pedal = False
        self.human_held: set[int] = set()  # released under the pedal, still sounding
        self.waiting: set[int] = set()  # released within the step they began in: they end when the step passes
        self._mark: tuple | None = None  # the state at a point `truncate` may cut back to (see `mark`)
        self._reset_state()
        for token in self.prompt.tolist():
            self.append(token, HUMAN)

    def _reset_state(self) -> None:
        self.grammar = GrammarMask(self.tok, 1, allow_eos=False, width=self.width)
        self.steps = 0
        self.bin = -1  # the velocity bin of the last VELOCITY token
        self.owner = np.full(128, -1, np.int8)  # per pitch: who holds it sounding (-1: silent)
        self.model_on: dict[int, int] = {}  # sounding model pitch -> position of its NOTE_ON

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, token: int, who: int, nll: float = float("nan")) -> None:
        """Write one token (the caller keeps it grammatical)."""
        token = int(token)
        kind = self.tok.type_names[int(self.tok.token_type(token))]
        self.steps += int(self.shift_steps[token])
        if kind == "VELOCITY":
            self.bin = int(self.tok.token_value(token))
        elif kind in ("NOTE_ON", "NOTE_OFF"):
            pitch = int(self.tok.token_value(token))
            self.owner[pitch] = who if kind == "NOTE_ON" else -1
            if who == MODEL and kind == "NOTE_ON":
                self.model_on[pitch] = len(self.ids)
            else:
                self.model_on.pop(pitch, None)
        self.ids.append(token)
        self.who.append(who)
        self.nll.append(nll)
        self.step_at.append(self.steps)
        self.grammar.push(0, token)

    def mark(self) -> None:
        """Remember the state here: a `truncate` back to here or later replays from the mark, not from the start."""
        self._mark = (len(self.ids), self.steps, self.bin, self.owner.copy(), dict(self.model_on),
                      self.human_pedal, set(self.human_held), set(self.waiting), self.grammar.snapshot(0))

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on (a barge-in cancels the model's notes not yet due)."""
        start = 0
        if self._mark is not None and self._mark[0] <= length:
            start, self.steps, self.bin, owner, model_on, self.human_pedal, held, waiting, grammar = self._mark
            self.owner, self.model_on, self.human_held, self.waiting = owner.copy(), dict(model_on), set(held), \
                set(waiting)
            self.grammar.restore(0, grammar)
        else:
            self._mark = None
            self._reset_state()
        replay = list(zip(self.ids[start:length], self.who[start:length], self.nll[start:length]))
        del self.ids[start:], self.who[start:], self.nll[start:], self.step_at[start:]
        for token, w, x in replay:
            self.append(token, w, x)

    def opened_now(self, pitch: int) -> bool:
        """Whether `pitch` was struck in the current step (its NOTE_OFF must wait one step)."""
        return bool(self.grammar.states[0].opened_now[pitch])

    # ---- forced tokens -------------------------------------------------------------------------------------
    def shift_to(self, step: int) -> None:
        """TIME_SHIFTs from the current step to `step` (none if it is not later); the human's releases that waited
        for the step their notes began in to pass go in one step after it."""
        gap = step - self.steps
        if gap > 0 and self.waiting:
            self.append(self.tok.time_shift(1), HUMAN)
            self.release(sorted(p for p in self.waiting if self.owner[p] == HUMAN))
            self.waiting.clear()
            gap -= 1
        while gap > 0:
            k = min(gap, self.tok.max_shift_steps)
            self.append(self.tok.time_shift(k), HUMAN)
            gap -= k

    def release(self, pitches, who: int = HUMAN) -> None:
        """NOTE_OFFs of sounding `pitches` (ascending), one step later if one of them began in this step."""
        pitches = sorted(p for p in pitches if self.owner[p] >= 0)
        if any(self.opened_now(p) for p in pitches):
            self.append(self.tok.time_shift(1), HUMAN)
        for p in pitches:
            self.append(self.tok.note_off(p), who)

    def strike(self, pitch: int, velocity: int, who: int = HUMAN) -> bool:
        """VELOCITY (when its bin changes) and NOTE_ON, a sounding pitch ended first; False: merged, nothing written."""
        if self.owner[pitch] >= 0:
            if self.opened_now(pitch):
                return False
            self.release([pitch], who)
        vb = int(self.tok.velocity_to_bin(velocity))
        if vb != self.bin:
            self.append(self.tok.velocity(vb), who)
        self.append(self.tok.note_on(pitch), who)
        return True

    def human_event(self, kind: str, a: int, b: int, step: int) -> bool:
        """A human event at `step`: ("on", pitch, velocity), ("off", pitch, _) or ("cc", number, value); True when it
        was a note-on that sounds (it counts as playing)."""
        if kind == "on" and b == 0:
            kind = "off"
        if kind == "on":
            self.shift_to(step)
            self.human_held.discard(a)
            self.waiting.discard(a)  # struck again within its first step: it goes on sounding
            return self.strike(a, b)
        if kind == "off":
            if self.owner[a] != HUMAN or a in self.human_held:
                return False
            if self.human_pedal:
                self.human_held.add(a)
                return False
            self.shift_to(step)
            if self.opened_now(a):  # a note lasts one step at least: it ends when the clock moves on, so
                self.waiting.add(a)  # a fast player's releases never push the stream ahead of the clock
                return False
            self.release([a])
        elif kind == "cc" and a == SUSTAIN_CC:
            down = b >= SUSTAIN_THRESHOLD
            if self.human_pedal and not down and self.human_held:
                self.shift_to(step)
                self.release([p for p in self.human_held if self.owner[p] == HUMAN])
                self.human_held.clear()
            self.human_pedal = down
        return False
