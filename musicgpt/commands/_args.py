"""Values several commands take, checked where they enter: a positive count (argparse's `type=`), and an output
folder made ready before the work that fills it (a MusicGPTError naming the flag, not an OSError's traceback)."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (CPU threads, say)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def output_folder(path: str | Path, flag: str = "--out") -> Path:
    """`path` as a folder that exists (made with its parents if need be), or a WriteError saying why it cannot be."""
    from musicgpt._io import ensure_folder

    return ensure_folder(path, f"{flag} {path}")
