"""Hand-built MIDI files for tests (mido writes them; musicgpt reads them with symusic)."""

from __future__ import annotations

from pathlib import Path

import mido


def make_midi(path: Path, tracks: list[list[tuple]], tpq: int = 480, tempos: list[tuple[int, int]] | None = None) -> Path:
    """Write a type-1 file. tracks: lists of (tick, kind, a, b[, channel]) in absolute ticks, where kind is
    'on' (pitch, velocity), 'off' (pitch, 0) or 'cc' (number, value). tempos: (tick, microseconds per quarter)."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    meta = mido.MidiTrack()
    last = 0
    for tick, mspq in sorted(tempos or [], key=lambda x: x[0]):
        meta.append(mido.MetaMessage("set_tempo", tempo=mspq, time=tick - last))
        last = tick
    mid.tracks.append(meta)
    for events in tracks:
        track = mido.MidiTrack()
        last = 0
        for tick, kind, a, b, *rest in sorted(events, key=lambda x: x[0]):
            channel = rest[0] if rest else 0
            if kind == "on":
                msg = mido.Message("note_on", note=a, velocity=b, channel=channel, time=tick - last)
            elif kind == "off":
                msg = mido.Message("note_off", note=a, velocity=0, channel=channel, time=tick - last)
            else:
                msg = mido.Message("control_change", control=a, value=b, channel=channel, time=tick - last)
            track.append(msg)
            last = tick
        mid.tracks.append(track)
    mid.save(str(path))
    return Path(path)


def note(pitch: int, on: int, off: int, velocity: int = 80, channel: int = 0) -> list[tuple]:
    """The two events of one note."""
    return [(on, "on", pitch, velocity, channel), (off, "off", pitch, 0, channel)]


def make_raw_midi(path: Path, tracks: list[list[tuple[int, mido.Message | mido.MetaMessage]]], tpq: int = 480,
                  division: int | None = None) -> Path:
    """Write a type-1 file event by event, as given: (delta ticks, mido message) per event, nothing added or
    fixed (mido's own writer moves every end_of_track to the end; this one keeps them where they are).
    `division` overrides the header's time division word (0, or an SMPTE value with bit 15 set)."""
    def vlq(value: int) -> bytes:
        out = [value & 0x7F]
        value >>= 7
        while value:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        return bytes(reversed(out))

    chunks = []
    for events in tracks:
        data = b"".join(vlq(delta) + bytes(msg.bytes()) for delta, msg in events)
        chunks.append(b"MTrk" + len(data).to_bytes(4, "big") + data)
    word = tpq if division is None else division
    header = b"MThd" + (6).to_bytes(4, "big") + (1).to_bytes(2, "big") + len(tracks).to_bytes(2, "big") + word.to_bytes(2, "big")
    Path(path).write_bytes(header + b"".join(chunks))
    return Path(path)
