"""Fill-in-the-middle for performance tokens: cutting a stream at two times, the sequence layout, decoding it.

To regenerate the notes whose onsets fall in [START, END) of a piece, the model reads

    [CONTROL*] INFILL_SUFFIX suffix INFILL_PREFIX [BOS] prefix GAP middle

- prefix: the piece's events before START, then TIME_SHIFTs up to START exactly (`cut`). BOS when the
  prefix begins at the piece's start, as in plain training.
- suffix: the notes with onsets at or after END, encoded on their own from time 0 (`suffix_tokens`),
  so it holds no NOTE_OFF of a note begun earlier.
- GAP: the gap's length in GAP_STEP bins (`PerformanceTokenizer.gap_id`), where the middle begins.
- middle: the events in [START, END) and TIME_SHIFTs up to END exactly; notes sounding at END are
  closed there by the sampler, and the next notes are the suffix's.

Suffix first, then prefix and middle (the "SPM" order of code models): the middle follows the prefix
directly, so the model continues the prefix as in plain generation, and reads the suffix as context.
Decoding places the suffix's notes at the end of the prefix and middle, i.e. at END once the middle is
complete (`decode_with_suffix`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musicgpt.music.notes import Notes

__all__ = ["InfillSpans", "clock_steps", "cut", "prefix_tail", "suffix_tokens", "layout", "spans", "decode_with_suffix",
           "timeline"]


@dataclass(frozen=True)
class InfillSpans:
    """Where the parts of an infilling sequence lie: token positions."""

    suffix: tuple[int, int]  # the suffix's tokens: ids[suffix[0]:suffix[1]] (between the two sentinels)
    gap: int  # the GAP token's position (len(ids) while the sequence has none yet)

    def part_of(self, position: int) -> str:
        """'suffix', 'prefix' or 'middle' for a token position."""
        if self.suffix[0] <= position < self.suffix[1]:
            return "suffix"
        return "prefix" if position < self.gap else "middle"


def clock_steps(ids: np.ndarray, tokenizer) -> np.ndarray:
    """(T,) the time of each token in steps: the TIME_SHIFTs before it."""
    ids = np.asarray(ids, np.int64)
    steps = np.where(tokenizer.token_type(ids) == tokenizer.type_code("TIME_SHIFT"), tokenizer.token_value(ids), 0)
    return np.cumsum(steps) - steps


def _retimed(tokenizer, events: np.ndarray, times: np.ndarray, begin: int, end: int,
             last: int | None = None) -> tuple[np.ndarray, int]:
    """(event tokens at their times (steps, ascending, in [begin, end)) with TIME_SHIFTs from `begin` to `end`,
    full shifts then the remainder as the encoder writes them; the number of tokens that makes in all).

    With `last`, only the last `last` tokens are built: the work is the events' and the kept tokens', never
    the length of the silences, so a far-off time costs a count, not a token per shift."""
    events = np.asarray(events, np.int64)
    advance = np.diff(np.r_[begin, np.asarray(times, np.int64), end]).clip(min=0)  # (E+1,) before each event, and after
    full, rest = np.divmod(advance, tokenizer.max_shift_steps)  # (E+1,) full shifts and the remainder's steps
    lengths = full + (rest > 0) + np.r_[np.ones(len(events), np.int64), 0]  # (E+1,) a segment: its shifts, its event
    ends = np.cumsum(lengths)  # (E+1,) one past each segment's last token
    total = int(ends[-1])
    first = 0 if last is None else max(0, total - max(0, int(last)))  # the first token built
    out = np.full(total - first, tokenizer.time_shift(tokenizer.max_shift_steps), np.int64)  # full shifts, until set
    remainder_at = (ends - lengths + full)[rest > 0]  # (R,) where each remainder shift goes
    shown = remainder_at >= first
    if shown.any():
        out[remainder_at[shown] - first] = tokenizer.time_shift(rest[rest > 0][shown])
    event_at = ends[:-1] - 1  # (E,) each segment's last token is its event
    shown = event_at >= first
    out[event_at[shown] - first] = events[shown]
    return out, total


def cut(ids: np.ndarray, tokenizer, start_step: int, end_step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prefix, middle) of a music stream: events before `start_step` then shifts to it; events in
    [start_step, end_step) then shifts to `end_step` (None: the middle is every later event, no trailing shift)."""
    ids = np.asarray(ids, np.int64)
    time = clock_steps(ids, tokenizer)
    event = tokenizer.token_type(ids) != tokenizer.type_code("TIME_SHIFT")
    before = event & (time < start_step)
    prefix, _ = _retimed(tokenizer, ids[before], time[before], 0, start_step)
    if end_step is None:
        inside = event & (time >= start_step)
        end_step = int(time[inside].max()) if inside.any() else start_step
    else:
        inside = event & (time >= start_step) & (time < end_step)
    return prefix, _retimed(tokenizer, ids[inside], time[inside], start_step, max(end_step, start_step))[0]


def prefix_tail(ids: np.ndarray, tokenizer, start_step: int, last: int) -> tuple[np.ndarray, bool]:
    """(the last `last` tokens of `cut`'s prefix, whether that is the whole prefix): what an infilling prompt
    keeps, built from those tokens alone, however far `start_step` lies."""
    ids = np.asarray(ids, np.int64)
    time = clock_steps(ids, tokenizer)
    before = (tokenizer.token_type(ids) != tokenizer.type_code("TIME_SHIFT")) & (time < start_step)
    tail, total = _retimed(tokenizer, ids[before], time[before], 0, start_step, last)
    return tail, len(tail) == total


def suffix_tokens(notes: Notes, end_seconds: float, tokenizer) -> np.ndarray:
    """The suffix: notes with onsets at or after `end_seconds` (to half a step), encoded from time 0."""
    later = notes[notes.start >= end_seconds - tokenizer.time_step / 2]
    return tokenizer.encode(later.shifted(-end_seconds)).ids


def layout(tokenizer, suffix: np.ndarray, prefix: np.ndarray, gap_seconds: float, header: np.ndarray = (),
           bos: bool = True) -> np.ndarray:
    """[CONTROL*] INFILL_SUFFIX suffix INFILL_PREFIX [BOS] prefix GAP: the prompt before the middle."""
    return np.concatenate([np.asarray(header, np.int64), [tokenizer.suffix_id], np.asarray(suffix, np.int64),
                           [tokenizer.prefix_id], [tokenizer.bos_id] if bos else [], np.asarray(prefix, np.int64),
                           [tokenizer.gap_id(gap_seconds)]]).astype(np.int64)


def spans(tokenizer, ids: np.ndarray) -> InfillSpans | None:
    """The parts of an infilling sequence, or None when `ids` has no suffix block."""
    ids = np.asarray(ids, np.int64)
    if not getattr(tokenizer, "infill", False):
        return None
    opened = np.flatnonzero(ids == tokenizer.suffix_id)
    if not len(opened):
        return None
    lo = int(opened[0]) + 1
    closed = np.flatnonzero(ids[lo:] == tokenizer.prefix_id)
    hi = lo + int(closed[0]) if len(closed) else len(ids)
    gaps = np.flatnonzero(tokenizer.token_type(ids[hi:]) == tokenizer.type_code("GAP"))
    return InfillSpans((lo, hi), hi + int(gaps[0]) if len(gaps) else len(ids))


def timeline(tokenizer, ids: np.ndarray) -> np.ndarray:
    """`ids` without the suffix block and its sentinels: the tokens of the prefix-and-middle time line."""
    ids = np.asarray(ids, np.int64)
    s = spans(tokenizer, ids)
    if s is None:
        return ids
    return np.concatenate([ids[: s.suffix[0] - 1], ids[s.suffix[1] + 1 :]])


def decode_with_suffix(tokenizer, ids: np.ndarray) -> tuple[Notes, np.ndarray]:
    """decode_with_index of an infilling sequence: the suffix's notes start where the rest ends (END)."""
    ids = np.asarray(ids, np.int64)
    s = spans(tokenizer, ids)
    lo, hi = s.suffix
    main = ids.copy()
    main[lo - 1 : hi + 1] = tokenizer.pad_id  # decoding skips PAD: the time line without the suffix block
    eos = np.flatnonzero(main == tokenizer.eos_id)
    line = main[: eos[0] if len(eos) else len(main)]
    inside = (line >= 0) & (line < tokenizer.vocab_size)
    end = float(tokenizer.seconds_per_id()[line[inside]].sum())  # where the middle ends: END
    notes_main, index_main = tokenizer._decode(main)
    notes_suffix, index_suffix = tokenizer._decode(ids[lo:hi])
    both = Notes.concat([notes_main, notes_suffix.shifted(end)])
    # Notes.concat sorts by (start, pitch) stably: find where each part's notes went
    order = np.lexsort((np.r_[notes_main.pitch, notes_suffix.pitch], np.r_[notes_main.start, notes_suffix.start + end]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    note_index = np.where(index_main >= 0, rank[np.maximum(index_main, 0)], -1)
    note_index[lo:hi] = np.where(index_suffix >= 0, rank[len(notes_main) + np.maximum(index_suffix, 0)], -1)
    return both, note_index
