"""Standard MIDI File bytes, read directly (no torch): the few facts symusic does not give us.

symusic stops reading a track at its first End-of-Track meta event. Some files (Stanford's
Pianolatron piano-roll exports, for one) put an End-of-Track at tick 0 of the tempo track and the
tempo events after it, or the note-offs of a final chord after the End-of-Track of a note track.
mido and pretty_midi read every event up to the end of the chunk, so they keep the tempo map and
the notes; symusic would give a constant tempo and drop the last notes. `without_early_end_of_track`
rewrites such a file so that each track has one End-of-Track, at its end (the deltas of the removed
ones carried over), which symusic then reads as mido does. Tracks whose only End-of-Track is their
last event (nearly all files) are not parsed at all.

Also here: the header's time division and a count of note-ons, so that `read_midi` can say why a
file gives no notes. Anything malformed makes these functions give up (None) and leave the reading,
and the error, to symusic.
"""

from __future__ import annotations

import struct
from typing import Iterator

__all__ = ["without_early_end_of_track", "division", "count_note_ons"]

END_OF_TRACK = b"\xff\x2f\x00"
_DATA_BYTES = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}  # channel messages by high nibble
_SYSTEM_BYTES = {0xF1: 1, 0xF2: 2, 0xF3: 1}  # system common messages that carry data (others carry none)


class _Malformed(Exception):
    pass


def division(data: bytes) -> int | None:
    """The header's time division (ticks per quarter; bit 15 set means SMPTE frames), or None."""
    if len(data) < 14 or not data.startswith(b"MThd"):
        return None
    return struct.unpack(">H", data[12:14])[0]


def _chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, start, end) of every chunk after the header."""
    (header_length,) = struct.unpack(">I", data[4:8])
    pos = 8 + header_length
    while pos + 8 <= len(data):
        kind, (length,) = data[pos : pos + 4], struct.unpack(">I", data[pos + 4 : pos + 8])
        yield kind, pos + 8, min(pos + 8 + length, len(data))
        pos += 8 + length


def _vlq(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        if pos >= end:
            raise _Malformed
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos
    raise _Malformed


def _encode_vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def _events(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(delta, status, first byte of the event after its delta, end of the event) of one track chunk.

    Running status is resolved as mido does: meta events do not set it, sysex and channel messages do.
    """
    pos, running = start, None
    while pos < end:
        delta, pos = _vlq(data, pos, end)
        event = pos
        status = data[pos]
        if status < 0x80:
            if running is None:
                raise _Malformed
            status = running
        else:
            pos += 1
            if status != 0xFF:
                running = status
        if status == 0xFF:
            pos += 1
            length, pos = _vlq(data, pos, end)
            pos += length
        elif status in (0xF0, 0xF7):
            length, pos = _vlq(data, pos, end)
            pos += length
        elif status >= 0xF0:
            pos += _SYSTEM_BYTES.get(status, 0)
        else:
            pos += _DATA_BYTES[status >> 4]
        if pos > end:
            raise _Malformed
        yield delta, status, event, pos


def without_early_end_of_track(data: bytes) -> bytes | None:
    """The file with every End-of-Track that is not its track's last event removed, or None if it has none."""
    try:
        parts, changed, pos = [], False, 0
        for kind, start, end in _chunks(data):
            track = data[start:end]
            if kind != b"MTrk" or (track.count(END_OF_TRACK) <= 1 and track.endswith(END_OF_TRACK)):
                continue
            body, carry, ended, early = [], 0, False, False
            for delta, status, event, stop in _events(data, start, end):
                if status == 0xFF and data[event + 1] == 0x2F:
                    carry, ended = carry + delta, True
                    continue
                early |= ended  # an event after an End-of-Track
                body.append(_encode_vlq(delta + carry) + data[event:stop])
                carry = 0
            if early:
                new = b"".join(body) + _encode_vlq(carry) + END_OF_TRACK
                parts += [data[pos : start - 4], struct.pack(">I", len(new)), new]
                pos, changed = end, True
        return b"".join(parts) + data[pos:] if changed else None
    except (_Malformed, IndexError, KeyError, struct.error):
        return None


def count_note_ons(data: bytes) -> tuple[int, int] | None:
    """(note-ons with velocity > 0, note-offs including note-ons of velocity 0) in the whole file, or None."""
    try:
        ons = offs = 0
        for kind, start, end in _chunks(data):
            if kind != b"MTrk":
                continue
            for _, status, event, stop in _events(data, start, end):
                if status >> 4 == 0x9 and data[stop - 1] > 0:
                    ons += 1
                elif status >> 4 in (0x8, 0x9):
                    offs += 1
        return ons, offs
    except (_Malformed, IndexError, KeyError, struct.error):
        return None
