"""Which notes of a piece are its primer, found by matching notes to a primer's notes (no torch).

A file written by `musicgpt generate` keeps its primer as a track named "primer". Read back and
tokenized, the piece's notes no longer say which track they came from; a note is a primer note when
a primer note has its pitch and its onset time step (onsets rounded to the tokenizer's time step).
Give both sets of notes as the tokenizer sees them (decoded ids, and the primer track's notes
encoded), so that both are rounded alike.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["mark_primer_notes"]

_PITCHES = 128  # MIDI pitches 0..127: (step, pitch) packs into one int64 as step * 128 + pitch


def mark_primer_notes(starts: ArrayLike, pitches: ArrayLike, primer_starts: ArrayLike, primer_pitches: ArrayLike,
                      time_step: float) -> np.ndarray:
    """Bool per note (starts, pitches in seconds and MIDI numbers): a primer note has its pitch and onset step."""
    if not time_step > 0:
        raise ValueError(f"time_step must be positive, got {time_step}")
    keys = [_keys(np.asarray(s, np.float64).reshape(-1), np.asarray(p).reshape(-1), time_step)
            for s, p in ((starts, pitches), (primer_starts, primer_pitches))]
    return np.isin(keys[0], keys[1])


def _keys(starts: np.ndarray, pitches: np.ndarray, time_step: float) -> np.ndarray:
    """One int64 per note: its onset step and pitch."""
    if len(starts) != len(pitches):
        raise ValueError(f"{len(starts)} onsets but {len(pitches)} pitches")
    pitches = pitches.astype(np.int64)
    if len(pitches) and (pitches.min() < 0 or pitches.max() >= _PITCHES):
        raise ValueError(f"pitches must lie in 0..{_PITCHES - 1}, got {pitches.min()}..{pitches.max()}")
    return np.rint(starts / time_step).astype(np.int64) * _PITCHES + pitches
