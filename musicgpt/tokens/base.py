"""What a tokenizer is: the `Tokenizer` interface every tokenizer implements, its optional capabilities, and
the `Encoding` it returns; tokenizer.json persistence (no torch).

Every tokenizer (`Tokenizer`):
- turns notes (or a MIDI file) into token ids, `encode(...) -> Encoding`, and ids back into notes,
  `decode(ids)` / `decode_with_index(ids)` (total: any id sequence decodes);
- names its vocabulary: `vocab_size`, `pad_id` / `bos_id` / `eos_id`, `type_names` and
  `token_type(ids)` (a type code per id, -1 outside), `token_name(id)`, `type_masks()`;
- describes itself: `type`, `params()`, `to_dict()` / `from_dict()`, `save()` / `load()`,
  `fingerprint()`; two tokenizers with equal `to_dict()` encode identically (and compare equal).

Optional capabilities, declared here so that callers ask instead of probing attributes:
- `grammar()`: the state machine of which token may come next (`musicgpt.tokens.grammar`), or
  None when the tokenizer has none (the miditok ones); samplers then use only the generic rule.
- `PerformanceEvents`: tokenizers whose vocabulary is the performance-event one, NOTE_ON /
  NOTE_OFF per pitch, TIME_SHIFT steps and VELOCITY bins in contiguous `ranges`. Whatever needs
  to know what a token means musically asks `isinstance(tokenizer, PerformanceEvents)`: the
  generation clock (`seconds_per_id`), cutting primers in seconds, the long-note limit,
  augmentation, attention arcs and embedding plots.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from musicgpt._io import atomic_write_text
from musicgpt.errors import ConfigError
from musicgpt.music.notes import Notes

__all__ = ["Tokenizer", "PerformanceEvents", "Grammar", "Encoding", "TOKENIZER_FILE", "read_tokenizer_json"]

TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1


class Encoding:
    """Token ids and, for every token, the index of its note in `notes` (-1: no note)."""

    __slots__ = ("ids", "note_index", "source_index", "_notes", "_make_notes")

    def __init__(self, ids: np.ndarray, note_index: np.ndarray, notes: Notes | None = None,
                 source_index: np.ndarray | None = None, make_notes=None) -> None:
        self.ids = ids  # (T,) int64
        self.note_index = note_index  # (T,) int64
        self.source_index = np.zeros(0, np.int64) if source_index is None else source_index  # (N,) into the input
        self._notes = notes
        self._make_notes = make_notes  # built on first use: the hot path (prepare) needs only the ids

    @property
    def notes(self) -> Notes:
        """The quantized notes the ids stand for, sorted by (start, pitch)."""
        if self._notes is None:
            if self._make_notes is None:
                self._notes = Notes.empty()
            else:
                s, e, p, vb, tok = self._make_notes
                self._notes = Notes(s * tok.time_step, e * tok.time_step, p.astype(np.int32),
                                    tok.bin_to_velocity(vb).astype(np.int32))
                self._make_notes = None
        return self._notes

    @property
    def n_notes(self) -> int:
        """Number of encoded notes (without building `notes`)."""
        return len(self.source_index) if self._notes is None else len(self._notes)

    def __len__(self) -> int:
        return len(self.ids)


class Grammar(Protocol):
    """What `Tokenizer.grammar()` returns: which tokens may come next (`musicgpt.tokens.grammar.GrammarState` is one).

    Declared here so that the interface names no grammar module: grammar.py reads `PerformanceEvents` from this
    one, and an import back, even for type checking only, would close a cycle.
    """

    def push(self, token: int) -> None:
        """Advance by one token."""

    def feed(self, ids) -> "Grammar":
        """Advance by every token of `ids`; returns itself."""

    def allowed(self) -> np.ndarray:
        """(vocab_size,) bool: the tokens that may come next."""

    def accepts(self, ids) -> bool:
        """Whether every token of `ids` is allowed after the ones before it."""


class Tokenizer(ABC):
    """The interface of every tokenizer (see the module docstring); subclasses set `type` and the vocabulary."""

    type: ClassVar[str] = ""
    version: ClassVar[int] = FORMAT_VERSION
    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    type_names: tuple[str, ...]  # token_type codes index this

    # ---- what every tokenizer must do -----------------------------------------------------------
    @abstractmethod
    def encode(self, source: Any, **read_kwargs: Any) -> Encoding:
        """Notes, or a MIDI path/bytes (read with musicgpt.music.midi.read_midi), -> Encoding."""

    @abstractmethod
    def decode_with_index(self, ids) -> tuple[Notes, np.ndarray]:
        """Token ids -> (Notes, note_index per token into those notes, -1 where none); total on any ids."""

    @abstractmethod
    def token_type(self, ids) -> np.ndarray:
        """Type code per id: an index into `type_names`; -1 outside the vocabulary."""

    @abstractmethod
    def token_name(self, token: int) -> str:
        """Human-readable name of one id."""

    @abstractmethod
    def params(self) -> dict:
        """The constructor arguments (JSON-ready)."""

    # ---- shared behaviour -----------------------------------------------------------------------
    def decode(self, ids) -> Notes:
        """Token ids -> Notes."""
        return self.decode_with_index(ids)[0]

    def type_masks(self) -> dict[str, np.ndarray]:
        """{type name: boolean mask over the vocabulary} for every token type."""
        kinds = self.token_type(np.arange(self.vocab_size))
        return {name: kinds == k for k, name in enumerate(self.type_names)}

    # ---- optional capabilities ------------------------------------------------------------------
    def grammar(self, canonical: bool = False) -> Grammar | None:
        """A fresh state machine of which tokens may come next, or None: this tokenizer declares no grammar."""
        return None

    # ---- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description: type, version, constructor arguments, vocab_size."""
        return {"type": self.type, "version": self.version, **self.params(), "vocab_size": self.vocab_size}

    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer"):
        """Inverse of to_dict; a wrong type, unknown keys or a mismatched vocab_size raise ConfigError."""
        if data.get("type", cls.type) != cls.type:
            raise ConfigError(f"{source}: type is {data.get('type')!r}, not {cls.type!r}")
        arguments = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(set(data) - arguments - {"type", "version", "vocab_size"})
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
        tokenizer = cls(**{k: v for k, v in data.items() if k in arguments})
        if "vocab_size" in data and data["vocab_size"] != tokenizer.vocab_size:
            raise ConfigError(f"{source}: vocab_size {data['vocab_size']} does not match its parameters "
                              f"({tokenizer.vocab_size})")
        return tokenizer

    def fingerprint(self) -> str:
        """A short hash of to_dict(): equal fingerprints encode identically."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json atomically (path may be the file or a directory to put it in)."""
        path = Path(path)
        if path.is_dir():
            path = path / TOKENIZER_FILE
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a tokenizer.json written by save()."""
        data, source = read_tokenizer_json(path)
        return cls.from_dict(data, source)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())


class PerformanceEvents(Tokenizer):
    """The capability of a performance-event vocabulary: NOTE_ON / NOTE_OFF per pitch 0..127, TIME_SHIFT
    of 1..max_shift_steps steps of `time_step` seconds, VELOCITY bins, each a contiguous range of ids."""

    ranges: dict[str, tuple[int, int]]  # type name -> (first id, count), PAD/BOS/EOS and the four event types
    time_step: float  # seconds per TIME_SHIFT step
    max_shift_steps: int
    velocity_bins: int

    @abstractmethod
    def token_value(self, ids) -> np.ndarray:
        """Argument per id: pitch (NOTE_ON/OFF), steps (TIME_SHIFT), bin (VELOCITY), 0 otherwise."""

    @abstractmethod
    def note_on(self, pitch):
        """NOTE_ON id(s) of pitch(es) 0..127."""

    @abstractmethod
    def note_off(self, pitch):
        """NOTE_OFF id(s) of pitch(es) 0..127."""

    @abstractmethod
    def time_shift(self, steps):
        """TIME_SHIFT id(s) of 1..max_shift_steps steps."""

    @abstractmethod
    def velocity(self, bin):
        """VELOCITY id(s) of bin(s) 0..velocity_bins-1."""

    def type_code(self, name: str) -> int:
        """The token_type code of an event type name ('NOTE_ON', 'TIME_SHIFT', ...)."""
        return self.type_names.index(name)

    def seconds_per_id(self) -> np.ndarray:
        """(vocab_size,) seconds each id moves the clock: its TIME_SHIFT, 0 for every other id."""
        ids = np.arange(self.vocab_size)
        shift = self.token_type(ids) == self.type_code("TIME_SHIFT")
        return np.where(shift, self.token_value(ids) * self.time_step, 0.0)


def read_tokenizer_json(path: str | os.PathLike) -> tuple[dict, str]:
    """(the parsed tokenizer.json, its path as text); `path` may be the file or its directory."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: tokenizer file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable tokenizer JSON ({exc})") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ConfigError(f"{path}: tokenizer JSON has no 'type' key")
    return data, str(path)
