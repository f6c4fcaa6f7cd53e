"""A prepared corpus on disk: the files `musicgpt prepare` writes and training reads (no torch).

    OUT/manifest.json        recipe, ratios, tokenizer, per-split totals, every source (path relative to
                             the corpus folder, sha256, split, group, doc index, n_notes, n_tokens) and
                             every skipped file with its reason
    OUT/tokenizer.json       the tokenizer that made the shards
    OUT/<split>.tokens.bin   uint16 little-endian, the split's documents back to back, no separators
    OUT/<split>.offsets.npy  int64, n_docs + 1 boundaries into <split>.tokens.bin

Splits are `train`, `valid` and `test`. Documents carry no BOS/EOS (the training data loader adds
them). `open_split` memory-maps one split as a `Split`.

A prepared folder is one unit: `prepare` writes every file to a temporary name first and renames
them all at the end, the manifest last, and the manifest records each shard's size and sha256
(`"shards"`). `verify` checks the files against it, so a folder whose shards and manifest disagree
(a run killed between renames, two runs at once) is refused instead of trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgpt.corpus.recipes import SPLITS
from musicgpt.errors import DatasetError

__all__ = ["Split", "open_split", "load_split", "write_split", "read_manifest", "verify", "FORMAT", "VERSION",
           "MANIFEST", "TOKEN_DTYPE"]

FORMAT = "musicgpt-prepared"
VERSION = 1
MANIFEST = "manifest.json"
TOKEN_DTYPE = np.dtype("<u2")


@dataclass(frozen=True)
class Split:
    """One split of a prepared corpus: every document's tokens back to back, and their boundaries."""

    tokens: np.ndarray  # (n_tokens,) uint16, usually a read-only memory map
    offsets: np.ndarray  # (n_docs + 1,) int64

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1] - self.offsets[0])

    def doc(self, i: int) -> np.ndarray:
        """The tokens of document `i` (a view, no copy)."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def open_split(data_dir: str | os.PathLike, split: str) -> Split:
    """The memory-mapped split of a `musicgpt prepare` directory."""
    tokens, offsets = load_split(data_dir, split)
    return Split(tokens, np.asarray(offsets, dtype=np.int64))


def load_split(out_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens: read-only uint16 memmap, offsets: int64 n_docs + 1) of one split of a prepared folder."""
    out_dir = Path(out_dir)
    if split not in SPLITS:
        raise DatasetError(f"split {split!r}: unknown (known: {', '.join(SPLITS)})")
    tokens_path, offsets_path = out_dir / f"{split}.tokens.bin", out_dir / f"{split}.offsets.npy"
    if not tokens_path.is_file() or not offsets_path.is_file():
        raise DatasetError(f"{out_dir}: no prepared '{split}' split (run `musicgpt prepare SOURCE --out {out_dir}`)")
    try:
        offsets = np.load(offsets_path, allow_pickle=False).astype(np.int64)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{offsets_path}: unreadable ({exc})") from None
    size = tokens_path.stat().st_size
    if size % TOKEN_DTYPE.itemsize:
        raise DatasetError(f"{tokens_path}: size {size} is not a whole number of uint16 tokens")
    n_tokens = size // TOKEN_DTYPE.itemsize
    if offsets.ndim != 1 or not len(offsets) or offsets[0] != 0 or offsets[-1] != n_tokens or (np.diff(offsets) < 0).any():
        raise DatasetError(f"{offsets_path}: offsets do not describe {tokens_path.name} ({n_tokens} tokens)")
    tokens = np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r") if n_tokens else np.zeros(0, TOKEN_DTYPE)
    return tokens, offsets


def read_manifest(out_dir: str | os.PathLike) -> dict:
    """The manifest.json of a prepared folder."""
    path = Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{out_dir}: no {MANIFEST} (not a `musicgpt prepare` output)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} manifest")
    return manifest


def write_split(group, out_dir: Path, split: str, pieces: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    """Write one split's documents (token arrays, in order) into an `atomic_files` group.

    Returns (offsets, the shard record for the manifest: each file's size in bytes and sha256).
    """
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate(pieces).astype(TOKEN_DTYPE) if pieces else np.zeros(0, TOKEN_DTYPE)
    record = {}
    for suffix, write in ((".tokens.bin", tokens.tofile), (".offsets.npy", lambda tmp: _save_npy(tmp, offsets))):
        def written(tmp: Path, write=write, suffix=suffix) -> None:
            write(tmp)
            record[split + suffix] = {"bytes": tmp.stat().st_size, "sha256": _file_sha256(tmp)}
        group.write(out_dir / f"{split}{suffix}", written)
    return offsets, record


def verify(out_dir: str | os.PathLike, manifest: dict | None = None) -> bool:
    """Check every shard against the sizes and sha256 the manifest records; DatasetError on a mismatch.

    Returns False when the manifest records none (a folder prepared before they were recorded).
    """
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir) if manifest is None else manifest
    shards = manifest.get("shards")
    if not shards:
        return False
    for name, expected in sorted(shards.items()):
        path = out_dir / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing, but {MANIFEST} lists it; run `musicgpt prepare` into "
                               f"{out_dir} again")
        size = path.stat().st_size
        if size != expected["bytes"] or _file_sha256(path) != expected["sha256"]:
            raise DatasetError(f"{path}: does not match {MANIFEST} ({size} bytes, {expected['bytes']} recorded; or "
                               "another checksum): a prepare was interrupted or two ran at once; run `musicgpt "
                               f"prepare` into {out_dir} again")
    return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append .npy to the temporary name
        np.save(handle, array)
