"""Timing of a piece: onset groups (chords), inter-onset intervals, durations, density, polyphony, silences."""

from __future__ import annotations

import numpy as np

from musicgpt.music.notes import Notes

# Onsets within this many seconds of a group's first onset form one chord: performed chords are spread.
ONSET_TOLERANCE = 0.025

# Half-octave (x sqrt 2) bins from 25 ms to 3.2 s for IOIs and durations: perceptually even spacing.
# Values outside the edges fall into the first or last bin.
TIME_EDGES = ONSET_TOLERANCE * 2.0 ** (np.arange(15) / 2)

# Eight velocity bins of 16 steps each: 0-15, 16-31, ..., 112-127.
VELOCITY_EDGES = np.arange(0, 129, 16, dtype=np.float64)


def normalized_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Histogram over `edges` with outliers clipped into the end bins, as shares summing to 1."""
    clipped = np.clip(np.asarray(values, np.float64), edges[0], edges[-1])
    counts = np.histogram(clipped, bins=edges)[0].astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def onset_groups(start: np.ndarray, tolerance: float = ONSET_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Group sorted onsets into chords: (group index per note, first onset time per group)."""
    group = np.zeros(len(start), dtype=np.int64)
    times: list[float] = []
    for i, t in enumerate(start.tolist()):
        if not times or t - times[-1] > tolerance:
            times.append(t)
        group[i] = len(times) - 1
    return group, np.asarray(times, dtype=np.float64)


def inter_onset_intervals(group_times: np.ndarray) -> np.ndarray:
    """Seconds between successive onset groups."""
    return np.diff(group_times)


def span(notes: Notes) -> float:
    """Seconds from the first onset to the last release."""
    return float(notes.end.max() - notes.start.min()) if len(notes) else 0.0


def notes_per_second(notes: Notes) -> float:
    """Notes divided by the span from first onset to last release."""
    return len(notes) / max(span(notes), ONSET_TOLERANCE) if len(notes) else 0.0


def silent_gaps(notes: Notes) -> np.ndarray:
    """Lengths of the stretches between first onset and last release where no note sounds."""
    if len(notes) < 2:
        return np.zeros(0)
    order = np.argsort(notes.start, kind="stable")
    start, end = notes.start[order], notes.end[order]
    released_by = np.maximum.accumulate(end)  # latest release among notes started so far
    gaps = start[1:] - released_by[:-1]
    return gaps[gaps > 0]


def polyphony(notes: Notes) -> float:
    """Time-averaged number of sounding notes, over the time when at least one note sounds."""
    sounding_time = span(notes) - silent_gaps(notes).sum()
    if sounding_time <= 0:
        return 0.0
    return float(np.clip(notes.duration, 0, None).sum() / sounding_time)


def polyphony_at_onsets(notes: Notes, group: np.ndarray, group_times: np.ndarray) -> float:
    """Mean number of notes sounding at each onset group: the chord itself plus notes still held."""
    if not len(group_times):
        return 0.0
    held = notes.duration > 0  # zero-length notes sound at no instant after their onset
    starts, ends = np.sort(notes.start[held]), np.sort(notes.end[held])
    # notes with start < t and end > t; every held note with end <= t also has start < t
    still_held = np.searchsorted(starts, group_times, "left") - np.searchsorted(ends, group_times, "right")
    chord_size = np.bincount(group, minlength=len(group_times))
    return float((still_held + chord_size).mean())
