"""Reading a JSON document whose failures name the file: missing, unreadable, or not JSON (with line and column)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from musicgpt.errors import MusicGPTError

__all__ = ["read_json"]


def read_json(path: str | os.PathLike, error: type[MusicGPTError]) -> Any:
    """The parsed JSON of `path`; any failure raises `error` with the path and the reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
