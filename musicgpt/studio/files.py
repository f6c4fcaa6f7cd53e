"""The files a studio server wrote (takes' MIDI, arcs.json, viewer pages, WAV; uploaded primers), by opaque id.

Everything lives in one temporary folder per server, removed when it stops. A file is served only through
the id this store handed out (`/files/{id}/{name}`): the id is a lookup key, never part of a path, and the
name must be the one the store gave the file, so no request can name another file on the disk. A file
may be made lazily: whoever asks first (the worker after a take, or a download) runs its maker, once.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MEDIA_TYPES = {".mid": "audio/midi", ".json": "application/json", ".html": "text/html; charset=utf-8",
               ".wav": "audio/wav"}


@dataclass
class StoredFile:
    """One file of the store: its download name, where it lies, and how to make it if it is not there yet."""

    name: str
    path: Path
    make: Callable[[Path], object] | None  # writes `path` (atomically); None once made
    error: str | None = None  # why making it failed, kept for every later request
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def media_type(self) -> str:
        """The Content-Type it is served with (by its suffix)."""
        return MEDIA_TYPES.get(Path(self.name).suffix, "application/octet-stream")

    def ensure(self) -> Path:
        """The file's path, made first if needed (blocks while another thread makes it); OSError if it failed."""
        with self._lock:
            if self.make is not None and self.error is None:
                try:
                    self.make(self.path)
                except Exception as exc:  # kept: every later request gets the same answer
                    self.error = f"{self.name}: {exc}"
                self.make = None  # frees what the maker held (an arcs document can be tens of MB)
        if self.error is not None:
            raise OSError(self.error)
        return self.path


class FileStore:
    """A temporary folder and the files in it, each under a random id."""

    def __init__(self, prefix: str = "musicgpt-studio-"):
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self._files: dict[str, StoredFile] = {}
        self._lock = threading.Lock()

    def add(self, name: str, make: Callable[[Path], object] | None = None) -> tuple[str, StoredFile]:
        """Register a file called `name` (made now or later by `make`); returns its id and entry."""
        file_id = secrets.token_urlsafe(12)
        entry = StoredFile(name, self.root / f"{file_id}{Path(name).suffix}", make)
        with self._lock:
            self._files[file_id] = entry
        return file_id, entry

    def scratch(self, suffix: str) -> Path:
        """A fresh path in the store's folder, served to nobody (uploaded primers)."""
        return self.root / f"upload-{secrets.token_hex(8)}{suffix}"

    def get(self, file_id: str, name: str) -> StoredFile | None:
        """The file with this id, if `name` is its name too."""
        with self._lock:
            entry = self._files.get(file_id)
        return entry if entry is not None and entry.name == name else None

    def url(self, file_id: str) -> str:
        """The URL path that serves a file."""
        return f"/files/{file_id}/{self._files[file_id].name}"

    def close(self) -> None:
        """Remove the folder and everything in it."""
        with self._lock:
            self._files.clear()
        shutil.rmtree(self.root, ignore_errors=True)
