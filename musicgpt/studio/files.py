"""The files a studio server serves (takes' MIDI, arcs.json, viewer pages, WAV), by opaque id, and where they lie.

Each take has a folder of its own, `take_NN/`, in the takes folder (`musicgpt studio --takes DIR`, by default
`default_takes_dir()`; a server made without one keeps its takes in its temporary folder, removed when it
stops). A finished take's folder holds its files and `take.json` (what the take was, written atomically
last), so a restarted server lists the takes again (`listing()`, GET /api/takes). The takes folder has a
size cap: past it the oldest takes are removed first, whole, and the newest take is always kept (POLICY).
Uploaded primers go to the server's temporary folder, never to the takes folder.

A file is served only through the id this store handed out (`/files/{id}/{name}`): the id is a lookup key,
never part of a path, and the name must be the one the store gave the file, so no request can name another
file on the disk. A file may be made lazily: whoever asks first (the worker after a take, or a download)
runs its maker, once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from musicgpt._io import atomic_write_text

MEDIA_TYPES = {".mid": "audio/midi", ".json": "application/json", ".html": "text/html; charset=utf-8",
               ".wav": "audio/wav"}
DEFAULT_TAKES_LIMIT_MB = 1024.0
POLICY = ("when the takes folder passes its cap, the oldest takes are removed first (whole) until it fits; "
          "the newest take is always kept")
INFO = "take.json"  # a finished take's description; a folder without one is not listed
TAKE_FOLDER = re.compile(r"take_(\d+)$")


def default_takes_dir() -> Path:
    """Where `musicgpt studio` keeps takes by default: the platform's per-user data folder, then musicgpt/takes
    ($XDG_DATA_HOME or ~/.local/share on Linux, ~/Library/Application Support on macOS, %LOCALAPPDATA% on Windows)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"  # the spec ignores a relative one
    return base / "musicgpt" / "takes"


@dataclass
class StoredFile:
    """One file of the store: its download name, where it lies, and how to make it if it is not there yet."""

    name: str
    path: Path
    make: Callable[[Path], object] | None  # writes `path` (atomically); None once made
    error: str | None = None  # why making it failed, kept for every later request
    on_made: Callable[[], None] | None = field(default=None, repr=False)  # after a file was made (the cap)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def media_type(self) -> str:
        """The Content-Type it is served with (by its suffix)."""
        return MEDIA_TYPES.get(Path(self.name).suffix, "application/octet-stream")

    def ensure(self) -> Path:
        """The file's path, made first if needed (blocks while another thread makes it); OSError if it failed."""
        made = False
        with self._lock:
            if self.make is not None and self.error is None:
                try:
                    self.make(self.path)
                    made = True
                except Exception as exc:  # kept: every later request gets the same answer
                    self.error = f"{self.name}: {exc}"
                self.make = None  # frees what the maker held (an arcs document can be tens of MB)
        if made and self.on_made is not None:
            self.on_made()  # outside the lock: the cap takes the locks of the files it removes
        if self.error is not None:
            raise OSError(self.error)
        return self.path

    def withdraw(self, reason: str) -> None:
        """Make it unservable (its take was removed): waits for a maker that is writing it."""
        with self._lock:
            self.make, self.error = None, f"{self.name}: {reason}"


@dataclass
class Take:
    """A take's folder and the ids of its files."""

    number: int
    folder: Path
    ids: list[str] = field(default_factory=list)
    info: dict[str, Any] | None = None  # take.json's content once the take finished
    urls: list[dict[str, str]] = field(default_factory=list)  # per sample: kind -> URL path (this server's ids)


class FileStore:
    """Files under random ids: takes in their folders (see the module), uploads in a temporary folder."""

    def __init__(self, takes: Path | None = None, limit_mb: float = DEFAULT_TAKES_LIMIT_MB,
                 prefix: str = "musicgpt-studio-"):
        if not limit_mb > 0:
            raise ValueError(f"takes limit: must be a positive number of MB, got {limit_mb!r}")
        self.root = Path(tempfile.mkdtemp(prefix=prefix))  # uploads (and the takes, when no folder is given)
        self.takes_dir = Path(takes) if takes is not None else self.root
        self.persistent = takes is not None
        self.limit = int(limit_mb * 2**20)  # bytes
        self._files: dict[str, StoredFile] = {}
        self._takes: dict[int, Take] = {}  # by number, oldest first
        self._lock = threading.Lock()

    def add(self, name: str, make: Callable[[Path], object] | None = None,
            take: int | None = None) -> tuple[str, StoredFile]:
        """Register a file called `name` (made now or later by `make`), in take `take`'s folder (None: the
        temporary folder); returns its id and entry."""
        file_id = secrets.token_urlsafe(12)
        with self._lock:
            if take is None:
                path = self.root / f"{file_id}{Path(name).suffix}"
            else:
                path = self._takes[take].folder / name
                self._takes[take].ids.append(file_id)
            entry = StoredFile(name, path, make, on_made=None if take is None else self.prune)
            self._files[file_id] = entry
        return file_id, entry

    def scratch(self, suffix: str) -> Path:
        """A fresh path in the temporary folder, served to nobody (uploaded primers)."""
        return self.root / f"upload-{secrets.token_hex(8)}{suffix}"

    def get(self, file_id: str, name: str) -> StoredFile | None:
        """The file with this id, if `name` is its name too."""
        with self._lock:
            entry = self._files.get(file_id)
        return entry if entry is not None and entry.name == name else None

    def url(self, file_id: str) -> str:
        """The URL path that serves a file."""
        return f"/files/{file_id}/{self._files[file_id].name}"

    # ------------------------------------------------------------------ takes

    def new_take(self) -> int:
        """A new take's number (one past the highest in the folder) and its empty folder."""
        with self._lock:
            self.takes_dir.mkdir(parents=True, exist_ok=True)  # made with the first take: a failed start makes none
            number = max([*self._takes, *self._folders_on_disk()], default=0) + 1
            while True:  # another server may share the folder: a name taken meanwhile moves on to the next
                folder = self.takes_dir / f"take_{number:02d}"
                try:
                    folder.mkdir()
                    break
                except FileExistsError:
                    number += 1
            self._takes[number] = Take(number, folder)
        return number

    def finish_take(self, number: int, info: dict[str, Any], urls: list[dict[str, str]]) -> None:
        """Record a take's description (take.json, its samples' file names under "files": listed again after a
        restart) and its samples' URLs, then hold the cap."""
        info = {**info, "take": number, "folder": self._takes[number].folder.name}
        atomic_write_text(self._takes[number].folder / INFO, json.dumps(info, indent=1) + "\n")
        with self._lock:
            self._takes[number].info, self._takes[number].urls = info, urls
        self.prune()

    def drop_take(self, number: int) -> None:
        """Remove a take that left nothing to keep (disconnected, failed) and its folder."""
        with self._lock:
            take = self._takes.pop(number, None)
            entries = [self._files.pop(i) for i in take.ids] if take is not None else []
        for entry in entries:
            entry.withdraw("removed")
        if take is not None:
            shutil.rmtree(take.folder, ignore_errors=True)

    def load(self, wav: Callable[[Path], Callable[[Path], object]] | None = None) -> int:
        """List the finished takes already in the folder (a restart); `wav(midi path)` makes a maker for a WAV
        not rendered yet. Returns how many were found."""
        found = 0
        for number, folder in sorted(self._folders_on_disk().items()):
            try:
                info = json.loads((folder / INFO).read_text(encoding="utf-8"))
                files = [{str(kind): str(name) for kind, name in sample["files"].items()} for sample in info["samples"]]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # unfinished (the server was killed) or not ours: left as it is
            with self._lock:
                self._takes[number] = take = Take(number, folder, info=info)
            for names in files:
                # only plain names of files in the take's own folder
                names = {kind: name for kind, name in names.items() if Path(name).name == name and name}
                urls = {kind: self.url(self.add(name, None, number)[0]) for kind, name in names.items()
                        if kind != "wav" and (folder / name).is_file()}
                if wav is not None and "midi" in urls:
                    name = f"{Path(names['midi']).stem}.wav"
                    maker = None if (folder / name).is_file() else wav(folder / names["midi"])
                    urls["wav"] = self.url(self.add(name, maker, number)[0])
                take.urls.append(urls)
            found += 1
        return found

    def listing(self) -> list[dict[str, Any]]:
        """The finished takes, newest first: number, date, seed, primer and each sample's file URLs."""
        with self._lock:
            takes = [t for t in self._takes.values() if t.info is not None]
        out = []
        for take in sorted(takes, key=lambda t: t.number, reverse=True):
            info = take.info
            out.append({"take": take.number, "folder": take.folder.name, "date": info.get("date"),
                        "seed": info.get("seed"), "primer": info.get("primer"), "seconds": info.get("seconds"),
                        "samples": [{"sample": b, "files": urls} for b, urls in enumerate(take.urls)]})
        return out

    def used(self) -> int:
        """Bytes in the take folders this store knows."""
        with self._lock:
            folders = [t.folder for t in self._takes.values()]
        return sum(_size(folder) for folder in folders)

    def prune(self) -> list[int]:
        """Hold the cap: remove the oldest takes, whole, until the rest fit (the newest stays); their numbers."""
        removed = []
        with self._lock:
            sizes = {n: _size(t.folder) for n, t in self._takes.items()}
            total = sum(sizes.values())
            for number in sorted(sizes)[:-1]:
                if total <= self.limit:
                    break
                take = self._takes.pop(number)
                for file_id in take.ids:
                    self._files.pop(file_id).withdraw("removed: the takes folder reached its cap")
                shutil.rmtree(take.folder, ignore_errors=True)
                total -= sizes[number]
                removed.append(number)
        return removed

    def _folders_on_disk(self) -> dict[int, Path]:
        """The take folders in the takes folder, by number."""
        try:
            folders = [p for p in self.takes_dir.iterdir() if p.is_dir()]
        except OSError:
            return {}
        return {int(m.group(1)): p for p in folders if (m := TAKE_FOLDER.match(p.name))}

    def close(self) -> None:
        """Forget every file and remove the temporary folder (a takes folder given to the store stays)."""
        with self._lock:
            self._files.clear()
            self._takes.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _size(folder: Path) -> int:
    """Bytes of the files in a folder (not recursive: a take's folder is flat)."""
    try:
        return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())
    except OSError:
        return 0


def now_iso() -> str:
    """The local time as take.json records it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
