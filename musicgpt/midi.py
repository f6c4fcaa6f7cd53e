"""Performance MIDI in and out: any MIDI file -> a `Notes` table in seconds, and back.

One parser, symusic, reads the file in ticks; everything after that is numpy on integer ticks
(exact comparisons), converted to float64 seconds with the file's tempo map at the very end.
symusic's own seconds are float32 and drift by milliseconds on long files, so they are not used.

The rules, applied in this order:

1. Pairing (symusic). Note-on/note-off events of one pitch in one track are paired first in,
   first out: a release closes the earliest still-sounding note of that pitch. A note-on with
   velocity 0 is a release. A note that is never released in the file is dropped.
2. Tracks. All non-drum tracks are merged (symusic splits a file into one track per
   MIDI track and channel); `tracks=` (indices into symusic's track list) and `programs=` select.
3. Sustain pedal, per track (CC64, down when the value is >= 64; when several CC64 events share a
   tick the last one counts). A note released while the pedal is down lasts until the pedal is
   lifted. A release at the very tick the pedal goes down is held; a release at the tick it goes up
   is not. A pedal never lifted is lifted at the track's last event.
4. Same pitch (over the merged table, after the pedal): a note still sounding when its pitch is
   struck again ends at that new onset (the re-strike wins: Magenta's rule under the pedal, applied
   everywhere, so the output never holds two overlapping notes of one pitch). Notes of one pitch
   with the same onset tick merge into one note with the latest end and the loudest velocity.
   Zero-length notes (release at the onset tick) are kept with zero duration.
5. Tempo map. Tick -> seconds in float64; 120 qpm before the first tempo event; when several
   tempo events share a tick the last one counts.

Bad input raises `MidiError` naming the file and the reason: zero bytes, not a MIDI file,
corrupt or truncated, a tempo of 0 us per quarter, notes past `max_seconds` (an absurd tempo or
tick count), and (unless `allow_empty=True`) no notes.

`write_midi` writes one piano track at 120 qpm with 1000 ticks per quarter: one tick is 0.5 ms, so
10 ms steps survive a write/read exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from musicgpt.errors import MidiError
from musicgpt.notes import Notes

__all__ = ["Notes", "read_midi", "write_midi", "MAX_SECONDS", "SUSTAIN_CC", "SUSTAIN_THRESHOLD"]

SUSTAIN_CC = 64
SUSTAIN_THRESHOLD = 64
DEFAULT_MSPQ = 500_000  # 120 qpm, the MIDI default before any tempo event
MAX_SECONDS = 6 * 3600.0  # a "piece" longer than this comes from an absurd tempo or tick count
WRITE_TPQ = 1000
WRITE_MSPQ = 500_000

MidiSource = str | os.PathLike | bytes


def _name(source: MidiSource, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _parse(source: MidiSource, name: str):
    """Bytes or path -> symusic ScoreTick, with symusic's errors turned into MidiError."""
    from symusic import Score

    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise MidiError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise MidiError(f"{name}: is a directory, not a MIDI file") from None
        except OSError as exc:
            raise MidiError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise MidiError(f"{name}: empty file (0 bytes)")
    if not data.startswith(b"MThd"):
        raise MidiError(f"{name}: not a MIDI file (no MThd header)")
    try:
        return Score.from_midi(data)
    except Exception as exc:  # symusic raises RuntimeError with its own wording
        reason = str(exc).replace("MiniMidi: ", "").replace(": iostream error", "").strip()
        raise MidiError(f"{name}: corrupt or truncated MIDI ({reason})") from None


def _tempo_map(score, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment start ticks, segment start seconds, seconds per tick) of the tempo map, float64."""
    tempos = score.tempos.numpy()
    ticks = tempos["time"].astype(np.int64)
    mspq = tempos["mspq"].astype(np.int64)
    if len(ticks) and (np.diff(ticks) < 0).any():
        order = np.argsort(ticks, kind="stable")
        ticks, mspq = ticks[order], mspq[order]
    if (mspq <= 0).any():
        raise MidiError(f"{name}: absurd tempo (0 microseconds per quarter note)")
    # The last tempo event at a tick wins; the default tempo holds until the first event.
    last = np.r_[ticks[1:] != ticks[:-1], True] if len(ticks) else np.zeros(0, bool)
    ticks, mspq = ticks[last], mspq[last]
    if not len(ticks) or ticks[0] > 0:
        ticks = np.r_[0, ticks]
        mspq = np.r_[DEFAULT_MSPQ, mspq]
    sec_per_tick = mspq.astype(np.float64) / (1e6 * score.ticks_per_quarter)
    seg_seconds = np.r_[0.0, np.cumsum(np.diff(ticks) * sec_per_tick[:-1])]
    return ticks, seg_seconds, sec_per_tick


def ticks_to_seconds(ticks: np.ndarray, tempo_map: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Convert integer ticks to float64 seconds with a tempo map from `_tempo_map`."""
    seg_ticks, seg_seconds, sec_per_tick = tempo_map
    k = np.searchsorted(seg_ticks, ticks, side="right") - 1
    return seg_seconds[k] + (ticks - seg_ticks[k]) * sec_per_tick[k]


def _pedal_intervals(controls: dict, track_end: int) -> tuple[np.ndarray, np.ndarray]:
    """(down ticks, up ticks) of the sustain pedal from one track's control changes."""
    is_sustain = controls["number"] == SUSTAIN_CC
    t = controls["time"][is_sustain].astype(np.int64)
    if not len(t):
        return t, t
    down = controls["value"][is_sustain] >= SUSTAIN_THRESHOLD
    if (np.diff(t) < 0).any():
        order = np.argsort(t, kind="stable")
        t, down = t[order], down[order]
    last = np.r_[t[1:] != t[:-1], True]
    t, down = t[last], down[last]
    before = np.r_[False, down[:-1]]
    downs, ups = t[down & ~before], t[~down & before]
    if len(ups) < len(downs):
        ups = np.r_[ups, max(track_end, downs[-1])]
    return downs, ups


def _apply_pedal(start: np.ndarray, end: np.ndarray, downs: np.ndarray, ups: np.ndarray) -> np.ndarray:
    """Ends of notes released while the pedal is down move to the pedal's release."""
    if not len(downs):
        return end
    k = np.searchsorted(downs, end, side="right") - 1
    held = (k >= 0) & (end < ups[np.maximum(k, 0)])
    return np.where(held, np.maximum(end, ups[np.maximum(k, 0)]), end)


def _resolve_same_pitch(start, end, pitch, velocity):
    """Merge same-pitch notes with one onset; cut a sounding note at its pitch's next onset."""
    order = np.lexsort((-end, start, pitch))  # by pitch, onset, longest first
    start, end, pitch, velocity = start[order], end[order], pitch[order], velocity[order]
    first = np.r_[True, (pitch[1:] != pitch[:-1]) | (start[1:] != start[:-1])]
    if not first.all():
        group = np.flatnonzero(first)
        velocity = np.maximum.reduceat(velocity, group)
        start, end, pitch = start[group], end[group], pitch[group]
    same = pitch[1:] == pitch[:-1]
    end[:-1] = np.where(same, np.minimum(end[:-1], start[1:]), end[:-1])
    return start, end, pitch, velocity


def read_midi(
    source: MidiSource,
    *,
    tracks: Sequence[int] | None = None,
    programs: Sequence[int] | None = None,
    include_drums: bool = False,
    sustain: bool = True,
    allow_empty: bool = False,
    max_seconds: float = MAX_SECONDS,
    name: str | None = None,
) -> Notes:
    """Read a MIDI file (path or bytes) into a `Notes` table in seconds; see the module docstring."""
    name = _name(source, name)
    score = _parse(source, name)
    tempo_map = _tempo_map(score, name)
    parts = []
    for index, track in enumerate(score.tracks):
        if tracks is not None and index not in tracks:
            continue
        if programs is not None and track.program not in programs:
            continue
        if track.is_drum and not include_drums:
            continue
        notes = track.notes.numpy()
        if not len(notes["time"]):
            continue
        start = notes["time"].astype(np.int64)
        end = start + notes["duration"].astype(np.int64)
        if sustain:
            controls = track.controls.numpy()
            track_end = int(max(end.max(), controls["time"].max() if len(controls["time"]) else 0))
            end = _apply_pedal(start, end, *_pedal_intervals(controls, track_end))
        parts.append((start, end, notes["pitch"].astype(np.int32), notes["velocity"].astype(np.int32)))
    if not parts:
        if allow_empty:
            return Notes.empty()
        raise MidiError(f"{name}: contains no notes")
    start, end, pitch, velocity = (np.concatenate(column) for column in zip(*parts))
    start, end, pitch, velocity = _resolve_same_pitch(start, end, pitch, velocity)
    order = np.lexsort((pitch, start))
    seconds = ticks_to_seconds(np.concatenate([start[order], end[order]]), tempo_map)
    n = len(order)
    if not np.isfinite(seconds).all() or seconds[n:].max() > max_seconds:
        raise MidiError(
            f"{name}: notes run to {seconds[n:].max() / 3600:.1f} h, past the {max_seconds / 3600:g} h limit "
            "(absurd tempo or timing)"
        )
    return Notes(seconds[:n], seconds[n:], pitch[order], np.clip(velocity[order], 1, 127))


def write_midi(notes: Notes, path: str | os.PathLike, *, program: int = 0, name: str = "Piano") -> None:
    """Write notes as one piano track (120 qpm, 1000 ticks per quarter: 0.5 ms per tick)."""
    from symusic import Score, Tempo, Track

    ticks_per_second = 1e6 * WRITE_TPQ / WRITE_MSPQ
    start = np.round(np.asarray(notes.start) * ticks_per_second).astype(np.int64)
    end = np.round(np.asarray(notes.end) * ticks_per_second).astype(np.int64)
    if len(start) and (start.min() < 0 or end.max() >= 2**31):
        raise MidiError(f"{path}: notes must start at >= 0 s and end within {2**31 / ticks_per_second / 3600:.0f} h")
    if len(notes) and ((notes.pitch < 0) | (notes.pitch > 127)).any():
        raise MidiError(f"{path}: pitches must lie in 0..127")
    track = Track(name=name, program=program, is_drum=False)
    track.notes = track.notes.from_numpy(
        start.astype(np.int32),
        np.maximum(end - start, 0).astype(np.int32),
        np.asarray(notes.pitch, np.int8),
        np.clip(notes.velocity, 1, 127).astype(np.int8),
    )
    score = Score(WRITE_TPQ)
    score.tempos.append(Tempo(0, qpm=60e6 / WRITE_MSPQ))
    score.tracks.append(track)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        score.dump_midi(str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise MidiError(f"{path}: cannot write ({exc})") from None
