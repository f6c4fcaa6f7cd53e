"""Pitch content of a piece: pitch-class histogram, pitch-class transitions, range, used pitches."""

from __future__ import annotations

import numpy as np

PITCH_CLASS_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


def pitch_class_histogram(pitch: np.ndarray) -> np.ndarray:
    """Share of notes in each of the 12 pitch classes (counts, not durations); sums to 1."""
    counts = np.bincount(np.asarray(pitch) % 12, minlength=12).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def pitch_class_transitions(pitch: np.ndarray) -> np.ndarray:
    """(12, 12) shares of successive note pairs (in start, pitch order) going from class i to class j; sums to 1."""
    pcs = np.asarray(pitch) % 12
    counts = np.bincount(pcs[:-1] * 12 + pcs[1:], minlength=144).astype(np.float64).reshape(12, 12)
    return counts / counts.sum() if counts.sum() else counts


def pitch_range(pitch: np.ndarray) -> float:
    """Highest minus lowest pitch, in semitones."""
    return float(pitch.max() - pitch.min()) if len(pitch) else 0.0


def used_pitches(pitch: np.ndarray) -> float:
    """Number of distinct MIDI pitches."""
    return float(len(np.unique(pitch)))
