"""What a duet is set up with and what it hands out: `DuetConfig` (turn taking and timing), `DuetEvent` (a note,
a cancel or a turn, on the session clock) and `parse_midi` (raw MIDI bytes to a human event, checked)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from musicgpt.errors import ConfigError

__all__ = ["DuetConfig", "DuetEvent", "parse_midi"]


def parse_midi(message: Sequence[int]) -> tuple[str, int, int] | None:
    """(kind, data1, data2) of a raw MIDI message: "on", "off" or "cc"; None for a kind a duet ignores. Raises
    ValueError for anything that is not three integers [status 0x80..0xFF, data 0..127, data 0..127]."""
    if (not isinstance(message, (list, tuple)) or len(message) != 3
            or not all(isinstance(b, int) and not isinstance(b, bool) for b in message)):
        raise ValueError(f"a MIDI message is three integers [status, data1, data2], got {message!r}")
    status, a, b = message
    if not (0x80 <= status <= 0xFF and 0 <= a < 128 and 0 <= b < 128):
        raise ValueError(f"MIDI bytes out of range: {message!r}")
    kind = {0x80: "off", 0x90: "on", 0xB0: "cc"}.get(status & 0xF0)
    return None if kind is None else (kind, a, b)


@dataclass(frozen=True)
class DuetConfig:
    """Turn taking and timing of a duet (seconds)."""

    wait: float = 1.0  # the model takes over after this much silence from the human
    answer: float = 8.0  # the model plays at most this long per turn
    lead: float = 0.03  # the model's turn begins this long after it takes over: time to decode its first note
    first_note: float = 0.03  # its first note comes at most this long after its turn begins
    lookahead: float = 0.1  # events are handed out at most this early
    prepare: float = 0.15  # the model starts decoding its answer this long before `wait` runs out (unheard if the
    # player plays first: taken back), so the opening notes of its turn are decoded before they are due
    trigger_cc: int | None = None  # a controller (not 64, the sustain pedal) whose press (>= 64) hands over at once
    trigger_note: int | None = None  # a key that hands over at once (it makes no sound)

    def __post_init__(self):
        for name in ("wait", "answer", "lookahead", "lead", "first_note", "prepare"):
            value = getattr(self, name)
            positive = name in ("wait", "answer", "lookahead")
            if not (isinstance(value, (int, float)) and math.isfinite(value) and (value > 0 if positive else value >= 0)):
                raise ConfigError(f"duet {name}: must be a finite number {'> 0' if positive else '>= 0'} (seconds), "
                                  f"got {value!r}")
        if self.trigger_cc is not None and not (0 <= self.trigger_cc < 128 and self.trigger_cc != 64):
            raise ConfigError(f"duet trigger_cc: a controller 0..127 other than the sustain pedal (64), "
                              f"got {self.trigger_cc!r}")
        if self.trigger_note is not None and not 0 <= self.trigger_note < 128:
            raise ConfigError(f"duet trigger_note: a key 0..127, got {self.trigger_note!r}")


@dataclass
class DuetEvent:
    """What the engine hands a front end: "on", "off", "cancel" (an "on" handed out, now not to sound) or "turn"."""

    kind: str
    time: float  # on the session clock: when to sound it (a turn: when it changed)
    pitch: int | None = None
    velocity: int | None = None
    who: str | None = None  # a turn's new player: "model" or "human"
    id: int | None = None  # the note: its NOTE_ON's position in the stream
    surprisal: float | None = None  # an "on": -log p of its VELOCITY and NOTE_ON, nats (arcs.json's rounding)
    arcs: list[dict[str, Any]] | None = field(default=None, repr=False)  # an "on": {key, layer, head, weight}
