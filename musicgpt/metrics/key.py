"""Key analysis with music21's key-profile method, vectorized over windows.

music21's key analysis correlates the duration-weighted pitch-class distribution with each of the 24
rotated major/minor key profiles and picks the best. We use its Krumhansl-Schmuckler profiles
(`Stream.analyze("krumhansl")`), not its default Aarden-Essen ones, which call a plain C-major scale
A minor. Building a music21 Stream per window is slow, so we take the profiles from music21 and do the
same correlation in numpy; tests check that both pick the same key with the same coefficient.

Key consistency of a piece: the share of 8-second windows (hop 4 s, at least 8 sounding notes) whose
best key is the piece's global key (same tonic and mode). A piece shorter than one window counts as one
window. Key correlation: the correlation coefficient of the global best key (music21's
`correlationCoefficient`), higher meaning more clearly tonal.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from musicgpt.metrics.pitch import PITCH_CLASS_NAMES
from musicgpt.music.notes import Notes

KEY_WINDOW = 8.0
KEY_HOP = 4.0
MIN_WINDOW_NOTES = 8
KEY_METHOD = "krumhansl"  # a music21 analysis name: "krumhansl", "key" (Aarden-Essen), "temperley", ...


@dataclass(frozen=True)
class KeyAnalysis:
    """The global key of a piece and how steadily its windows agree with it."""

    tonic: int  # pitch class 0..11
    mode: str  # "major" or "minor"
    correlation: float
    consistency: float
    n_windows: int

    @property
    def name(self) -> str:
        """E.g. "C major", "F# minor"."""
        return f"{PITCH_CLASS_NAMES[self.tonic]} {self.mode}"


@lru_cache(maxsize=None)
def key_profiles(method: str = KEY_METHOD) -> np.ndarray:
    """(24, 12) music21 key profiles: rows 0..11 major on tonic 0..11, rows 12..23 minor."""
    from music21.analysis import discrete

    analyzer = discrete.analysisClassFromMethodName(method)()
    rows = []
    for mode in ("major", "minor"):
        weights = np.asarray(analyzer.getWeights(mode), dtype=np.float64)
        rows += [np.roll(weights, tonic) for tonic in range(12)]  # weight of class j is w[(j - tonic) % 12]
    return np.stack(rows)


def key_correlations(distributions: np.ndarray, method: str = KEY_METHOD) -> np.ndarray:
    """(K, 24) Pearson correlation of each (K, 12) pitch-class distribution with the 24 key profiles."""
    profiles = key_profiles(method)
    d = distributions - distributions.mean(axis=1, keepdims=True)  # (K, 12)
    p = profiles - profiles.mean(axis=1, keepdims=True)  # (24, 12)
    norms = np.linalg.norm(d, axis=1, keepdims=True) * np.linalg.norm(p, axis=1)  # (K, 24)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, d @ p.T / np.where(norms > 0, norms, 1.0), 0.0)


def duration_weighted_pitch_classes(notes: Notes, t0: float = -np.inf, t1: float = np.inf) -> np.ndarray:
    """(12,) seconds each pitch class sounds inside [t0, t1)."""
    overlap = np.clip(np.minimum(notes.end, t1) - np.maximum(notes.start, t0), 0, None)
    return np.bincount(notes.pitch % 12, weights=overlap, minlength=12)


def analyze_key(notes: Notes, method: str = KEY_METHOD) -> KeyAnalysis:
    """Global key, its correlation, and the share of windows agreeing with it (see module docstring)."""
    if not len(notes):
        raise ValueError("key analysis needs at least one note")
    best = key_correlations(duration_weighted_pitch_classes(notes)[None], method)[0]
    index = int(np.argmax(best))
    windows = _window_distributions(notes)
    if len(windows):
        agreeing = np.argmax(key_correlations(windows, method), axis=1) == index
        consistency, n_windows = float(agreeing.mean()), len(windows)
    else:
        consistency, n_windows = 1.0, 1
    return KeyAnalysis(index % 12, "major" if index < 12 else "minor", float(best[index]), consistency, n_windows)


def _window_distributions(notes: Notes) -> np.ndarray:
    """(W, 12) duration-weighted pitch classes of each window with enough sounding notes."""
    first, last = float(notes.start.min()), float(notes.end.max())
    if last - first <= KEY_WINDOW:
        return np.zeros((0, 12))
    order = np.argsort(notes.start, kind="stable")
    start, longest = notes.start[order], float(notes.duration.max())
    rows = []
    for t0 in np.arange(first, last - KEY_WINDOW + KEY_HOP, KEY_HOP):
        t1 = t0 + KEY_WINDOW
        # only notes starting in [t0 - longest, t1) can sound inside the window
        lo, hi = np.searchsorted(start, t0 - longest, "left"), np.searchsorted(start, t1, "left")
        window = notes[order[lo:hi]]
        sounding = (window.end > t0) & (window.start < t1)
        if sounding.sum() >= MIN_WINDOW_NOTES:
            rows.append(duration_weighted_pitch_classes(window[sounding], t0, t1))
    return np.stack(rows) if rows else np.zeros((0, 12))
