"""miditok's MIDILike, REMI and TSD behind the `Tokenizer` interface (encode / decode / save; no grammar).

miditok counts time in beats and ignores the tempo when it encodes, so a file at 100 qpm (or with
a tempo map) comes back with its notes in the wrong place. Here miditok never sees the file:
`read_midi` turns it into notes in seconds (tempo map and pedal honoured), the notes are re-timed
onto a fixed grid of `seconds_per_beat` (default 0.5 s: 120 qpm), and that score is what miditok
encodes. Decoding reverses the grid, so times stay in seconds. The timing resolution is
seconds_per_beat / (highest beat_res), 62.5 ms with miditok's default beat_res; raise beat_res
for finer timing.

`Encoding.note_index` follows miditok's token order: a note's pitch token (NoteOn / Pitch) and the
Velocity and Duration tokens right after it belong to it; a MIDILike NoteOff belongs to the
earliest open note of its pitch; everything else is -1. Decoding skips ids outside the vocabulary;
a sequence miditok cannot decode gives no notes.
"""

from __future__ import annotations

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.music.notes import Notes
from musicgpt.tokens.base import Encoding, Tokenizer

SCHEMES = ("MIDILike", "REMI", "TSD")
DEFAULT_BEAT_RES = ((0, 4, 8), (4, 12, 4))
ONSET_TYPES = ("NoteOn", "Pitch")
ATTACHED_TYPES = ("Velocity", "Duration")


class MiditokTokenizer(Tokenizer):
    """A miditok tokenizer (MIDILike, REMI or TSD) fed notes re-timed in seconds."""

    type = "miditok"

    def __init__(self, scheme: str = "MIDILike", seconds_per_beat: float = 0.5,
                 beat_res=DEFAULT_BEAT_RES, num_velocities: int = 32, pitch_range=(21, 109)) -> None:
        import miditok

        if scheme not in SCHEMES:
            raise ConfigError(f"miditok scheme {scheme!r}: unknown (choose from {', '.join(SCHEMES)})")
        if not seconds_per_beat > 0:
            raise ConfigError(f"miditok seconds_per_beat: must be positive, got {seconds_per_beat!r}")
        self.scheme = scheme
        self.seconds_per_beat = float(seconds_per_beat)
        self.beat_res = tuple(tuple(int(x) for x in r) for r in beat_res)
        self.num_velocities = int(num_velocities)
        self.pitch_range = tuple(int(p) for p in pitch_range)
        config = miditok.TokenizerConfig(
            pitch_range=self.pitch_range, beat_res={(a, b): r for a, b, r in self.beat_res},
            num_velocities=self.num_velocities, special_tokens=["PAD", "BOS", "EOS"],
            use_time_signatures=False, use_tempos=False, use_programs=False,
        )
        self._tok = getattr(miditok, scheme)(config)
        self.vocab_size = len(self._tok)
        self._names = [""] * self.vocab_size
        for name, index in self._tok.vocab.items():
            self._names[index] = name
        self.type_names = tuple(dict.fromkeys(n.split("_", 1)[0] for n in self._names))
        self._type_of = np.array([self.type_names.index(n.split("_", 1)[0]) for n in self._names], np.int8)
        self.pad_id = self._tok.vocab["PAD_None"]
        self.bos_id = self._tok.vocab["BOS_None"]
        self.eos_id = self._tok.vocab["EOS_None"]
        self.ticks_per_beat = int(self._tok.time_division)

    # ---- vocabulary ---------------------------------------------------------------------------
    def token_name(self, token: int) -> str:
        """miditok's name of one id, e.g. 'NoteOn_60'."""
        return self._names[token] if 0 <= token < self.vocab_size else f"UNKNOWN_{token}"

    def token_type(self, ids) -> np.ndarray:
        """Type code per id (index into `type_names`); -1 outside the vocabulary."""
        ids = np.asarray(ids)
        inside = (ids >= 0) & (ids < self.vocab_size)
        return np.where(inside, self._type_of[np.where(inside, ids, 0)], -1).astype(np.int8)

    # ---- encoding -----------------------------------------------------------------------------
    def _score(self, notes: Notes):
        from symusic import Score, Tempo, Track

        scale = self.ticks_per_beat / self.seconds_per_beat
        start = np.rint(np.maximum(notes.start, 0) * scale).astype(np.int64)
        end = np.maximum(np.rint(notes.end * scale).astype(np.int64), start + 1)
        track = Track(program=0, is_drum=False)
        track.notes = track.notes.from_numpy(start.astype(np.int32), (end - start).astype(np.int32),
                                             notes.pitch.astype(np.int8), notes.velocity.astype(np.int8))
        score = Score(self.ticks_per_beat)
        score.tempos.append(Tempo(0, qpm=60.0 / self.seconds_per_beat))
        score.tracks.append(track)
        return score

    def encode(self, source, **read_kwargs) -> Encoding:
        """Notes, or a MIDI path/bytes (read with musicgpt.music.midi.read_midi), -> Encoding."""
        if not isinstance(source, Notes):
            from musicgpt.music.midi import read_midi

            source = read_midi(source, **read_kwargs)
        low, high = self.pitch_range
        keep = (source.pitch >= low) & (source.pitch < high)
        notes = source[keep]
        if not len(notes):
            empty = np.zeros(0, np.int64)
            return Encoding(empty, empty.copy(), Notes.empty(), empty.copy())
        sequence = self._tok.encode(self._score(notes))
        sequence = sequence[0] if isinstance(sequence, list) else sequence
        ids = np.asarray(sequence.ids, np.int64)
        decoded, index = self.decode_with_index(ids)
        # Source of each decoded note: the kept notes in (grid onset, pitch) order, when counts agree.
        onset = np.rint(np.maximum(notes.start, 0) * self.ticks_per_beat / self.seconds_per_beat)
        order = np.lexsort((notes.pitch, onset))
        source = np.flatnonzero(keep)[order] if len(order) == len(decoded) else np.full(len(decoded), -1)
        return Encoding(ids, index, decoded, source.astype(np.int64))

    # ---- decoding -----------------------------------------------------------------------------
    def decode_with_index(self, ids) -> tuple[Notes, np.ndarray]:
        """Token ids -> (Notes, note_index per token into those notes, -1 where none)."""
        ids = np.asarray(ids).reshape(-1).astype(np.int64)
        valid = ids[(ids >= 0) & (ids < self.vocab_size)]
        try:
            score = self._tok.decode([valid.tolist()])
            tracks = [t for t in score.tracks if t.note_num()]
        except Exception:  # miditok raises on some malformed sequences; decoding stays total
            tracks = []
        if not tracks:
            return Notes.empty(), np.full(len(ids), -1, np.int64)
        raw = tracks[0].notes.numpy()
        scale = self.seconds_per_beat / score.ticks_per_quarter
        start = raw["time"].astype(np.float64) * scale
        notes = Notes.from_unsorted(start, start + raw["duration"] * scale, raw["pitch"], raw["velocity"])
        return notes, self._note_index(ids, notes)

    def _note_index(self, ids: np.ndarray, notes: Notes) -> np.ndarray:
        """k-th onset token of pitch p -> k-th note of pitch p; attached tokens and NoteOffs follow."""
        by_pitch: dict[int, list[int]] = {}
        for rank, pitch in enumerate(notes.pitch.tolist()):  # notes are sorted by start
            by_pitch.setdefault(pitch, []).append(rank)
        taken: dict[int, int] = {}
        open_notes: dict[int, list[int]] = {}
        index = np.full(len(ids), -1, np.int64)
        current = -1
        for i, token in enumerate(ids.tolist()):
            name = self.token_name(token)
            kind, _, value = name.partition("_")
            if kind in ONSET_TYPES:
                pitch = int(value)
                k = taken.get(pitch, 0)
                ranks = by_pitch.get(pitch, [])
                current = ranks[k] if k < len(ranks) else -1
                taken[pitch] = k + 1
                if current >= 0:
                    open_notes.setdefault(pitch, []).append(current)
                index[i] = current
            elif kind in ATTACHED_TYPES:
                index[i] = current
            elif kind == "NoteOff":
                queue = open_notes.get(int(value), [])
                index[i] = queue.pop(0) if queue else -1
                current = -1
            else:
                current = -1
        return index

    # ---- persistence --------------------------------------------------------------------------
    def params(self) -> dict:
        """The constructor arguments (JSON-ready)."""
        return {"scheme": self.scheme, "seconds_per_beat": self.seconds_per_beat,
                "beat_res": [list(r) for r in self.beat_res], "num_velocities": self.num_velocities,
                "pitch_range": list(self.pitch_range)}

    def __repr__(self) -> str:
        return f"MiditokTokenizer({self.scheme}, seconds_per_beat={self.seconds_per_beat}; vocab_size={self.vocab_size})"


def miditok_tokenizer(scheme: str, **kwargs) -> MiditokTokenizer:
    """MIDILike, REMI or TSD by name."""
    return MiditokTokenizer(scheme, **kwargs)
