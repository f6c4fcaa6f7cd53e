"""`Notes`: the note table every part of musicgpt passes around (seconds, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Notes:
    """Equal-length arrays, one entry per note, sorted by start then pitch.

    start, end: float64 seconds; pitch: int32 MIDI pitch 0..127; velocity: int32 1..127.
    """

    start: np.ndarray
    end: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray

    def __post_init__(self) -> None:
        arrays = {
            "start": np.asarray(self.start, dtype=np.float64).reshape(-1),
            "end": np.asarray(self.end, dtype=np.float64).reshape(-1),
            "pitch": np.asarray(self.pitch, dtype=np.int32).reshape(-1),
            "velocity": np.asarray(self.velocity, dtype=np.int32).reshape(-1),
        }
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"Notes arrays differ in length: { {k: len(v) for k, v in arrays.items()} }")
        for name, array in arrays.items():
            object.__setattr__(self, name, array)

    @classmethod
    def empty(cls) -> "Notes":
        """A table with no notes."""
        return cls(np.zeros(0), np.zeros(0), np.zeros(0, np.int32), np.zeros(0, np.int32))

    @classmethod
    def from_unsorted(cls, start, end, pitch, velocity) -> "Notes":
        """Build a table from arrays in any order, sorting by (start, pitch) with a stable sort."""
        start = np.asarray(start, dtype=np.float64)
        pitch = np.asarray(pitch, dtype=np.int32)
        order = np.lexsort((pitch, start))
        return cls(start[order], np.asarray(end, np.float64)[order], pitch[order], np.asarray(velocity, np.int32)[order])

    def __len__(self) -> int:
        return len(self.start)

    def __getitem__(self, index) -> "Notes":
        """Select notes by slice, boolean mask or index array (order is kept as given)."""
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1 if index != -1 else None)
        return Notes(self.start[index], self.end[index], self.pitch[index], self.velocity[index])

    @property
    def duration(self) -> np.ndarray:
        """end - start per note, in seconds."""
        return self.end - self.start

    @property
    def end_time(self) -> float:
        """The time the last note ends (0.0 for an empty table)."""
        return float(self.end.max()) if len(self) else 0.0

    def shifted(self, seconds: float) -> "Notes":
        """All notes moved by `seconds` in time."""
        return Notes(self.start + seconds, self.end + seconds, self.pitch, self.velocity)

    def transposed(self, semitones: int) -> "Notes":
        """All pitches moved by `semitones` (no range check)."""
        return Notes(self.start, self.end, self.pitch + semitones, self.velocity)

    def stretched(self, factor: float) -> "Notes":
        """All times multiplied by `factor`."""
        return Notes(self.start * factor, self.end * factor, self.pitch, self.velocity)

    def until(self, seconds: float) -> "Notes":
        """Notes that start before `seconds`, cut so that none ends after it."""
        keep = self.start < seconds
        return Notes(self.start[keep], np.minimum(self.end[keep], seconds), self.pitch[keep], self.velocity[keep])

    @staticmethod
    def concat(parts: "list[Notes]") -> "Notes":
        """Join tables and re-sort by (start, pitch)."""
        if not parts:
            return Notes.empty()
        return Notes.from_unsorted(
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.end for p in parts]),
            np.concatenate([p.pitch for p in parts]),
            np.concatenate([p.velocity for p in parts]),
        )

    def __repr__(self) -> str:
        return f"Notes(n={len(self)}, {self.end_time:.2f} s)"
