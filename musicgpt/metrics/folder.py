"""Features (or notes) of every MIDI file under a folder; unreadable or empty files are skipped with a reason."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from musicgpt.errors import MusicGPTError
from musicgpt.metrics.features import piece_features
from musicgpt.music.midi import MIDI_SUFFIXES, midi_files, read_midi
from musicgpt.music.notes import Notes


class FolderError(MusicGPTError):
    """A folder of MIDI files does not exist or holds none."""


@dataclass
class FolderFeatures:
    """Per-piece features of the readable files of one folder, and the files skipped with reasons."""

    directory: Path
    files: list[Path] = field(default_factory=list)
    pieces: list[dict] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class FolderNotes:
    """The notes of the readable files of one folder (or one file), and the files skipped with reasons."""

    directory: Path
    files: list[Path] = field(default_factory=list)
    notes: list[Notes] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_midi_files(directory: str | Path, limit: int | None = None) -> list[Path]:
    """MIDI files under `directory`, recursively, in sorted path order (the first `limit` if given).

    `directory` may also be one MIDI file: the list of that file.
    """
    directory = Path(directory)
    if limit is not None and limit < 1:
        raise FolderError(f"limit must be at least 1, got {limit}")
    if directory.is_file():
        if directory.suffix.lower() not in MIDI_SUFFIXES:
            raise FolderError(f"{directory}: not a MIDI file (.mid or .midi) nor a folder")
        return [directory]
    if not directory.is_dir():
        raise FolderError(f"{directory}: not a directory")
    files = midi_files(directory)
    if not files:
        raise FolderError(f"{directory}: no .mid or .midi files found")
    return files[:limit] if limit else files


def _read_each(directory: str | Path, limit: int | None, progress: bool, sustain: bool, what: str,
               skipped: list[tuple[Path, str]]) -> Iterator[tuple[Path, Notes]]:
    """(path, notes) of each readable MIDI file under `directory`; the unreadable go to `skipped` with a reason."""
    for path in tqdm(find_midi_files(directory, limit), desc=f"{what} {Path(directory).name}", unit="file",
                     disable=not progress):
        try:
            notes = read_midi(path, sustain=sustain)
        except Exception as exc:  # one bad file must not abort a comparison or check of hundreds
            skipped.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        yield path, notes


def folder_features(
    directory: str | Path, limit: int | None = None, progress: bool = True, sustain: bool = True
) -> FolderFeatures:
    """Read every MIDI file under `directory` with musicgpt.music.midi.read_midi and compute its features.

    `sustain=False` ignores the sustain pedal (CC64): for files whose pedal is pressed and never lifted.
    """
    result = FolderFeatures(Path(directory))
    for path, notes in _read_each(directory, limit, progress, sustain, "features", result.skipped):
        try:
            features = piece_features(notes)
        except Exception as exc:  # an empty piece, say: skipped with its reason like an unreadable file
            result.skipped.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        result.files.append(path)
        result.pieces.append(features)
    return result


def folder_notes(
    directory: str | Path, limit: int | None = None, progress: bool = True, sustain: bool = True
) -> FolderNotes:
    """Read every MIDI file under `directory` (or the one file it names) with read_midi; skip, with a reason,
    files that cannot be read or hold no notes."""
    result = FolderNotes(Path(directory))
    for path, notes in _read_each(directory, limit, progress, sustain, "reading", result.skipped):
        if not len(notes):
            result.skipped.append((path, "no notes"))
            continue
        result.files.append(path)
        result.notes.append(notes)
    return result
