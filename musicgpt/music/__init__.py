"""Music in and out (no torch): MIDI, MusicXML and ABC files <-> `Notes` in seconds, and audio rendering.

    notes.py   `Notes`: the note table every part of musicgpt passes around (seconds, numpy)
    midi.py    `read_midi` (tempo map, sustain pedal folded), `write_midi`, `midi_files(folder)`
    scores.py  `read_notes`: MIDI, MusicXML or ABC by suffix (scores through music21)
    audio.py   `render_wav`: offline rendering with FluidSynth, TinySoundFont or symusic
"""

from musicgpt.music.midi import MIDI_SUFFIXES, is_midi_path, midi_files, read_midi, write_midi, write_tracks
from musicgpt.music.notes import Notes
from musicgpt.music.scores import read_notes

__all__ = ["MIDI_SUFFIXES", "Notes", "is_midi_path", "midi_files", "read_midi", "read_notes", "write_midi",
           "write_tracks"]
