"""Music in and out (no torch): MIDI, MusicXML and ABC files <-> `Notes` in seconds, and audio rendering."""
