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

import errno
import os
import stat
from pathlib import Path
from typing import Sequence

import numpy as np

from musicgpt._io import atomic_write
from musicgpt.errors import MidiError, WriteError
from musicgpt.music import smf
from musicgpt.music.notes import Notes

__all__ = ["Notes", "read_midi", "write_midi", "write_tracks", "is_midi_path", "midi_files", "walk_midi", "MIDI_SUFFIXES",
           "MAX_SECONDS", "SUSTAIN_CC", "SUSTAIN_THRESHOLD"]

MIDI_SUFFIXES = (".mid", ".midi")  # what counts as a MIDI file in a folder, compared case-insensitively

SUSTAIN_CC = 64
SUSTAIN_THRESHOLD = 64
DEFAULT_MSPQ = 500_000  # 120 qpm, the MIDI default before any tempo event
MAX_SECONDS = 6 * 3600.0  # a "piece" longer than this comes from an absurd tempo or tick count
WRITE_TPQ = 1000
WRITE_MSPQ = 500_000

MidiSource = str | os.PathLike | bytes


def is_midi_path(path: str | os.PathLike) -> bool:
    """Whether a file name ends in a MIDI suffix (.mid, .midi, in any case)."""
    return Path(path).suffix.lower() in MIDI_SUFFIXES


def midi_files(folder: str | os.PathLike) -> list[Path]:
    """The MIDI files under `folder`, recursively (symlinked folders too), in sorted path order."""
    return walk_midi(folder)[0]


def walk_midi(folder: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the MIDI files under `folder` in sorted path order, the entries that could not be followed and why).

    Symlinked folders are followed, each folder once: a symlink back to a folder above it (a loop) or to
    one walked already is reported, not followed. A MIDI-named (or suffix-less) symlink whose target is
    missing, or that points to itself in a loop, is reported too: a batch lists it among its skipped files.
    """
    root = Path(folder)
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    first = root.stat()
    seen = {(first.st_dev, first.st_ino): root}
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            problems.append((directory, f"cannot list the folder ({exc.strerror or exc})"))
            continue
        for entry in entries:
            path, candidate = Path(entry.path), is_midi_path(entry.name)
            try:
                info = entry.stat()  # follows symlinks
            except OSError as exc:
                if entry.is_symlink() and (candidate or not Path(entry.name).suffix):
                    problems.append((path, "symlink loop" if exc.errno == errno.ELOOP
                                     else f"dangling symlink (its target {os.readlink(path)} does not exist)"))
                elif candidate:
                    problems.append((path, f"cannot read ({exc.strerror or exc})"))
                continue
            if stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    target = seen[key]
                    loop = target == root or target in path.parents
                    problems.append((path, f"directory loop: a symlink back to {target}, not followed" if loop
                                     else f"a symlink to {target}, which is walked already"))
                    continue
                seen[key] = path
                stack.append(path)
            elif candidate and stat.S_ISREG(info.st_mode):
                files.append(path)
    return sorted(files), problems


def _name(source: MidiSource, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _parse(source: MidiSource, name: str):
    """Bytes or path -> (symusic ScoreTick, the bytes), with symusic's errors turned into MidiError.

    An End-of-Track before the last event of a track is removed first (musicgpt.music.smf), so that
    the tempo map and notes after it are read, as mido and pretty_midi read them.
    """
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
    division = smf.division(data)
    if division == 0:
        raise MidiError(f"{name}: its header gives 0 ticks per quarter note, so no event has a time")
    if division is not None and division & 0x8000:
        raise MidiError(f"{name}: timed in SMPTE frames per second, not ticks per quarter note (not supported)")
    data = smf.without_early_end_of_track(data) or data
    try:
        return Score.from_midi(data), data
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
    if len(ticks) > 1:
        last = np.concatenate((ticks[1:] != ticks[:-1], [True]))
        ticks, mspq = ticks[last], mspq[last]
    if not len(ticks) or ticks[0] > 0:
        ticks = np.concatenate(([0], ticks))
        mspq = np.concatenate(([DEFAULT_MSPQ], mspq))
    sec_per_tick = mspq.astype(np.float64) / (1e6 * score.ticks_per_quarter)
    seg_seconds = np.concatenate(([0.0], np.cumsum(np.diff(ticks) * sec_per_tick[:-1])))
    return ticks, seg_seconds, sec_per_tick


def ticks_to_seconds(ticks: np.ndarray, tempo_map: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Convert integer ticks to float64 seconds with a tempo map from `_tempo_map`."""
    seg_ticks, seg_seconds, sec_per_tick = tempo_map
    if len(seg_ticks) == 1:
        return ticks * sec_per_tick[0]
    k = np.searchsorted(seg_ticks, ticks, side="right") - 1
    return seg_seconds[k] + (ticks - seg_ticks[k]) * sec_per_tick[k]


def _pedal_intervals(controls: dict, track_end) -> tuple[np.ndarray, np.ndarray]:
    """(down ticks, up ticks) of the sustain pedal from one track's control changes.

    Several CC64 events at one tick make zero-length intervals, so "the last one counts" needs no
    special case. `track_end` is a callable giving the tick that lifts a pedal left down.
    """
    is_sustain = controls["number"] == SUSTAIN_CC
    t = controls["time"][is_sustain]
    if not len(t):
        return t, t
    down = (controls["value"][is_sustain] >= SUSTAIN_THRESHOLD).view(np.int8)
    if (t[1:] < t[:-1]).any():
        order = np.argsort(t, kind="stable")
        t, down = t[order], down[order]
    change = np.diff(down, prepend=np.int8(0))
    downs, ups = t[change == 1], t[change == -1]
    if len(ups) < len(downs):
        ups = np.concatenate((ups, [max(track_end(), downs[-1])]))
    return downs, ups


def _apply_pedal(end: np.ndarray, downs: np.ndarray, ups: np.ndarray) -> np.ndarray:
    """Ends of notes released while the pedal is down move to the pedal's release."""
    if not len(downs):
        return end
    k = np.searchsorted(downs, end, side="right") - 1
    up = ups[k]  # k = -1 (before the first press) picks the last release, which fails the test below
    return np.where((k >= 0) & (end < up), up, end)


def resolve_same_pitch(start, end, pitch, velocity):
    """Rule 4 on arrays sorted by (start, pitch): returns (start, end, pitch, velocity, kept indices).

    Same-pitch notes with one onset merge (latest end, loudest velocity; the kept index is the
    longest one's); a note ends no later than its pitch's next onset. Linear time: a stable radix
    sort by pitch keeps the time order inside each pitch.
    """
    by_pitch = np.argsort(pitch.astype(np.int16), kind="stable")  # (N,) pitch-major, then time
    ps, pe, pp = start[by_pitch], end[by_pitch], pitch[by_pitch]
    pv = velocity[by_pitch]
    dup = (pp[1:] == pp[:-1]) & (ps[1:] == ps[:-1])
    if dup.any():
        first = np.concatenate(([True], ~dup))
        group = np.flatnonzero(first)
        gid = np.cumsum(first) - 1
        longest = np.maximum.reduceat(pe, group)
        is_longest = np.flatnonzero(pe == longest[gid])
        rep = is_longest[np.concatenate(([True], gid[is_longest][1:] != gid[is_longest][:-1]))]
        pv = np.maximum.reduceat(pv, group)
        by_pitch, ps, pe, pp = by_pitch[rep], ps[rep], longest, pp[rep]
    pe = pe.copy()
    same = pp[1:] == pp[:-1]
    pe[:-1] = np.where(same, np.minimum(pe[:-1], ps[1:]), pe[:-1])
    if len(by_pitch) == len(start):
        new_end, new_velocity = np.empty_like(end), np.empty_like(velocity)
        new_end[by_pitch], new_velocity[by_pitch] = pe, pv
        return start, new_end, pitch, new_velocity, np.arange(len(start))
    kept = np.zeros(len(start), bool)
    kept[by_pitch] = True
    new_end, new_velocity = end.copy(), velocity.copy()
    new_end[by_pitch], new_velocity[by_pitch] = pe, pv
    kept = np.flatnonzero(kept)
    return start[kept], new_end[kept], pitch[kept], new_velocity[kept], kept


def sort_by_onset(start: np.ndarray, pitch: np.ndarray) -> np.ndarray | None:
    """Permutation sorting integer onsets by (start, pitch), or None when already sorted."""
    key = start * 128 + pitch
    if not len(key) or (key[1:] >= key[:-1]).all():
        return None
    return np.argsort(key, kind="stable")


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
    score, data = _parse(source, name)
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
        end = start + notes["duration"]
        if sustain:
            controls = track.controls.numpy()
            last_event = lambda: int(max(end.max(), controls["time"].max()))  # noqa: E731
            end = _apply_pedal(end, *_pedal_intervals(controls, last_event))
        parts.append((start, end, notes["pitch"], notes["velocity"]))
    if not parts:
        if allow_empty:
            return Notes.empty()
        raise MidiError(f"{name}: {_why_no_notes(score, data, tracks, programs, include_drums)}")
    if len(parts) == 1:
        start, end, pitch, velocity = parts[0]
    else:
        start, end, pitch, velocity = (np.concatenate(column) for column in zip(*parts))
    pitch, velocity = pitch.astype(np.int32), velocity.astype(np.int32)
    order = sort_by_onset(start, pitch)
    if order is not None:
        start, end, pitch, velocity = start[order], end[order], pitch[order], velocity[order]
    start, end, pitch, velocity, _ = resolve_same_pitch(start, end, pitch, velocity)
    n = len(start)
    seconds = ticks_to_seconds(np.concatenate([start, end]), tempo_map)
    if not np.isfinite(seconds).all() or seconds[n:].max() > max_seconds:
        raise MidiError(
            f"{name}: notes run to {seconds[n:].max() / 3600:.1f} h, past the {max_seconds / 3600:g} h limit "
            "(absurd tempo or timing)"
        )
    return Notes(seconds[:n], seconds[n:], pitch, np.maximum(velocity, 1))


def _why_no_notes(score, data: bytes, tracks, programs, include_drums: bool) -> str:
    """The true reason a file gave no notes."""
    pitched = sum(t.note_num() for t in score.tracks if not t.is_drum)
    drums = sum(t.note_num() for t in score.tracks if t.is_drum)
    if drums and not pitched and not include_drums:
        return f"contains only drums ({drums} note{'s' if drums != 1 else ''} on MIDI channel 10), no pitched notes"
    if (pitched or drums) and (tracks is not None or programs is not None):
        return "contains no notes in the chosen tracks or programs"
    counts = smf.count_note_ons(data)
    if counts is not None and counts[0] and not (pitched or drums):
        return f"none of its {counts[0]} note-ons is ever released (no matching note-off), so it has no complete notes"
    return "contains no notes"


def write_midi(notes: Notes, path: str | os.PathLike, *, program: int = 0, name: str = "Piano") -> None:
    """Write notes as one piano track (120 qpm, 1000 ticks per quarter: 0.5 ms per tick)."""
    write_tracks([(name, notes)], path, program=program)


def write_tracks(tracks: Sequence[tuple[str, Notes]], path: str | os.PathLike, *, program: int = 0) -> None:
    """Write named tracks of notes to one MIDI file (120 qpm, 0.5 ms per tick), atomically."""
    from symusic import Score, Tempo, Track

    ticks_per_second = 1e6 * WRITE_TPQ / WRITE_MSPQ
    score = Score(WRITE_TPQ)
    score.tempos.append(Tempo(0, qpm=60e6 / WRITE_MSPQ))
    for name, notes in tracks:
        start = np.round(np.asarray(notes.start) * ticks_per_second).astype(np.int64)
        end = np.round(np.asarray(notes.end) * ticks_per_second).astype(np.int64)
        if len(start) and (start.min() < 0 or end.max() >= 2**31):
            raise MidiError(f"{path}: notes must start at >= 0 s and end within "
                            f"{2**31 / ticks_per_second / 3600:.0f} h")
        if len(notes) and ((notes.pitch < 0) | (notes.pitch > 127)).any():
            raise MidiError(f"{path}: pitches must lie in 0..127")
        track = Track(name=name, program=program, is_drum=False)
        # a zero-length note is a note-on cancelled by its own note-off, which players drop: keep one tick
        track.notes = track.notes.from_numpy(
            start.astype(np.int32),
            np.maximum(end - start, 1).astype(np.int32),
            np.asarray(notes.pitch, np.int8),
            np.clip(notes.velocity, 1, 127).astype(np.int8),
        )
        score.tracks.append(track)
    try:
        atomic_write(path, lambda tmp: score.dump_midi(str(tmp)))
    except WriteError as exc:
        raise MidiError(str(exc)) from None
    except Exception as exc:  # symusic's own errors
        raise MidiError(f"{path}: cannot write ({exc})") from None


PRIMER_TRACK = "primer"  # the track `musicgpt generate` writes its primer's notes into


def primer_track_notes(path: str | os.PathLike) -> Notes | None:
    """Notes of the MIDI file's track named "primer" (as `musicgpt generate` writes it), or None (no such track,
    or not a MIDI file)."""
    from symusic import Score

    if not is_midi_path(path):
        return None
    try:
        names = [t.name for t in Score(str(path)).tracks]
    except Exception:  # an unreadable file has no primer track; reading its notes reports why
        return None
    if PRIMER_TRACK not in names:
        return None
    return read_midi(path, tracks=[names.index(PRIMER_TRACK)], allow_empty=True)
