"""The console of a live duet: one line per turn and per note, and a summary at the end (plain text, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["note_name", "human_line", "model_line", "turn_line", "LiveStats"]

NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(pitch: int) -> str:
    """Scientific pitch name: 60 is C4, 61 C#4."""
    return f"{NAMES[pitch % 12]}{pitch // 12 - 1}"


def human_line(time: float, message: list[int]) -> str | None:
    """A line for one of the human's note-ons (None for releases and controllers: too many to read)."""
    status, pitch, velocity = message
    if status & 0xF0 != 0x90 or velocity == 0:
        return None
    return f"{time:8.2f}  you    {note_name(pitch):<4} v{velocity:<3}"


def model_line(time: float, pitch: int, velocity: int, surprisal: float | None,
               listens: list[tuple[int, bool]]) -> str:
    """A line for one of the model's note-ons: its surprisal (nats) and the notes it attends to most (yours marked)."""
    text = f"{time:8.2f}  model  {note_name(pitch):<4} v{velocity:<3}"
    if surprisal is not None:
        text += f" {surprisal:5.1f} nats"
    if listens:
        text += "  listens to " + " ".join(note_name(p) + ("(you)" if yours else "") for p, yours in listens)
    return text


def turn_line(time: float, who: str, barge_in: bool = False) -> str:
    """A line for a change of turn."""
    if who == "model":
        return f"{time:8.2f}  -- the model plays"
    return f"{time:8.2f}  -- your turn" + (" (you came in: the model stops)" if barge_in else "")


@dataclass
class LiveStats:
    """What happened in a live duet, counted as it went."""

    seconds: float = 0.0
    human_notes: int = 0
    model_notes: int = 0  # note-ons that sounded
    turns: int = 0  # the model's turns
    barge_ins: int = 0
    cancelled: int = 0  # note-ons handed out early and taken back before they sounded
    cut_short: int = 0  # note-ons taken back after they sounded (released at once)
    dropped: int = 0  # human messages that found the inbox full
    rejected: int = 0  # human messages the engine refused (out of range)
    lateness: list[float] = field(default_factory=list)  # seconds each model note-on went out after it was due

    def summary(self) -> str:
        """One line: the counts and how punctually the model's notes went out (median, p95, max)."""
        text = (f"{self.seconds:.1f} s: you played {self.human_notes} notes, the model {self.model_notes} in "
                f"{self.turns} turns ({self.barge_ins} barge-ins, {self.cancelled} notes taken back before they "
                f"sounded")
        if self.cut_short:
            text += f", {self.cut_short} cut short"
        text += ")"
        if self.lateness:
            late = np.asarray(self.lateness) * 1000.0
            text += (f"; model notes out after their time: median {np.median(late):.1f} ms, p95 "
                     f"{np.percentile(late, 95):.1f} ms, max {late.max():.1f} ms")
        if self.dropped or self.rejected:
            text += f"; {self.dropped} messages dropped (inbox full), {self.rejected} refused"
        return text
