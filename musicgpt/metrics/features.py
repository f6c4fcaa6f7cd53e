"""Per-piece features: the registry (names, kinds, units) and `piece_features(notes)`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musicgpt.errors import MusicGPTError
from musicgpt.metrics import degeneracy, pitch, timing
from musicgpt.metrics.key import analyze_key
from musicgpt.music.notes import Notes


class EmptyPieceError(MusicGPTError):
    """A piece has no notes, so it has no features."""


@dataclass(frozen=True)
class Feature:
    """What one feature is: vectors are compared by Euclidean distance, scalars by absolute difference."""

    name: str
    kind: str  # "scalar" or "vector"
    unit: str
    description: str


def _time_labels(edges: np.ndarray) -> tuple[str, ...]:
    return tuple(f"{1000 * a:.0f}-{1000 * b:.0f}ms" for a, b in zip(edges[:-1], edges[1:]))


# Bin labels of the histogram features, for tables and plots.
BIN_LABELS: dict[str, tuple[str, ...]] = {
    "pitch_class_histogram": pitch.PITCH_CLASS_NAMES,
    "ioi_histogram": _time_labels(timing.TIME_EDGES),
    "duration_histogram": _time_labels(timing.TIME_EDGES),
    "velocity_histogram": tuple(
        f"{a:.0f}-{b - 1:.0f}" for a, b in zip(timing.VELOCITY_EDGES[:-1], timing.VELOCITY_EDGES[1:])
    ),
}

FEATURES: dict[str, Feature] = {
    f.name: f
    for f in [
        Feature("pitch_class_histogram", "vector", "share", "notes per pitch class (12 bins)"),
        Feature("pitch_class_transitions", "vector", "share", "successive-note pitch-class pairs (12x12)"),
        Feature("pitch_range", "scalar", "semitones", "highest minus lowest pitch"),
        Feature("used_pitches", "scalar", "pitches", "distinct MIDI pitches"),
        Feature("notes_per_second", "scalar", "1/s", "notes over first-onset-to-last-release span"),
        Feature("ioi_histogram", "vector", "share", "inter-onset intervals between chords, 25ms-3.2s log bins"),
        Feature("duration_histogram", "vector", "share", "note durations, 25ms-3.2s log bins"),
        Feature("velocity_histogram", "vector", "share", "velocities in 8 bins of 16"),
        Feature("polyphony", "scalar", "notes", "time-averaged sounding notes while any sounds"),
        Feature("polyphony_at_onsets", "scalar", "notes", "mean sounding notes at each chord onset"),
        Feature("key_correlation", "scalar", "r", "correlation of the best key profile (music21)"),
        Feature("key_consistency", "scalar", "share", "8s windows whose best key is the global key"),
        Feature("repeated_4gram_share", "scalar", "share", "pitch 4-grams occurring more than once"),
        Feature("longest_silence", "scalar", "s", "longest time with no note sounding"),
        Feature("longest_pitch_run", "scalar", "onsets", "most successive chords striking one same pitch"),
    ]
}


def sorted_notes(notes: Notes) -> Notes:
    """The table in (start, pitch) order, as the Notes contract promises; hand-built tables may not be."""
    order = np.lexsort((notes.pitch, notes.start))
    return notes if np.array_equal(order, np.arange(len(notes))) else notes[order]


def piece_features(notes: Notes) -> dict:
    """Every feature in FEATURES for one piece (floats and numpy arrays), plus its global "key" name."""
    if not len(notes):
        raise EmptyPieceError("the piece has no notes")
    notes = sorted_notes(notes)
    group, group_times = timing.onset_groups(notes.start)
    key = analyze_key(notes)
    return {
        "pitch_class_histogram": pitch.pitch_class_histogram(notes.pitch),
        "pitch_class_transitions": pitch.pitch_class_transitions(notes.pitch),
        "pitch_range": pitch.pitch_range(notes.pitch),
        "used_pitches": pitch.used_pitches(notes.pitch),
        "notes_per_second": timing.notes_per_second(notes),
        "ioi_histogram": timing.normalized_histogram(timing.inter_onset_intervals(group_times), timing.TIME_EDGES),
        "duration_histogram": timing.normalized_histogram(notes.duration, timing.TIME_EDGES),
        "velocity_histogram": timing.normalized_histogram(notes.velocity, timing.VELOCITY_EDGES),
        "polyphony": timing.polyphony(notes),
        "polyphony_at_onsets": timing.polyphony_at_onsets(notes, group, group_times),
        "key_correlation": key.correlation,
        "key_consistency": key.consistency,
        "repeated_4gram_share": degeneracy.repeated_ngram_share(notes.pitch, 4),
        "longest_silence": degeneracy.longest_silence(notes),
        "longest_pitch_run": degeneracy.longest_pitch_run(notes.pitch, group),
        "key": key.name,
    }
