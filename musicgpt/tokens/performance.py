"""PerformanceTokenizer: notes <-> performance-event token ids (Oore et al. 2018), vectorized numpy.

Vocabulary: specials first, then one contiguous range per event type, all derived from `ranges`
(name -> (first id, count)). With the defaults (pinned by tests, `python -m musicgpt.tokens`):

    PAD 0, BOS 1, EOS 2
    NOTE_ON    pitch 0..127          ids   3 .. 130
    NOTE_OFF   pitch 0..127          ids 131 .. 258
    TIME_SHIFT 1..100 steps of 10 ms ids 259 .. 358  (id = 259 + steps - 1)
    VELOCITY   bin 0..31             ids 359 .. 390
    vocab_size 391

Optional tokens, appended after VELOCITY so the ids above keep their meaning (a plain checkpoint's
embeddings extend to them): `controls` ({name: [values]}, see `musicgpt.tokens.controls`) adds one
CONTROL token per (name, value); `infill=True` adds INFILL_SUFFIX and INFILL_PREFIX and GAP tokens of
0.5 .. 20 s (see `musicgpt.tokens.infill` for the fill-in-the-middle layout). Without them the
tokenizer, its ids and its tokenizer.json are exactly the plain one's.

Encoding (the canonical token order; `encode` always produces it, `GrammarState(canonical=True)`
accepts exactly it):
- Times are rounded to the nearest step (`time_step`, 10 ms); times before 0 become 0. The
  sequence starts at time 0 and ends with the last NOTE_OFF (no BOS/EOS: callers add them).
- A note lasts at least one step. Two notes of one pitch whose onsets round to the same step merge
  into one (latest end, loudest velocity); a note still sounding at its pitch's next onset ends
  there. So every pitch has at most one sounding note and every note has a NOTE_ON and a NOTE_OFF.
- Within one time step: all NOTE_OFFs first, by ascending pitch; then the NOTE_ONs by ascending
  pitch, each preceded by a VELOCITY token only when its bin differs from the previous NOTE_ON's
  (the first NOTE_ON of a sequence always gets one).
- Error bounds of a round trip: onsets within half a step (5 ms); offsets within one step
  (10 ms), except notes shorter than half a step whose onset rounds up (1.5 steps); velocities
  within their bin, except merged notes, which take the loudest velocity of their group.
- A gap of g steps between event times is written as floor(g / 100) shifts of 100 steps and one
  shift of the remainder (when non-zero).
- Velocity bins: bin_size = ceil(127 / velocity_bins) (4 with 32 bins); bin = (velocity - 1) //
  bin_size, so bin b holds velocities 4b+1 .. 4b+4; a bin decodes to its middle value
  min(127, b * bin_size + 1 + bin_size // 2) (4b+3).
- `Encoding.note_index[i]` is the index, in `Encoding.notes` (the quantized notes the ids stand
  for, sorted by start then pitch), of the note token i belongs to: its NOTE_ON, its NOTE_OFF and
  the VELOCITY right before its NOTE_ON; -1 for TIME_SHIFT. `Encoding.source_index[k]` is the
  index of encoded note k in the input table (merged notes drop out).

Decoding is total (any integer sequence decodes without error):
- PAD and BOS are skipped; EOS ends the sequence (later tokens are ignored); ids outside the
  vocabulary are skipped.
- NOTE_ON of a pitch that is already sounding ends the sounding note there (re-strike) and starts
  a new one. NOTE_OFF of a pitch that is not sounding is ignored. A note of zero length (its
  NOTE_OFF or a re-strike in the step of its NOTE_ON) is dropped.
- A NOTE_ON before any VELOCITY plays at velocity 64 (`default_velocity`).
- A note never closed ends at the time of the last token, but at most `max_unclosed_duration`
  (5 s) after its onset and at least one step after it.
- CONTROL and GAP tokens are skipped. A suffix block (INFILL_SUFFIX ... INFILL_PREFIX) is decoded on its
  own and placed at the end of the rest (where an infilled middle ends); see `musicgpt.tokens.infill`.
`decode(encode(notes).ids)` equals `encode(notes).notes` exactly.

Helpers for the other parts: `ranges`, `type_names`, `token_type(ids)` / `token_value(ids)`
(vectorized), `type_mask(name)` / `type_masks()` (per-event-type loss masks), `note_on(p)`,
`note_off(p)`, `time_shift(steps)`, `velocity(bin)`, `pad_id` / `bos_id` / `eos_id`, `token_name(id)`,
`to_dict()`, `fingerprint()`, and `grammar(canonical=False)` -> `GrammarState`, the mask of tokens
that may come next (for grammar-safe sampling). `load_tokenizer(path)` reads any tokenizer.json.
"""

from __future__ import annotations

import math

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.music.notes import Notes
from musicgpt.tokens.base import Encoding, PerformanceEvents
from musicgpt.tokens.grammar import GrammarState
from musicgpt.tokens.special import SpecialTokens, checked_controls

__all__ = ["PerformanceTokenizer"]


class PerformanceTokenizer(SpecialTokens, PerformanceEvents):
    """Performance events: NOTE_ON/NOTE_OFF per pitch, TIME_SHIFT steps, VELOCITY bins."""

    type = "performance"
    SPECIALS = ("PAD", "BOS", "EOS")
    N_PITCHES = 128
    default_velocity = 64

    def __init__(
        self,
        time_step: float = 0.01,
        max_shift_steps: int = 100,
        velocity_bins: int = 32,
        max_unclosed_duration: float = 5.0,
        controls: dict[str, list[str]] | None = None,
        infill: bool = False,
    ) -> None:
        if not (time_step > 0 and math.isfinite(time_step)):
            raise ConfigError(f"tokenizer time_step: must be a positive number of seconds, got {time_step!r}")
        if int(max_shift_steps) != max_shift_steps or max_shift_steps < 1:
            raise ConfigError(f"tokenizer max_shift_steps: must be a positive integer, got {max_shift_steps!r}")
        if int(velocity_bins) != velocity_bins or not 1 <= velocity_bins <= 127:
            raise ConfigError(f"tokenizer velocity_bins: must be an integer in 1..127, got {velocity_bins!r}")
        if not max_unclosed_duration > 0:
            raise ConfigError(f"tokenizer max_unclosed_duration: must be positive, got {max_unclosed_duration!r}")
        self.time_step = float(time_step)
        self.max_shift_steps = int(max_shift_steps)
        self.velocity_bins = int(velocity_bins)
        self.max_unclosed_duration = float(max_unclosed_duration)
        self.controls = checked_controls(controls)
        self.infill = bool(infill)
        self.velocity_bin_size = math.ceil(127 / self.velocity_bins)
        self._bin_of_velocity = (np.clip(np.arange(128), 1, 127) - 1) // self.velocity_bin_size

        counts = {"PAD": 1, "BOS": 1, "EOS": 1, "NOTE_ON": self.N_PITCHES, "NOTE_OFF": self.N_PITCHES,
                  "TIME_SHIFT": self.max_shift_steps, "VELOCITY": self.velocity_bins}
        self._control_of = [(name, value) for name, values in self.controls.items() for value in values]
        if self._control_of:
            counts["CONTROL"] = len(self._control_of)
        if self.infill:
            counts |= {"INFILL": 2, "GAP": self.GAP_BINS}
        self.ranges: dict[str, tuple[int, int]] = {}
        first = 0
        for name, count in counts.items():
            self.ranges[name] = (first, count)
            first += count
        self.vocab_size = first
        self.type_names: tuple[str, ...] = tuple(self.ranges)
        self._type_of = np.repeat(np.arange(len(counts), dtype=np.int8), list(counts.values()))
        self._on0 = self.ranges["NOTE_ON"][0]
        self._off0 = self.ranges["NOTE_OFF"][0]
        self._shift0 = self.ranges["TIME_SHIFT"][0]
        self._vel0 = self.ranges["VELOCITY"][0]
        # id -> argument: pitch for NOTE_ON/OFF, steps for TIME_SHIFT, bin for VELOCITY, 0 for specials
        # CONTROL: index into _control_of; INFILL: 0 suffix, 1 prefix; GAP: bins 1..GAP_BINS (x GAP_STEP seconds)
        self._value_of = np.concatenate([np.zeros(3, np.int64), np.arange(128), np.arange(128),
                                         np.arange(1, self.max_shift_steps + 1), np.arange(self.velocity_bins),
                                         np.arange(len(self._control_of)),
                                         np.arange(2 if self.infill else 0), np.arange(1, self.GAP_BINS + 1)[: self.infill * self.GAP_BINS]])

    # ---- vocabulary helpers -------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def note_on(self, pitch):
        """NOTE_ON id(s) of pitch(es) 0..127."""
        return self._checked(pitch, 0, self.N_PITCHES, "pitch") + self._on0

    def note_off(self, pitch):
        """NOTE_OFF id(s) of pitch(es) 0..127."""
        return self._checked(pitch, 0, self.N_PITCHES, "pitch") + self._off0

    def time_shift(self, steps):
        """TIME_SHIFT id(s) of 1..max_shift_steps steps."""
        return self._checked(steps, 1, self.max_shift_steps + 1, "steps") - 1 + self._shift0

    def velocity(self, bin):
        """VELOCITY id(s) of bin(s) 0..velocity_bins-1."""
        return self._checked(bin, 0, self.velocity_bins, "velocity bin") + self._vel0

    @staticmethod
    def _checked(value, low: int, high: int, what: str):
        array = np.asarray(value)
        if array.size and (array.min() < low or array.max() >= high):
            raise ValueError(f"{what} must lie in {low}..{high - 1}, got {value!r}")
        return int(array) if array.ndim == 0 else array.astype(np.int64)

    def velocity_to_bin(self, velocity):
        """Velocity 1..127 -> bin (values outside are clipped)."""
        return np.take(self._bin_of_velocity, velocity, mode="clip")

    def bin_to_velocity(self, bin):
        """Bin -> the velocity it decodes to (the middle of the bin)."""
        return np.minimum(127, np.asarray(bin) * self.velocity_bin_size + 1 + self.velocity_bin_size // 2)

    def token_type(self, ids) -> np.ndarray:
        """Type code per id: index into `type_names` (PAD, BOS, EOS, NOTE_ON, ...); -1 outside the vocab."""
        ids = np.asarray(ids)
        inside = (ids >= 0) & (ids < self.vocab_size)
        return np.where(inside, self._type_of[np.where(inside, ids, 0)], -1).astype(np.int8)

    def token_value(self, ids) -> np.ndarray:
        """Argument per id: pitch (NOTE_ON/OFF), steps (TIME_SHIFT), bin (VELOCITY), 0 otherwise."""
        ids = np.asarray(ids)
        inside = (ids >= 0) & (ids < self.vocab_size)
        return np.where(inside, self._value_of[np.where(inside, ids, 0)], 0)

    def type_mask(self, name: str) -> np.ndarray:
        """Boolean mask over the vocabulary of one token type ('NOTE_ON', 'TIME_SHIFT', ...)."""
        if name not in self.ranges:
            raise KeyError(f"unknown token type {name!r}; known: {', '.join(self.ranges)}")
        first, count = self.ranges[name]
        mask = np.zeros(self.vocab_size, bool)
        mask[first:first + count] = True
        return mask

    def token_name(self, token: int) -> str:
        """Human-readable name of one id, e.g. 'NOTE_ON_60', 'TIME_SHIFT_25', 'VELOCITY_19'."""
        kind = int(self.token_type(token))
        if kind < 0:
            return f"UNKNOWN_{token}"
        name, value = self.type_names[kind], int(self.token_value(token))
        if name == "CONTROL":
            return "CONTROL_{}={}".format(*self._control_of[value])
        if name == "INFILL":
            return ("INFILL_SUFFIX", "INFILL_PREFIX")[value]
        if name == "GAP":
            return f"GAP_{value * self.GAP_STEP:g}s"
        return name if name in self.SPECIALS else f"{name}_{value}"

    def grammar(self, canonical: bool = False) -> GrammarState:
        """A fresh GrammarState for this tokenizer (which tokens may come next)."""
        return GrammarState(self, canonical=canonical)

    # ---- encoding -----------------------------------------------------------------------------
    def encode(self, source, **read_kwargs) -> Encoding:
        """Notes, or a MIDI path/bytes (read with musicgpt.music.midi.read_midi), -> Encoding."""
        if not isinstance(source, Notes):
            from musicgpt.music.midi import read_midi

            source = read_midi(source, **read_kwargs)
        return self._encode(source)

    def _encode(self, notes: Notes) -> Encoding:
        from musicgpt.music.midi import resolve_same_pitch, sort_by_onset

        if len(notes) == 0:
            empty = np.zeros(0, np.int64)
            return Encoding(empty, empty.copy(), Notes.empty(), empty.copy())
        step = self.time_step
        s = np.rint(notes.start / step).astype(np.int64)
        e = np.rint(notes.end / step).astype(np.int64)
        np.maximum(s, 0, out=s)
        p = notes.pitch.astype(np.int64)
        if p.min() < 0 or p.max() > 127:
            raise ValueError("note pitches must lie in 0..127")
        vb = self.velocity_to_bin(notes.velocity)
        np.maximum(e, s + 1, out=e)  # at least one step
        src = sort_by_onset(s, p)  # rounding can reorder pitches within a step
        if src is not None:
            s, e, p, vb = s[src], e[src], p[src], vb[src]
        # Same pitch: merge onsets in one step, cut a sounding note at the next onset.
        s, e, p, vb, kept = resolve_same_pitch(s, e, p, vb)
        src = kept if src is None else src[kept]
        m = len(s)

        # Events by (time, NOTE_OFF before NOTE_ON, pitch), packed with the note index into one int64
        # key each; NOTE_ONs are already in order, so the sort merges two runs (timsort).
        if m >= 1 << 24:
            raise ValueError(f"too many notes in one sequence ({m})")
        note = np.arange(m)
        ev = np.concatenate((((e * 256 + p) << 24) | note, ((s * 256 + 128 + p) << 24) | note))
        ev.sort(kind="stable")
        ev_note = ev & 0xFFFFFF
        code = ev >> 24
        ev_time = code >> 8
        is_on = (code >> 7) & 1
        ev_token = (code & 127) + self._off0 - is_on * (self._off0 - self._on0)

        vel_needed = np.empty(m, np.int64)  # per NOTE_ON in time order: the bin changes
        vel_needed[0] = 1
        np.not_equal(vb[1:], vb[:-1], out=vel_needed[1:])
        ev_vel = vel_needed[ev_note] & is_on

        # Token layout: each event is preceded by its TIME_SHIFTs (and VELOCITY for a NOTE_ON).
        M = self.max_shift_steps
        gaps = ev_time.copy()
        gaps[1:] -= ev_time[:-1]
        if gaps.max() > M:
            n_shift = (gaps + M - 1) // M
        else:
            n_shift = (gaps > 0).astype(np.int64)
        count = n_shift + ev_vel
        count += 1
        pos = np.cumsum(count)
        pos -= 1  # (2m,) position of each event token
        total = int(pos[-1]) + 1
        # Writes in this order need no masks: a slot written for an event that has no VELOCITY
        # or no TIME_SHIFT belongs to the previous event and is overwritten by the last write.
        ids = np.full(total, self._shift0 + M - 1, np.int64)  # full TIME_SHIFTs by default
        ids[pos - 1] = self._vel0 + vb[ev_note]
        ids[pos - ev_vel - 1] = self._shift0 - 1 + gaps - (n_shift - 1) * M  # last shift: the remainder
        ids[pos] = ev_token
        note_index = np.full(total, -1, np.int64)
        note_index[pos - 1] = np.where(ev_vel, ev_note, -1)
        note_index[pos] = ev_note
        return Encoding(ids, note_index, source_index=src, make_notes=(s, e, p, vb, self))

    # ---- decoding -----------------------------------------------------------------------------
    def decode_with_index(self, ids) -> tuple[Notes, np.ndarray]:
        """Token ids -> (Notes, note_index per token into those notes, -1 where none)."""
        ids = np.asarray(ids).reshape(-1).astype(np.int64)
        if self.infill and (ids == self.suffix_id).any():
            from musicgpt.tokens.infill import decode_with_suffix

            return decode_with_suffix(self, ids)
        return self._decode(ids)

    def _decode(self, ids: np.ndarray) -> tuple[Notes, np.ndarray]:
        """decode_with_index of one timeline (a suffix block's tokens are read as plain music)."""
        note_index = np.full(len(ids), -1, np.int64)
        eos = np.flatnonzero(ids == self.eos_id)
        length = int(eos[0]) if len(eos) else len(ids)
        kind = self.token_type(ids[:length])
        value = self.token_value(ids[:length])
        is_on = kind == self.type_names.index("NOTE_ON")
        is_off = kind == self.type_names.index("NOTE_OFF")
        is_shift = kind == self.type_names.index("TIME_SHIFT")
        is_vel = kind == self.type_names.index("VELOCITY")
        steps = np.where(is_shift, value, 0)
        time = np.cumsum(steps) - steps  # (T,) steps elapsed before each token
        final_time = int(steps.sum())

        positions = np.flatnonzero(is_on | is_off)
        if not len(positions):
            return Notes.empty(), note_index
        pitch = value[positions]
        order = np.lexsort((positions, pitch))  # by pitch, then sequence order
        pos, pit, on = positions[order], pitch[order], is_on[positions[order]]
        t = time[pos]
        has_next = np.r_[pit[1:] == pit[:-1], False]
        nxt = np.minimum(np.arange(len(pos)) + 1, len(pos) - 1)
        closed_by_off = on & has_next & ~on[nxt]
        end = np.where(has_next, t[nxt], -1)
        unclosed = on & ~has_next
        max_open = max(1, int(round(self.max_unclosed_duration / self.time_step)))
        end = np.where(unclosed, np.maximum(np.minimum(final_time, t + max_open), t + 1), end)
        keep = on & (end > t)

        # Velocity: the last VELOCITY token before each NOTE_ON.
        last_vel = np.maximum.accumulate(np.where(is_vel, np.arange(length), -1)) if length else np.zeros(0, np.int64)
        kept_pos = pos[keep]
        vel_pos = last_vel[kept_pos]
        velocity = np.where(vel_pos >= 0, self.bin_to_velocity(value[np.maximum(vel_pos, 0)]), self.default_velocity)

        start_steps, end_steps, pitches = t[keep], end[keep], pit[keep]
        final = np.lexsort((pitches, start_steps))
        notes = Notes(start_steps[final] * self.time_step, end_steps[final] * self.time_step,
                      pitches[final].astype(np.int32), velocity[final].astype(np.int32))

        rank = np.empty(len(final), np.int64)
        rank[final] = np.arange(len(final))
        note_index[kept_pos] = rank
        off_pos = pos[nxt][keep & closed_by_off]
        note_index[off_pos] = rank[(closed_by_off[keep])]
        # A VELOCITY token belongs to the note whose NOTE_ON follows it directly.
        vel_at = np.flatnonzero(is_vel[: length - 1] & is_on[1:length]) if length > 1 else np.zeros(0, np.int64)
        note_index[vel_at] = note_index[vel_at + 1]
        return notes, note_index

    # ---- persistence --------------------------------------------------------------------------
    def params(self) -> dict:
        """The constructor arguments."""
        params = {"time_step": self.time_step, "max_shift_steps": self.max_shift_steps,
                  "velocity_bins": self.velocity_bins, "max_unclosed_duration": self.max_unclosed_duration}
        if self.controls:  # only when used: a plain tokenizer's JSON and fingerprint stay what they were
            params["controls"] = {name: list(values) for name, values in self.controls.items()}
        if self.infill:
            params["infill"] = True
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" if k != "controls" else f"controls={list(v)}" for k, v in self.params().items())
        return f"PerformanceTokenizer({args}; vocab_size={self.vocab_size})"

    def layout(self) -> str:
        """The vocabulary layout as a printable table."""
        unit = f"{self.time_step * 1000:g} ms"
        meaning = {"PAD": "padding", "BOS": "begin of sequence", "EOS": "end of sequence",
                   "NOTE_ON": "pitch 0..127 starts", "NOTE_OFF": "pitch 0..127 ends",
                   "TIME_SHIFT": f"advance 1..{self.max_shift_steps} steps of {unit}",
                   "VELOCITY": f"bin 0..{self.velocity_bins - 1} ({self.velocity_bin_size} velocities per bin)",
                   "CONTROL": "; ".join(f"{n}: {', '.join(v)}" for n, v in self.controls.items()),
                   "INFILL": "INFILL_SUFFIX opens the suffix block, INFILL_PREFIX closes it",
                   "GAP": f"the gap to fill: {self.GAP_STEP:g}..{self.GAP_BINS * self.GAP_STEP:g} s in "
                          f"{self.GAP_STEP:g} s bins"}
        lines = [repr(self), "", f"{'type':<11} {'ids':>11} {'count':>6}  meaning"]
        for name, (first, count) in self.ranges.items():
            ids = f"{first}" if count == 1 else f"{first}..{first + count - 1}"
            lines.append(f"{name:<11} {ids:>11} {count:>6}  {meaning[name]}")
        lines += ["", f"vocab_size {self.vocab_size}",
                  "order within a time step: NOTE_OFFs (ascending pitch), then NOTE_ONs (ascending pitch),",
                  "each NOTE_ON preceded by VELOCITY when its bin differs from the previous NOTE_ON's"]
        if self.controls:
            lines.append("a sequence opens with its CONTROL tokens (names in the order above, each at most once), then BOS")
        if self.infill:
            lines.append("infilling: [CONTROL*] INFILL_SUFFIX suffix INFILL_PREFIX [BOS] prefix GAP middle")
        return "\n".join(lines)

