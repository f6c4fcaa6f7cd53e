"""Primers: the music a generation continues, from MIDI, MusicXML, ABC, notes or token ids, cut to length.

Files are read by `musicgpt.music.scores.read_notes` (MIDI directly; MusicXML and ABC through
music21). A primer is cut either to its first
S seconds (the token sequence up to the first event at or after S seconds: notes still sounding
there stay open and the model decides when they end) or to its first N tokens. A trailing VELOCITY
(its NOTE_ON cut off) is dropped, so a primer never ends mid-event.

With neither length given, `generate` passes `max_tokens` = the model's context less one (room
for BOS): a longer primer is cut to its first `max_tokens` tokens and a `PrimerCutWarning` says so
(a 2-hour file would otherwise be fed whole before the first new token; the model sees only the
last n_ctx tokens anyway).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.music.notes import Notes
from musicgpt.music.scores import read_notes
from musicgpt.tokens.base import PerformanceEvents


class PrimerCutWarning(UserWarning):
    """A primer was longer than the model's context and no length was given: it was cut to fit.

    Its fields say how much: `kept_tokens` of `total_tokens`, and `kept_seconds` of `total_seconds` (None
    for a tokenizer without TIME_SHIFTs). Its message names the Python arguments that choose a length;
    `describe(how)` words it for another front end (the CLI's flags, the studio's fields)."""

    def __init__(self, kept_tokens: int, total_tokens: int, kept_seconds: float | None = None,
                 total_seconds: float | None = None):
        self.kept_tokens, self.total_tokens = int(kept_tokens), int(total_tokens)
        self.kept_seconds, self.total_seconds = kept_seconds, total_seconds
        super().__init__(self.describe(PYTHON_CUT_CHOICE))

    def describe(self, how_to_choose: str) -> str:
        """'primer cut to its first N tokens (X s of Y s); pass HOW_TO_CHOOSE to choose'."""
        span = (f"{self.kept_seconds:.1f} s of {self.total_seconds:.1f} s" if self.kept_seconds is not None
                else f"of {self.total_tokens}")
        return f"primer cut to its first {self.kept_tokens} tokens ({span}); pass {how_to_choose} to choose"


def primer_ids(source, tokenizer, *, seconds: float | None = None, tokens: int | None = None,
               max_tokens: int | None = None, stacklevel: int = 2) -> np.ndarray:
    """Token ids (no BOS) of a primer: a file path, a `Notes` table or token ids; cut to `seconds` or `tokens`.

    max_tokens: when neither `seconds` nor `tokens` is given and the primer is longer, keep its first
    `max_tokens` tokens and warn (`PrimerCutWarning`, at `stacklevel` as in `warnings.warn`).
    """
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
    whole = ids
    cut = seconds is None and tokens is None and max_tokens is not None and len(ids) > max_tokens
    if cut:
        ids = ids[: int(max_tokens)]
    velocity = tokenizer.type_names.index("VELOCITY") if "VELOCITY" in tokenizer.type_names else -2
    if len(ids) and int(tokenizer.token_type(ids[-1])) == velocity:
        ids = ids[:-1]
    if cut:
        warnings.warn(_cut_warning(ids, whole, tokenizer), stacklevel=stacklevel)
    return ids


PYTHON_CUT_CHOICE = "primer_seconds or primer_tokens"  # how the Python API chooses a primer's length


def _cut_warning(kept: np.ndarray, whole: np.ndarray, tokenizer) -> PrimerCutWarning:
    """The warning for a primer `whole` cut to `kept`."""
    if isinstance(tokenizer, PerformanceEvents):
        shift = tokenizer.seconds_per_id()
        return PrimerCutWarning(len(kept), len(whole), float(shift[kept].sum()), float(shift[whole].sum()))
    return PrimerCutWarning(len(kept), len(whole))


def _tokens_before(ids: np.ndarray, tokenizer, seconds: float) -> int:
    """How many leading tokens describe events before `seconds` (needs a performance tokenizer)."""
    if not isinstance(tokenizer, PerformanceEvents):
        raise ConfigError("primer seconds: this tokenizer has no TIME_SHIFT; cut the primer in tokens instead")
    kinds = tokenizer.token_type(ids)
    steps = np.where(kinds == tokenizer.type_names.index("TIME_SHIFT"), tokenizer.token_value(ids), 0)
    time_after = np.cumsum(steps) * tokenizer.time_step  # clock after each token
    return int(np.searchsorted(time_after, seconds - 1e-9, side="left"))  # the TIME_SHIFT reaching `seconds`
