"""Which class reads a tokenizer.json: the registry of tokenizer types (no torch)."""

from __future__ import annotations

import os
from typing import Any

from musicgpt.errors import ConfigError
from musicgpt.tokens.base import Tokenizer, read_tokenizer_json
from musicgpt.tokens.miditok import MiditokTokenizer
from musicgpt.tokens.performance import PerformanceTokenizer

__all__ = ["TOKENIZER_TYPES", "tokenizer_from_dict", "load_tokenizer", "tokenizer_of"]

TOKENIZER_TYPES = ("performance", "miditok")


def tokenizer_from_dict(data: dict, source: str = "tokenizer") -> Tokenizer:
    """Build the tokenizer a to_dict() output describes, dispatching on its 'type'."""
    kind = data.get("type")
    if kind == PerformanceTokenizer.type:
        return PerformanceTokenizer.from_dict(data, source)
    if kind == MiditokTokenizer.type:
        return MiditokTokenizer.from_dict(data, source)
    raise ConfigError(f"{source}: unknown tokenizer type {kind!r} (known: {', '.join(TOKENIZER_TYPES)})")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load tokenizer.json (or a directory holding it), whatever its type."""
    data, source = read_tokenizer_json(path)
    return tokenizer_from_dict(data, source)


def tokenizer_of(model: Any) -> Tokenizer:
    """The tokenizer a model carries (a loaded model: its checkpoint's), else the plain `PerformanceTokenizer`
    (a model built from a config, or a checkpoint saved without tokenizer.json)."""
    return getattr(model, "tokenizer", None) or PerformanceTokenizer()
