"""What `musicgpt prepare` keeps in its output folder while it runs (no torch).

- A lock, `OUT/.prepare.lock`, holding the pid of the run that writes into OUT: a second run into the
  same folder is refused with that pid instead of interleaving its shards with the first one's. It
  is an advisory `flock`, so the kernel releases it when the holder dies, even by kill -9.
- The files tokenized so far, `OUT/.partial-<key>/<sha256>.npy` (tokens) or `.json` (the reason a
  file was skipped), each written as it arrives: a killed run's next run reuses them instead of
  tokenizing everything again. They are removed once the run has written its manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from musicgpt._io import atomic_write, atomic_write_text
from musicgpt.errors import DatasetError

__all__ = ["PrepareLock", "PartialResults", "LOCK"]

LOCK = ".prepare.lock"


class PrepareLock:
    """`with PrepareLock(out):` holds OUT for this process, or raises DatasetError naming the holder."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK
        self._handle = None

    def __enter__(self) -> "PrepareLock":
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked, as before
            return self
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DatasetError(f"{self.path.parent}: another `musicgpt prepare` (pid {holder}) is writing into it; "
                               "wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the flock; the file stays (removing it would race)
            self._handle = None


class PartialResults:
    """Per-file results of an unfinished run, keyed by content hash, for one tokenizer + reading `key`."""

    def __init__(self, out_dir: Path, key: str):
        self.dir = Path(out_dir) / f".partial-{key}"

    def load(self) -> dict[str, tuple[np.ndarray | None, int, str | None]]:
        """sha256 -> (tokens or None, n_notes, skip reason or None) of what an earlier run finished."""
        found: dict[str, tuple[np.ndarray | None, int, str | None]] = {}
        if not self.dir.is_dir():
            return found
        for meta in self.dir.glob("*.json"):
            try:
                info = json.loads(meta.read_text(encoding="utf-8"))
                tokens = None
                if info.get("reason") is None:
                    tokens = np.load(meta.with_suffix(".npy"), allow_pickle=False)
                    if len(tokens) != info["n_tokens"]:
                        continue
                found[meta.stem] = (tokens, int(info["n_notes"]), info.get("reason"))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half a result: tokenize that file again
        return found

    def add(self, sha256: str, tokens: np.ndarray | None, n_notes: int, reason: str | None) -> None:
        """Keep one file's result (the .json last: it says the .npy beside it is complete)."""
        self.dir.mkdir(exist_ok=True)
        if tokens is not None:
            atomic_write(self.dir / f"{sha256}.npy", lambda tmp: _save_npy(tmp, tokens))
        info = {"n_notes": int(n_notes), "n_tokens": 0 if tokens is None else len(tokens), "reason": reason}
        atomic_write_text(self.dir / f"{sha256}.json", json.dumps(info))

    def remove(self) -> None:
        """Forget them (the run finished)."""
        shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def remove_stale(out_dir: Path, key: str) -> None:
        """Remove partial results made with another tokenizer or reading options."""
        for other in Path(out_dir).glob(".partial-*"):
            if other.name != f".partial-{key}":
                shutil.rmtree(other, ignore_errors=True)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file object: np.save would append .npy to the temporary name
        np.save(handle, array)
