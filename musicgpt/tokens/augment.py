"""Training augmentation on performance token ids, as in Music Transformer: transposition and time stretch.

Both work directly on a crop of token ids (no decoding to notes), vectorized with numpy, so the
data loader can call them on every crop:

- `transpose(ids, semitones)`: NOTE_ON/NOTE_OFF ids move by `semitones`; everything else stays.
  `allowed_shifts` lists the shifts in -k..+k that keep every pitch of the crop inside 21..108
  (the piano); a shift leaving that range is rejected, so the random choice is uniform over the
  allowed ones (0 is always allowed).
- `stretch(ids, factor)`: time is re-encoded. The time of every non-TIME_SHIFT token (and of the
  crop's end) is multiplied by `factor` and rounded to whole steps, with one guarantee: tokens that
  were in different time steps stay in different steps (a gap never shrinks below one step, and
  the rounding error does not accumulate: later times are pulled back to round(t * factor) as
  soon as possible). Gaps are re-split into TIME_SHIFTs of at most `max_shift_steps`, so the crop
  can get a few tokens shorter or longer. Event order, velocities and pitches are unchanged, and a
  canonical crop stays canonical.
- `make_augmenter(tokenizer, transpose=3, stretch=0.05)`: the `(ids, rng) -> ids` function that
  `musicgpt.training.data.CropSampler` calls: a uniform allowed shift in -3..+3 and a factor uniform in
  [0.95, 1.05].
"""

from __future__ import annotations

import weakref
from typing import Callable

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.tokens.base import PerformanceEvents

PIANO_RANGE = (21, 108)

Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class _Tables:
    """Lookup tables over the vocabulary, so that each augmentation is a few gathers."""

    def __init__(self, tokenizer: PerformanceEvents) -> None:
        if not isinstance(tokenizer, PerformanceEvents):
            raise ConfigError(f"augmentation works on performance tokens, not on a {tokenizer.type!r} tokenizer")
        kind = tokenizer.token_type(np.arange(tokenizer.vocab_size))
        value = tokenizer.token_value(np.arange(tokenizer.vocab_size))
        is_note = (kind == tokenizer.type_code("NOTE_ON")) | (kind == tokenizer.type_code("NOTE_OFF"))
        self.is_note = is_note.astype(np.int64)  # (V,)
        self.pitch_low = np.where(is_note, value, 1 << 20)  # (V,) pitch, huge elsewhere: for min
        self.pitch_high = np.where(is_note, value, -1)  # (V,) pitch, -1 elsewhere: for max
        self.shift_steps = np.where(kind == tokenizer.type_code("TIME_SHIFT"), value, 0)  # (V,)
        self.shift0 = tokenizer.ranges["TIME_SHIFT"][0]
        self.max_steps = tokenizer.max_shift_steps


_TABLES: dict[int, _Tables] = {}  # id(tokenizer) -> its tables, while the tokenizer lives


def _tables(tokenizer: PerformanceEvents) -> _Tables:
    """The tables of a tokenizer, made on its first use (keyed by identity: hashing a tokenizer costs a sha256)."""
    tables = _TABLES.get(id(tokenizer))
    if tables is None:
        tables = _TABLES[id(tokenizer)] = _Tables(tokenizer)
        weakref.finalize(tokenizer, _TABLES.pop, id(tokenizer), None)
    return tables


def pitch_bounds(ids: np.ndarray, tokenizer: PerformanceEvents) -> tuple[int, int] | None:
    """(lowest, highest) pitch of the NOTE_ON/NOTE_OFF tokens in ids, or None when there are none."""
    return _pitch_bounds(np.asarray(ids), _tables(tokenizer))


def _pitch_bounds(ids: np.ndarray, t: _Tables) -> tuple[int, int] | None:
    if not len(ids):
        return None
    high = int(np.take(t.pitch_high, ids, mode="clip").max())
    return None if high < 0 else (int(np.take(t.pitch_low, ids, mode="clip").min()), high)


def allowed_shifts(ids: np.ndarray, tokenizer: PerformanceEvents, max_shift: int = 3,
                   pitch_range: tuple[int, int] = PIANO_RANGE) -> np.ndarray:
    """The shifts in -max_shift..max_shift that keep every pitch of `ids` inside pitch_range (0 always)."""
    return _allowed(pitch_bounds(ids, tokenizer), max_shift, pitch_range)


def _allowed(bounds, max_shift: int, pitch_range: tuple[int, int]) -> np.ndarray:
    shifts = np.arange(-max_shift, max_shift + 1)
    if bounds is None:
        return shifts
    low, high = bounds
    ok = (low + shifts >= pitch_range[0]) & (high + shifts <= pitch_range[1])
    ok |= shifts == 0
    return shifts[ok]


def transpose(ids: np.ndarray, semitones: int, tokenizer: PerformanceEvents) -> np.ndarray:
    """NOTE_ON/NOTE_OFF ids moved by `semitones` (the caller checks the range: see allowed_shifts)."""
    ids = np.asarray(ids)
    bounds = pitch_bounds(ids, tokenizer)
    if bounds is not None and not (0 <= bounds[0] + semitones and bounds[1] + semitones <= 127):
        raise ValueError(f"transposing by {semitones} leaves the MIDI pitch range")
    return _transpose(ids, semitones, _tables(tokenizer))


def _transpose(ids: np.ndarray, semitones: int, t: _Tables) -> np.ndarray:
    if semitones == 0:
        return ids.copy()
    out = np.take(t.is_note, ids, mode="clip")
    out *= semitones
    out += ids
    return out.astype(ids.dtype, copy=False)


def stretch(ids: np.ndarray, factor: float, tokenizer: PerformanceEvents) -> np.ndarray:
    """Time stretched by `factor` by re-encoding the TIME_SHIFTs (see the module docstring)."""
    return _stretch(np.asarray(ids), factor, _tables(tokenizer))


def _stretch(ids: np.ndarray, factor: float, t: _Tables) -> np.ndarray:
    if factor == 1.0 or not len(ids):
        return ids.copy()
    steps = np.take(t.shift_steps, ids, mode="clip")  # (T,) steps of each TIME_SHIFT, 0 for the rest
    clock = np.cumsum(steps)  # (T,) steps elapsed after each token
    events = np.flatnonzero(steps == 0)
    # The crop's end is a pseudo-event (token -1) so that trailing silence is stretched too.
    times = np.append(clock[events], clock[-1])
    event_tokens = np.append(ids[events].astype(np.int64), -1)
    old_gap = times.copy()
    old_gap[1:] -= times[:-1]
    separate = np.cumsum(old_gap > 0)
    new_times = np.rint(times * factor).astype(np.int64)
    new_times -= separate
    np.maximum.accumulate(new_times, out=new_times)
    new_times += separate
    gap = new_times.copy()
    gap[1:] -= new_times[:-1]

    m = t.max_steps
    n_shift = (gap + m - 1) // m if gap.max() > m else (gap > 0).astype(np.int64)
    pos = np.cumsum(n_shift + 1) - 1  # (E,) position of each event token
    out = np.full(int(pos[-1]) + 1, t.shift0 + m - 1, np.int64)  # full TIME_SHIFTs by default
    out[pos - 1] = t.shift0 - 1 + gap - (n_shift - 1) * m  # the last shift of a gap: the remainder
    out[pos] = event_tokens  # overwrites the slots written above for events without a gap
    return out[:-1].astype(ids.dtype, copy=False)  # drop the pseudo-event


def make_augmenter(tokenizer: PerformanceEvents, transpose: int = 3, stretch: float = 0.05,
                   pitch_range: tuple[int, int] = PIANO_RANGE) -> Augmenter | None:
    """The `(ids, rng) -> ids` augmentation for training crops; None when both are disabled."""
    tables = _tables(tokenizer)
    if transpose < 0 or not 0 <= stretch < 1:
        raise ConfigError(f"augmentation: transpose must be >= 0 and stretch in [0, 1), got {transpose}, {stretch}")
    if transpose == 0 and stretch == 0:
        return None
    max_shift, amount = int(transpose), float(stretch)

    def augment(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ids = np.asarray(ids)
        if max_shift:
            shifts = _allowed(_pitch_bounds(ids, tables), max_shift, pitch_range)
            ids = _transpose(ids, int(shifts[rng.integers(len(shifts))]), tables)
        if amount:
            ids = _stretch(ids, float(rng.uniform(1.0 - amount, 1.0 + amount)), tables)
        return ids

    return augment
