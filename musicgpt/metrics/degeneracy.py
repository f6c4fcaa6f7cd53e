"""Degeneracy measures: what a looping or stalling model produces, reported next to real pieces."""

from __future__ import annotations

import numpy as np

from musicgpt.metrics.timing import silent_gaps
from musicgpt.music.notes import Notes


def repeated_ngram_share(pitch: np.ndarray, n: int = 4) -> float:
    """Share of pitch n-grams (successive notes, start-pitch order) that occur more than once in the piece."""
    if len(pitch) < n:
        return 0.0
    p = np.asarray(pitch, dtype=np.int64)
    codes = np.zeros(len(p) - n + 1, dtype=np.int64)
    for k in range(n):  # base-128 number of the n pitches
        codes = codes * 128 + p[k : len(p) - n + 1 + k]
    _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    return float((counts[inverse] > 1).mean())


def longest_silence(notes: Notes) -> float:
    """Longest stretch in seconds, between first onset and last release, where no note sounds."""
    gaps = silent_gaps(notes)
    return float(gaps.max()) if len(gaps) else 0.0


def longest_pitch_run(pitch: np.ndarray, group: np.ndarray) -> float:
    """Most successive onset groups (chords) that all strike one same pitch: 1 when no pitch repeats."""
    if not len(pitch):
        return 0.0
    n_groups = int(group.max()) + 1
    pairs = np.unique(np.asarray(pitch, np.int64) * n_groups + group)  # sorted by pitch, then group
    p, g = pairs // n_groups, pairs % n_groups
    continues = np.r_[False, (p[1:] == p[:-1]) & (g[1:] == g[:-1] + 1)]
    run_id = np.cumsum(~continues)
    return float(np.bincount(run_id).max())
