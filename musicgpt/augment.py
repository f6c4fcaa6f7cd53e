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
  `musicgpt.data.CropSampler` calls: a uniform allowed shift in -3..+3 and a factor uniform in
  [0.95, 1.05].
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.tokenizer import PerformanceTokenizer

PIANO_RANGE = (21, 108)

Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _layout(tokenizer: PerformanceTokenizer) -> tuple[int, int, int, int]:
    if getattr(tokenizer, "type", None) != "performance":
        raise ConfigError(f"augmentation works on performance tokens, not on a {tokenizer.type!r} tokenizer")
    return tokenizer._on0, tokenizer._off0, tokenizer._shift0, tokenizer.max_shift_steps


def pitch_bounds(ids: np.ndarray, tokenizer: PerformanceTokenizer) -> tuple[int, int] | None:
    """(lowest, highest) pitch of the NOTE_ON/NOTE_OFF tokens in ids, or None when there are none."""
    on0, off0, _, _ = _layout(tokenizer)
    ids = np.asarray(ids, dtype=np.int64)
    notes = ids[(ids >= on0) & (ids < off0 + 128)]
    if not len(notes):
        return None
    pitches = np.where(notes >= off0, notes - off0, notes - on0)
    return int(pitches.min()), int(pitches.max())


def allowed_shifts(ids: np.ndarray, tokenizer: PerformanceTokenizer, max_shift: int = 3,
                   pitch_range: tuple[int, int] = PIANO_RANGE) -> np.ndarray:
    """The shifts in -max_shift..max_shift that keep every pitch of `ids` inside pitch_range (0 always)."""
    shifts = np.arange(-max_shift, max_shift + 1)
    bounds = pitch_bounds(ids, tokenizer)
    if bounds is None:
        return shifts
    low, high = bounds
    ok = (low + shifts >= pitch_range[0]) & (high + shifts <= pitch_range[1])
    ok |= shifts == 0
    return shifts[ok]


def transpose(ids: np.ndarray, semitones: int, tokenizer: PerformanceTokenizer) -> np.ndarray:
    """NOTE_ON/NOTE_OFF ids moved by `semitones` (the caller checks the range: see allowed_shifts)."""
    on0, off0, _, _ = _layout(tokenizer)
    ids = np.asarray(ids)
    if semitones == 0:
        return ids.copy()
    raw = ids.astype(np.int64)
    is_note = (raw >= on0) & (raw < off0 + 128)
    pitch = np.where(raw >= off0, raw - off0, raw - on0)
    if is_note.any() and not (0 <= pitch[is_note].min() + semitones and pitch[is_note].max() + semitones <= 127):
        raise ValueError(f"transposing by {semitones} leaves the MIDI pitch range")
    out = raw + np.where(is_note, semitones, 0)
    return out.astype(ids.dtype, copy=False)


def stretch(ids: np.ndarray, factor: float, tokenizer: PerformanceTokenizer) -> np.ndarray:
    """Time stretched by `factor` by re-encoding the TIME_SHIFTs (see the module docstring)."""
    _, _, sh0, max_steps = _layout(tokenizer)
    ids = np.asarray(ids)
    if factor == 1.0 or not len(ids):
        return ids.copy()
    raw = ids.astype(np.int64)
    is_shift = (raw >= sh0) & (raw < sh0 + max_steps)
    clock = np.cumsum(np.where(is_shift, raw - sh0 + 1, 0))  # (T,) steps elapsed after each token
    events = np.flatnonzero(~is_shift)
    # The crop's end is a pseudo-event so that trailing silence is stretched too.
    times = np.append(clock[events], clock[-1])
    event_tokens = np.append(raw[events], -1)
    old_gap = np.diff(times, prepend=0)
    separate = np.cumsum(old_gap > 0)
    target = np.rint(times * factor).astype(np.int64)
    new_times = np.maximum.accumulate(target - separate) + separate
    gap = np.diff(new_times, prepend=0)

    n_shift = (gap + max_steps - 1) // max_steps
    count = n_shift + 1
    slot = np.cumsum(count) - count
    out = np.empty(int(slot[-1] + count[-1]), np.int64)
    out[slot + n_shift] = event_tokens
    total_shifts = int(n_shift.sum())
    if total_shifts:
        has = n_shift > 0
        reps = n_shift[has]
        within = np.arange(total_shifts) - np.repeat(np.cumsum(reps) - reps, reps)
        last = within == np.repeat(reps - 1, reps)
        steps = np.where(last, np.repeat(gap[has] - (reps - 1) * max_steps, reps), max_steps)
        out[np.repeat(slot[has], reps) + within] = sh0 + steps - 1
    return out[:-1].astype(ids.dtype, copy=False)  # drop the pseudo-event


_transpose_fn, _stretch_fn = transpose, stretch  # make_augmenter's arguments shadow these names


def make_augmenter(tokenizer: PerformanceTokenizer, transpose: int = 3, stretch: float = 0.05,
                   pitch_range: tuple[int, int] = PIANO_RANGE) -> Augmenter | None:
    """The `(ids, rng) -> ids` augmentation for training crops; None when both are disabled."""
    _layout(tokenizer)
    if transpose < 0 or not 0 <= stretch < 1:
        raise ConfigError(f"augmentation: transpose must be >= 0 and stretch in [0, 1), got {transpose}, {stretch}")
    if transpose == 0 and stretch == 0:
        return None
    max_shift, amount = int(transpose), float(stretch)

    def augment(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if max_shift:
            ids = _transpose_fn(ids, int(rng.choice(allowed_shifts(ids, tokenizer, max_shift, pitch_range))), tokenizer)
        if amount:
            ids = _stretch_fn(ids, float(rng.uniform(1.0 - amount, 1.0 + amount)), tokenizer)
        return ids

    return augment

