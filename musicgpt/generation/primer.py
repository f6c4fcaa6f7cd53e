"""Primers: the music a generation continues, from MIDI, MusicXML, ABC, notes or token ids, cut to length.

Files are read by `musicgpt.music.scores.read_notes` (MIDI directly; MusicXML and ABC through
music21). A primer is cut either to its first
S seconds (the token sequence up to the first event at or after S seconds: notes still sounding
there stay open and the model decides when they end) or to its first N tokens. A trailing VELOCITY
(its NOTE_ON cut off) is dropped, so a primer never ends mid-event.
"""

from __future__ import annotations

import os

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.music.notes import Notes
from musicgpt.music.scores import read_notes
from musicgpt.tokens.base import PerformanceEvents

def primer_ids(source, tokenizer, *, seconds: float | None = None, tokens: int | None = None) -> np.ndarray:
    """Token ids (no BOS) of a primer: a file path, a `Notes` table or token ids; cut to `seconds` or `tokens`."""
    if seconds is not None and tokens is not None:
        raise ConfigError("primer: give the primer length in seconds or in tokens, not both")
    if seconds is not None and not seconds >= 0:
        raise ConfigError(f"primer seconds: must be >= 0, got {seconds!r}")
    if tokens is not None and (int(tokens) != tokens or tokens < 0):
        raise ConfigError(f"primer tokens: must be an integer >= 0, got {tokens!r}")
    if source is None:
        return np.zeros(0, np.int64)
    if isinstance(source, (str, os.PathLike)):
        source = read_notes(source)
    if isinstance(source, Notes):
        ids = np.asarray(tokenizer.encode(source).ids, np.int64)
    else:
        ids = np.asarray(source, np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
            raise ConfigError(f"primer ids: must lie in 0..{tokenizer.vocab_size - 1}")
        ids = ids[1:] if len(ids) and ids[0] == tokenizer.bos_id else ids
    if seconds is not None:
        ids = ids[: _tokens_before(ids, tokenizer, seconds)]
    if tokens is not None:
        ids = ids[: int(tokens)]
    velocity = tokenizer.type_names.index("VELOCITY") if "VELOCITY" in tokenizer.type_names else -2
    if len(ids) and int(tokenizer.token_type(ids[-1])) == velocity:
        ids = ids[:-1]
    return ids


def _tokens_before(ids: np.ndarray, tokenizer, seconds: float) -> int:
    """How many leading tokens describe events before `seconds` (needs a performance tokenizer)."""
    if not isinstance(tokenizer, PerformanceEvents):
        raise ConfigError("primer seconds: this tokenizer has no TIME_SHIFT; cut the primer in tokens instead")
    kinds = tokenizer.token_type(ids)
    steps = np.where(kinds == tokenizer.type_names.index("TIME_SHIFT"), tokenizer.token_value(ids), 0)
    time_after = np.cumsum(steps) * tokenizer.time_step  # clock after each token
    return int(np.searchsorted(time_after, seconds - 1e-9, side="left"))  # the TIME_SHIFT reaching `seconds`
