"""Files: atomic writes, and JSON reads whose errors name the file.

Atomic writes: a file or a directory is written under a temporary sibling name, then renamed into place.

A reader, or a process killed half-way, sees the old file or the new one, never a part of one.
Temporary names are `.NAME.<random>.tmp` next to the target: hidden, unique per writer (threads
and processes never share one), on the same file system (so the rename is atomic). What is
written gets the permissions a plain `open()` would give under the process's umask (mkstemp and
mkdtemp alone would make it private). `durable=True` also flushes the data and the directory entry
to disk before returning (checkpoints, where a power cut must not lose the last good one).

    atomic_savefig(fig, "roll.png", dpi=200)
    atomic_write_text(path, json.dumps(data))
    read_json(path, ConfigError)              # a failure names the file and the reason
    with atomic_directory(ckpt) as tmp: ...   # fill tmp; it replaces ckpt when the block succeeds
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from musicgpt.errors import MusicGPTError, WriteError

__all__ = ["atomic_write", "atomic_write_text", "atomic_savefig", "atomic_files", "atomic_directory",
           "recover_directories", "remove_leftovers", "umask", "read_json"]


def umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only where /proc is missing)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], *, make_parents: bool = False,
                 durable: bool = False, mode: int = 0o666) -> Path:
    """Call write(tmp) to fill a temporary sibling of `path`, then rename it to `path`; returns `path`.

    The temporary file exists (empty) when `write` is called, so `write` may open it or replace it.
    It gets `mode` less the umask (0o777 for an executable or a shared library). On any error the
    temporary file is removed and the error propagates; `path` is untouched.
    """
    path = Path(path)
    tmp = _write_temporary(path, write, make_parents, durable, mode)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    if durable:
        _fsync(path.parent)
    return path


def _write_temporary(path: Path, write: Callable[[Path], object], make_parents: bool, durable: bool,
                     mode: int) -> Path:
    """A filled temporary sibling of `path` (removed again if anything fails)."""
    try:
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, mode & ~umask())
        if durable:
            _fsync(tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _write_error(path: Path, exc: OSError) -> WriteError:
    reason = exc.strerror or f"{exc}: a short write, the disk is probably full"  # numpy's tofile/save say only that
    return WriteError(f"{path}: cannot write ({reason})")


class _Group:
    """Files written to temporaries now, renamed into place together when the `atomic_files` block ends."""

    def __init__(self) -> None:
        self.pending: list[tuple[Path, Path]] = []

    def write(self, path: str | os.PathLike, write: Callable[[Path], object], *, mode: int = 0o666) -> Path:
        """Fill a temporary for `path` now (see atomic_write); it is renamed when the block succeeds."""
        path = Path(path)
        self.pending.append((_write_temporary(path, write, False, False, mode), path))
        return path

    def write_text(self, path: str | os.PathLike, text: str) -> Path:
        """write() of UTF-8 text."""
        return self.write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def atomic_files() -> Iterator[_Group]:
    """Write several files, then rename them all into place in the order written (the last is the one that
    says the others are complete, a manifest say). Nothing is renamed until every file is written, so a
    full disk or an error leaves every old file as it was."""
    group = _Group()
    try:
        yield group
    except BaseException:
        for tmp, _ in group.pending:
            tmp.unlink(missing_ok=True)
        raise
    for i, (tmp, path) in enumerate(group.pending):
        try:
            os.replace(tmp, path)
        except OSError as exc:
            for rest, _ in group.pending[i:]:
                rest.unlink(missing_ok=True)
            raise _write_error(path, exc) from None


def atomic_write_text(path: str | os.PathLike, text: str, *, make_parents: bool = False,
                      durable: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns `path`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), make_parents=make_parents,
                        durable=durable)


def atomic_savefig(fig, path: str | os.PathLike, *, make_parents: bool = False, **savefig_kwargs) -> Path:
    """Save a matplotlib figure to `path` atomically, in the format its suffix names (PNG by default)."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", None) or path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs), make_parents=make_parents)


@contextmanager
def atomic_directory(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling directory of `path`; when the block succeeds it becomes `path`.

    An existing `path` is swapped out only once the new directory is complete, then deleted. On an
    error inside the block the temporary directory is removed and `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        try:
            yield tmp
        except OSError as exc:
            raise _write_error(path, exc) from None
        os.chmod(tmp, 0o777 & ~umask())
        if durable:
            for file in tmp.rglob("*"):
                if file.is_file():
                    _fsync(file)
            _fsync(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_directories(parent: str | os.PathLike, complete: Callable[[Path], bool]) -> list[Path]:
    """Put back every directory of `parent` that a kill between the two renames of an atomic_directory swap
    left missing: the new copy if it is complete (the swap starts only once it is), else the old one.

    Call it before remove_leftovers, which would delete both copies. Returns the directories put back.
    """
    parent = Path(parent)
    restored = []
    for old in sorted(parent.glob(".*.old-*")):
        name = old.name[1 : old.name.rindex(".old-")]
        path = parent / name
        if path.exists() or not old.is_dir():
            continue
        new = [t for t in parent.glob(f".{name}.*.tmp") if t.is_dir() and complete(t)]
        source = max(new, key=lambda t: t.stat().st_mtime) if new else old if complete(old) else None
        if source is not None:
            os.rename(source, path)
            restored.append(path)
    return restored


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and directories that writers killed mid-write left in `folder`; returns them.

    Only for a folder no other process is writing into at the same time (their temporaries look the same).
    """
    removed = []
    for entry in [*Path(folder).glob(".*.tmp"), *Path(folder).glob(".*.old-*")]:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file or a directory to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def ensure_folder(path: str | os.PathLike, label: str, error: type[MusicGPTError] = WriteError) -> Path:
    """`path` as a folder that exists (made with its parents if need be), or `error` starting with `label` and saying
    why it cannot be (a file in the way, no permission), not an OSError's traceback."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{label}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error(f"{label}: cannot create the folder ({exc.strerror or exc})") from None
    return path
