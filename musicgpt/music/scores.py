"""Scores as performance notes (no torch): MusicXML (.xml, .musicxml, .mxl) and ABC (.abc) through music21.

music21 writes the score to MIDI in memory (its tempo marks become the tempo map), which
`read_midi` then reads like any performance. `read_notes` picks the reader by suffix.
"""

from __future__ import annotations

import os
from pathlib import Path

from musicgpt.errors import MidiError
from musicgpt.music.midi import read_midi
from musicgpt.music.notes import Notes

__all__ = ["read_notes", "read_score", "SCORE_SUFFIXES"]

SCORE_SUFFIXES = (".xml", ".musicxml", ".mxl", ".abc")


def read_score(path: str | os.PathLike) -> Notes:
    """A MusicXML or ABC file, through music21, as performance notes (its tempo marks in seconds)."""
    path = Path(path)
    if not path.is_file():
        raise MidiError(f"{path}: no such file")
    try:
        import music21
        from music21.midi.translate import streamToMidiFile
    except ImportError as exc:  # music21 is a dependency; this names the cause if it is missing
        raise MidiError(f"{path}: reading {path.suffix} needs music21 ({exc})") from None
    try:
        score = music21.converter.parse(str(path))
        data = streamToMidiFile(score).writestr()
    except Exception as exc:  # music21 raises many types for bad files
        raise MidiError(f"{path}: music21 cannot read it ({type(exc).__name__}: {exc})") from None
    return read_midi(data, name=str(path))


def read_notes(path: str | os.PathLike) -> Notes:
    """Notes of a MIDI, MusicXML or ABC file, chosen by suffix (anything else is tried as MIDI)."""
    suffix = Path(path).suffix.lower()
    if suffix in SCORE_SUFFIXES:
        return read_score(path)
    return read_midi(path)
