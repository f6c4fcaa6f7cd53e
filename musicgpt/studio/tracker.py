"""The notes of one token sequence, followed token by token the way `PerformanceTokenizer.decode_with_index` reads
the whole sequence (no torch).

`decode_with_index` needs the finished sequence; the studio shows notes while they are sampled, so it keeps
the decoder's state instead and updates it per token, in O(1):

- the clock counts TIME_SHIFT steps; a NOTE_ON starts a note at the clock, with the velocity of the last
  VELOCITY token before it (the tokenizer's default velocity when there is none);
- a note ends at the next NOTE_ON or NOTE_OFF of its pitch; a note that ends in the step it began has no
  length and is dropped (the grammar never samples one, but a primer may hold one);
- a note's tokens are its NOTE_ON, the VELOCITY right before it and the NOTE_OFF that ends it: they own its
  surprisal (the sum of their NLLs, tokens not predicted counting 0), and its NOTE_ON and VELOCITY own its
  share of attention (`musicgpt.arcs.capture.token_owners`).

A note is named by the position of its NOTE_ON token (arcs.json's `token`): unlike the note index of
arcs.json (notes sorted by start, then pitch) it is known the moment the note starts. Arcs are ranked with
the note's sort key (start step x 128 + pitch) so that ties break as in the finished arcs.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from musicgpt.tokens.base import PerformanceEvents


@dataclass
class LiveNote:
    """A note as known so far; `end_step` is None while it sounds."""

    position: int  # its NOTE_ON token: the note's id in the studio's events
    pitch: int
    velocity: int
    start_step: int
    primer: bool
    nll: float  # the sum of its tokens' NLLs so far (NaN tokens count 0)
    predicted: bool  # whether any of its tokens was predicted (else its NLL is unknown)
    velocity_position: int = -1  # the VELOCITY token right before its NOTE_ON, or -1
    end_step: int | None = None

    @property
    def key(self) -> int:
        """Its rank among notes, as arcs.json sorts them (start, then pitch): unique among kept notes."""
        return self.start_step * 128 + self.pitch


class NoteTracker:
    """Notes of a growing token sequence of a performance-event tokenizer; `push` one token at a time."""

    def __init__(self, tokenizer: PerformanceEvents, primer_length: int):
        if not isinstance(tokenizer, PerformanceEvents):
            raise TypeError("NoteTracker needs a performance-event tokenizer (NOTE_ON/NOTE_OFF/TIME_SHIFT/VELOCITY)")
        ids = np.arange(tokenizer.vocab_size)
        names = tokenizer.type_names
        kinds = tokenizer.token_type(ids)
        self._kind = [names[k] for k in kinds.tolist()]  # per id, plain Python: push runs once per token
        self._value = tokenizer.token_value(ids).tolist()
        self.time_step = float(tokenizer.time_step)
        self.velocity_of_bin = [int(v) for v in np.atleast_1d(tokenizer.bin_to_velocity(np.arange(tokenizer.velocity_bins)))]
        self.default_velocity = int(getattr(tokenizer, "default_velocity", 64))
        self.primer_length = int(primer_length)
        self.length = 0  # tokens pushed
        self.steps = 0  # the clock, in TIME_SHIFT steps
        self.bin = -1  # the last VELOCITY bin
        self.sounding: dict[int, LiveNote] = {}  # pitch -> the note it plays
        self.notes: dict[int, LiveNote] = {}  # NOTE_ON position -> note, every note kept so far
        self.by_key: dict[int, int] = {}  # note key -> NOTE_ON position
        self._owner = np.full(1024, -1, np.int64)  # per token: the key of the note owning it for arcs, or -1
        self._previous, self._previous_nll = "", math.nan  # the type and NLL of the previous token

    def owners(self) -> np.ndarray:
        """Per token pushed so far: the key of the note that owns it for arcs (NOTE_ON, the VELOCITY before it),
        or -1. A view: valid until the next push."""
        return self._owner[: self.length]

    def push(self, token: int, nll: float = math.nan) -> tuple[LiveNote | None, list[LiveNote], list[LiveNote]]:
        """Read one token with its NLL: (the note it starts or None, notes it ends, notes it drops)."""
        position, kind, value = self.length, self._kind[token], self._value[token]
        if position >= len(self._owner):
            self._owner = np.concatenate([self._owner, np.full(len(self._owner), -1, np.int64)])
        self.length += 1
        started, ended, dropped = None, [], []
        if kind == "TIME_SHIFT":
            self.steps += value
        elif kind == "VELOCITY":
            self.bin = value
        elif kind == "NOTE_ON":
            if value in self.sounding:  # a re-strike ends the sounding note of that pitch
                self._end(self.sounding.pop(value), ended, dropped)
            velocity = self.velocity_of_bin[self.bin] if self.bin >= 0 else self.default_velocity
            started = LiveNote(position, value, velocity, self.steps, position < self.primer_length, 0.0, False)
            if self._previous == "VELOCITY":
                started.velocity_position = position - 1
                self._add_nll(started, self._previous_nll)
            self._add_nll(started, nll)
            self.sounding[value] = started
            self.notes[position] = started
            self.by_key[started.key] = position
            self._owner[position] = started.key
            if started.velocity_position >= 0:
                self._owner[started.velocity_position] = started.key
        elif kind == "NOTE_OFF" and value in self.sounding:
            note = self.sounding.pop(value)
            self._add_nll(note, nll)
            self._end(note, ended, dropped)
        self._previous, self._previous_nll = kind, nll
        return started, ended, dropped

    @staticmethod
    def _add_nll(note: LiveNote, nll: float) -> None:
        if not math.isnan(nll):  # in token order, as musicgpt.arcs.capture.note_nll's bincount sums them
            note.nll += nll
            note.predicted = True

    def _end(self, note: LiveNote, ended: list, dropped: list) -> None:
        note.end_step = self.steps
        if note.end_step > note.start_step:
            ended.append(note)
            return
        dropped.append(note)  # no length: the decoder drops it, and its tokens own nothing
        del self.notes[note.position]
        if self.by_key.get(note.key) == note.position:
            del self.by_key[note.key]
        self._owner[note.position] = -1
        if note.velocity_position >= 0:
            self._owner[note.velocity_position] = -1

    def seconds(self, step: int | None) -> float | None:
        """A time in steps as seconds, rounded as arcs.json stores times."""
        return None if step is None else round(step * self.time_step, 6)
