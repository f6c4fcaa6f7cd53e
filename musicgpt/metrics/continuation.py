"""Does a continuation stay in its primer's piece? Measures of N seconds of music against the real next N seconds.

    real = window(performance, t_c, t_c + N)           # what the piece really does next
    spread = Spread.of(real, neighbours, primer, N)    # how much real music of this piece varies around it
    spread.within(window(generated, c0, c0 + N))       # {measure: True when inside the real spread}

The measures of one window of N seconds (`measures`):

- density: notes per second of the window (notes / N, not / their span: a short burst is not dense);
- polyphony: time-averaged sounding notes while any sounds (`timing.polyphony`);
- pitch_range, pitch_mean: highest minus lowest pitch, mean MIDI pitch;
- velocity_mean, velocity_spread: mean and standard deviation of the velocities;
- pitch_class_profile: the 12-bin pitch-class histogram (`pitch.pitch_class_histogram`);
- ioi_histogram: inter-onset intervals between chords in half-octave bins (`timing.TIME_EDGES`);
- pitch_ngram_return, interval_ngram_return: the share of the window's pitch 4-grams (successive notes in
  onset, pitch order) and interval 4-grams (4 successive pitch steps: transposed material counts) that occur
  in the primer: how much of the primer's material returns.

The spread (`Spread`): the real continuation and the piece's other real music around it, the *neighbours*:
the N-second windows of the same performance just after the real continuation and just before the primer
(up to two each way, where the piece has them), and the window at the same place of other performances of the
piece (ASAP) where the caller gives them. One rule for every measure: a window is within the spread when it
lies no farther from the real continuation than the farthest neighbour does: |value - real| for a scalar
(density, polyphony, pitch range and mean, velocity mean and spread, the two n-gram returns), the Euclidean
distance of the histograms for a profile (pitch_class_profile, ioi_histogram). A window without notes is
within nothing (silence has no pitch, no velocity, no interval), nor is any window where the real
continuation has no value. The summary share is the mean over the measures of the share of windows within.

Degenerate (`degenerate`): the rule the model card's samples use (bench/bundled_samples.py): no notes, or a
repeated-4-gram share, longest silence, longest repeated-pitch run or polyphony above the largest among real
windows of the same length, or notes per second outside their range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musicgpt.metrics import degeneracy, pitch, timing
from musicgpt.metrics.features import sorted_notes
from musicgpt.music.notes import Notes

NGRAM = 4  # notes in a pitch n-gram, steps in an interval n-gram
SCALARS = ("density", "polyphony", "pitch_range", "pitch_mean", "velocity_mean", "velocity_spread",
           "pitch_ngram_return", "interval_ngram_return")
PROFILES = ("pitch_class_profile", "ioi_histogram")
MEASURES = ("density", "polyphony", "pitch_range", "pitch_mean", "pitch_class_profile", "velocity_mean",
            "velocity_spread", "ioi_histogram", "pitch_ngram_return", "interval_ngram_return")
DEGENERACY = ("repeated_4gram_share", "longest_silence", "notes_per_second", "longest_pitch_run", "polyphony")


def window(notes: Notes, t0: float, t1: float) -> Notes:
    """Notes with onsets in [t0, t1), cut off at t1 and moved to start at 0."""
    part = notes[(notes.start >= t0) & (notes.start < t1)]
    return Notes(part.start - t0, np.minimum(part.end, t1) - t0, part.pitch, part.velocity)


def looped(primer: Notes, period: float, seconds: float) -> Notes:
    """`primer` (a window of `period` seconds starting at 0) played again and again for `seconds`."""
    if not len(primer):
        return primer
    return window(Notes.concat([primer.shifted(k * period) for k in range(int(np.ceil(seconds / period)))]),
                  0.0, seconds)


def _codes(values: np.ndarray, n: int, offset: int) -> np.ndarray:
    """One integer per n-gram of `values` (each in 0 .. 2 * offset - 1 after adding `offset`)."""
    v = np.asarray(values, np.int64) + offset
    if len(v) < n:
        return np.zeros(0, np.int64)
    codes = np.zeros(len(v) - n + 1, np.int64)
    for k in range(n):
        codes = codes * (2 * offset) + v[k : len(v) - n + 1 + k]
    return codes


def ngram_return(notes: Notes, primer: Notes, n: int = NGRAM, intervals: bool = False) -> float | None:
    """Share of the n-grams of `notes` (pitches, or pitch steps when `intervals`) found in `primer`'s; None
    when `notes` has none."""
    a, b = sorted_notes(notes).pitch, sorted_notes(primer).pitch
    if intervals:
        a, b = np.diff(a), np.diff(b)
    ours, theirs = _codes(a, n, 128), _codes(b, n, 128)
    return float(np.isin(ours, theirs).mean()) if len(ours) else None


def measures(notes: Notes, primer: Notes, seconds: float) -> dict:
    """Every measure of MEASURES for a window of `seconds` (module docstring); None where a window has no notes."""
    if not len(notes):
        return {name: (0.0 if name == "density" else None) for name in MEASURES}
    notes = sorted_notes(notes)
    _, group_times = timing.onset_groups(notes.start)
    velocity = np.asarray(notes.velocity, np.float64)
    return {
        "density": len(notes) / seconds,
        "polyphony": timing.polyphony(notes),
        "pitch_range": pitch.pitch_range(notes.pitch),
        "pitch_mean": float(np.mean(notes.pitch)),
        "pitch_class_profile": pitch.pitch_class_histogram(notes.pitch),
        "velocity_mean": float(velocity.mean()),
        "velocity_spread": float(velocity.std()),
        "ioi_histogram": timing.normalized_histogram(timing.inter_onset_intervals(group_times), timing.TIME_EDGES),
        "pitch_ngram_return": ngram_return(notes, primer),
        "interval_ngram_return": ngram_return(notes, primer, intervals=True),
    }


def _distance(a, b) -> float | None:
    if a is None or b is None:
        return None
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


@dataclass(frozen=True)
class Spread:
    """Per measure, what real music of the piece does here: a [low, high] band of a scalar, or the largest
    distance of a neighbour's profile to the real continuation's (module docstring)."""

    real: dict  # the real continuation's measures
    bands: dict  # name -> (0, the largest distance of a neighbour to the real continuation); None: no band
    neighbours: int

    @classmethod
    def of(cls, real: Notes, neighbours: list[Notes], primer: Notes, seconds: float) -> "Spread":
        """The spread of `real` (the real continuation) and its `neighbours` (other real windows of the piece)."""
        own = measures(real, primer, seconds)
        others = [measures(n, primer, seconds) for n in neighbours]
        bands = {}
        for name in MEASURES:
            distances = [d for d in (_distance(m[name], own[name]) for m in others) if d is not None]
            bands[name] = (0.0, max(distances)) if distances else None
        return cls(own, bands, len(neighbours))

    def distance(self, name: str, value) -> float | None:
        """How far a measure's value lies from the real continuation's (None when either is missing)."""
        return _distance(value, self.real[name])

    def within(self, candidate: dict) -> dict[str, bool]:
        """Whether each measure of `candidate` (a `measures` dict) lies within this spread."""
        out = {}
        for name in MEASURES:
            band, value = self.bands[name], self.distance(name, candidate[name])
            empty = candidate["density"] == 0  # silence is within nothing, even where a neighbour is silent
            out[name] = bool(band is not None and value is not None and not empty and value <= band[1])
        return out


def summary_share(flags: list[dict[str, bool]]) -> dict:
    """Per measure the share of windows within the spread, and the summary share (their mean)."""
    if not flags:
        return {"per_measure": {name: None for name in MEASURES}, "summary": None, "n": 0}
    per = {name: float(np.mean([f[name] for f in flags])) for name in MEASURES}
    return {"per_measure": per, "summary": float(np.mean(list(per.values()))), "n": len(flags)}


def degeneracy_values(notes: Notes) -> dict | None:
    """The DEGENERACY measures of a window (as `metrics.features` computes them), None for no notes."""
    if not len(notes):
        return None
    notes = sorted_notes(notes)
    group, _ = timing.onset_groups(notes.start)
    return {"repeated_4gram_share": degeneracy.repeated_ngram_share(notes.pitch, 4),
            "longest_silence": degeneracy.longest_silence(notes), "notes_per_second": timing.notes_per_second(notes),
            "longest_pitch_run": degeneracy.longest_pitch_run(notes.pitch, group),
            "polyphony": timing.polyphony(notes)}


def degenerate(windows: list[Notes], real: list[Notes]) -> list[bool]:
    """Per window: degenerate against the real windows (module docstring)."""
    reference = [v for v in map(degeneracy_values, real) if v is not None]
    low = {m: min(v[m] for v in reference) for m in DEGENERACY}
    high = {m: max(v[m] for v in reference) for m in DEGENERACY}
    flags = []
    for values in map(degeneracy_values, windows):
        flags.append(values is None or any(values[m] > high[m] for m in DEGENERACY)
                     or values["notes_per_second"] < low["notes_per_second"])
    return flags
