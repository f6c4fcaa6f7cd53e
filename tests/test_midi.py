"""musicgpt.music.midi: parsing, tempo maps, pedal folding, the same-pitch rule, bad files, writing."""

import warnings
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest

from midi_factory import make_midi, make_raw_midi, note
from musicgpt.errors import MidiError
from musicgpt.music.midi import Notes, read_midi, write_midi

FIXTURES = Path(__file__).parent / "fixtures"
REAL = sorted(FIXTURES.glob("*.mid"))
TPS = 960  # ticks per second at tpq 480 and the default 120 qpm
PEDAL_DOWN, PEDAL_UP = (64, 127), (64, 0)


def ped(tick, value):
    return (tick, "cc", 64, value)


def as_tuples(notes: Notes):
    return [(round(s * TPS), round(e * TPS), int(p), int(v))
            for s, e, p, v in zip(notes.start, notes.end, notes.pitch, notes.velocity)]


def test_real_fixtures_are_well_formed():
    assert len(REAL) >= 4
    for path in REAL:
        notes = read_midi(path)
        assert len(notes) > 100
        assert np.all(np.diff(notes.start) >= 0)
        same_start = np.diff(notes.start) == 0
        assert np.all(np.diff(notes.pitch)[same_start] > 0)
        assert np.all(notes.end >= notes.start)
        assert notes.velocity.min() >= 1 and notes.velocity.max() <= 127
        for pitch in np.unique(notes.pitch):  # never two sounding notes of one pitch
            mine = notes[notes.pitch == pitch]
            assert np.all(mine.end[:-1] <= mine.start[1:] + 1e-12)


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_onsets_match_pretty_midi(path):
    notes = read_midi(path, sustain=False)
    pm = pretty_midi.PrettyMIDI(str(path))
    theirs = np.unique([(n.pitch, n.start) for inst in pm.instruments if not inst.is_drum for n in inst.notes], axis=0)
    ours = np.unique(np.c_[notes.pitch, notes.start], axis=0)  # both sorted by (pitch, onset)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours[:, 0], theirs[:, 0]) and np.abs(ours[:, 1] - theirs[:, 1]).max() < 1e-6


def test_many_tempo_changes_match_pretty_midi_within_1ms(tmp_path):
    rng = np.random.default_rng(7)
    tempos = [(int(t), int(m)) for t, m in zip(np.arange(0, 300 * 97, 97), rng.integers(250_000, 1_500_000, 300))]
    events = []
    for i in range(600):
        on = int(rng.integers(0, 300 * 97))
        events += note(int(rng.integers(30, 90)), on, on + int(rng.integers(1, 400)), int(rng.integers(1, 128)))
    path = make_midi(tmp_path / "tempi.mid", [events], tpq=384, tempos=tempos)
    notes = read_midi(path, sustain=False)
    pm = pretty_midi.PrettyMIDI(str(path))
    theirs = np.sort([n.start for n in pm.instruments[0].notes])
    ours = np.sort(np.unique(np.c_[notes.start, notes.pitch], axis=0)[:, 0])
    pm_unique = np.sort(np.unique([(n.start, n.pitch) for n in pm.instruments[0].notes], axis=0)[:, 0])
    assert len(ours) == len(pm_unique) and len(theirs) >= len(ours)
    assert np.abs(ours - pm_unique).max() < 1e-3
    assert notes.end_time > 30  # the tempo map really stretched time


def test_pedal_extends_note_released_while_down(tmp_path):
    path = make_midi(tmp_path / "p.mid", [note(60, 0, 100) + [ped(50, 127), ped(500, 0)]])
    assert as_tuples(read_midi(path)) == [(0, 500, 60, 80)]
    assert as_tuples(read_midi(path, sustain=False)) == [(0, 100, 60, 80)]


def test_pedal_release_at_down_tick_is_held_and_at_up_tick_is_not(tmp_path):
    path = make_midi(tmp_path / "p.mid", [note(60, 0, 100) + note(62, 0, 300) + [ped(100, 127), ped(300, 0)]])
    assert as_tuples(read_midi(path)) == [(0, 300, 60, 80), (0, 300, 62, 80)]


def test_pedal_does_not_touch_notes_released_before_it_or_after_it(tmp_path):
    events = note(60, 0, 40) + note(64, 100, 700) + [ped(50, 100), ped(600, 10)]
    assert as_tuples(read_midi(make_midi(tmp_path / "p.mid", [events]))) == [(0, 40, 60, 80), (100, 700, 64, 80)]


def test_pedal_threshold_is_64(tmp_path):
    events = note(60, 0, 100) + note(61, 200, 300) + [ped(50, 63), ped(150, 0), ped(250, 64), ped(400, 0)]
    assert as_tuples(read_midi(make_midi(tmp_path / "p.mid", [events]))) == [(0, 100, 60, 80), (200, 400, 61, 80)]


def test_restrike_under_pedal_ends_the_sustained_note(tmp_path):
    events = note(60, 0, 100, 70) + note(60, 300, 350, 90) + [ped(50, 127), ped(800, 0)]
    assert as_tuples(read_midi(make_midi(tmp_path / "p.mid", [events]))) == [(0, 300, 60, 70), (300, 800, 60, 90)]


def test_pedal_never_lifted_ends_at_last_event_of_track(tmp_path):
    events = note(60, 0, 100) + note(72, 200, 900) + [ped(50, 127), (1000, "cc", 7, 100)]
    assert as_tuples(read_midi(make_midi(tmp_path / "p.mid", [events]))) == [(0, 1000, 60, 80), (200, 1000, 72, 80)]


def test_pedal_applies_per_track(tmp_path):
    piano = note(60, 0, 100) + [ped(50, 127), ped(600, 0)]
    notes = read_midi(make_midi(tmp_path / "p.mid", [piano, note(67, 0, 100, channel=1)]))
    assert as_tuples(notes) == [(0, 600, 60, 80), (0, 100, 67, 80)]


def test_overlapping_same_pitch_notes_restrike_wins(tmp_path):
    # on@0, on@100, off@200, off@300: symusic pairs first-in first-out -> (0,200) and (100,300); the
    # re-strike rule cuts the first at 100.
    events = [(0, "on", 60, 70), (100, "on", 60, 90), (200, "off", 60, 0), (300, "off", 60, 0)]
    assert as_tuples(read_midi(make_midi(tmp_path / "o.mid", [events]))) == [(0, 100, 60, 70), (100, 300, 60, 90)]


def test_same_pitch_same_onset_merges_latest_end_loudest_velocity(tmp_path):
    notes = read_midi(make_midi(tmp_path / "d.mid", [note(60, 0, 100, 50), note(60, 0, 400, 30, channel=1)]))
    assert as_tuples(notes) == [(0, 400, 60, 50)]


def test_track_and_program_selection_and_drums(tmp_path):
    path = make_midi(tmp_path / "t.mid", [note(60, 0, 100), note(36, 0, 100, channel=9)])
    assert as_tuples(read_midi(path)) == [(0, 100, 60, 80)]
    assert len(read_midi(path, include_drums=True)) == 2
    assert as_tuples(read_midi(path, tracks=[0])) == [(0, 100, 60, 80)]
    with pytest.raises(MidiError, match="no notes"):
        read_midi(path, programs=[5])


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"RIFF not a midi file at all" * 4, "not a MIDI file"),
    (b"MThd\x00\x00", "corrupt or truncated"),
])
def test_bad_bytes_raise_midi_error_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.mid"
    path.write_bytes(content)
    with pytest.raises(MidiError, match=reason) as info:
        read_midi(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_real_file(tmp_path):
    data = REAL[0].read_bytes()
    path = tmp_path / "cut.mid"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MidiError, match="cut.mid: corrupt or truncated"):
        read_midi(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MidiError, match="no such file"):
        read_midi(tmp_path / "nope.mid")
    with pytest.raises(MidiError, match="directory"):
        read_midi(tmp_path)


def test_no_notes(tmp_path):
    path = make_midi(tmp_path / "empty.mid", [[ped(0, 127)]])
    with pytest.raises(MidiError, match="empty.mid: contains no notes"):
        read_midi(path)
    assert len(read_midi(path, allow_empty=True)) == 0


def test_absurd_tempo(tmp_path):
    zero = make_midi(tmp_path / "zero.mid", [note(60, 0, 480)], tempos=[(0, 0)])
    with pytest.raises(MidiError, match="absurd tempo"):
        read_midi(zero)
    slow = make_midi(tmp_path / "slow.mid", [note(60, 0, 20_000)], tpq=1, tempos=[(0, 16_777_215)])
    with pytest.raises(MidiError, match="slow.mid: notes run to .* h"):
        read_midi(slow)


def test_write_read_keeps_10ms_grid_exactly(tmp_path):
    rng = np.random.default_rng(1)
    start = rng.integers(0, 20_000, 500) * 0.01
    notes = Notes.from_unsorted(start, start + rng.integers(1, 300, 500) * 0.01, rng.integers(21, 109, 500),
                                rng.integers(1, 128, 500))
    notes = read_midi(write_midi_and_return(notes, tmp_path / "w.mid"), sustain=False)
    assert np.abs(notes.start * 100 - np.rint(notes.start * 100)).max() < 1e-6
    assert np.abs(notes.end * 100 - np.rint(notes.end * 100)).max() < 1e-6


def write_midi_and_return(notes, path):
    write_midi(notes, path)
    return path


def test_write_read_round_trip_of_real_file(tmp_path):
    notes = read_midi(REAL[0])
    write_midi(notes, tmp_path / "again.mid")
    back = read_midi(tmp_path / "again.mid")
    assert len(back) == len(notes)
    assert np.abs(back.start - notes.start).max() <= 0.00025 + 1e-9
    assert np.abs(back.end - notes.end).max() <= 0.00025 + 1e-9
    assert np.array_equal(back.pitch, notes.pitch) and np.array_equal(back.velocity, notes.velocity)


def test_write_to_missing_folder_raises(tmp_path):
    with pytest.raises(MidiError, match="cannot write"):
        write_midi(read_midi(REAL[0]), tmp_path / "no" / "such" / "x.mid")


def test_read_from_bytes_equals_read_from_path():
    a, b = read_midi(REAL[1]), read_midi(REAL[1].read_bytes())
    assert np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end)


# ---- files that symusic alone reads wrong, and files whose reason for having no notes must be true ----
def _msg(kind: str, **kw):
    return mido.MetaMessage(kind, **kw) if kind in ("set_tempo", "end_of_track") else mido.Message(kind, **kw)


def test_tempo_events_and_note_offs_after_an_early_end_of_track_are_read_as_mido_reads_them(tmp_path):
    """Piano-roll exports put End-of-Track at tick 0 of the tempo track, tempo changes after it, and the
    note-offs of the final chord after the note track's End-of-Track; symusic alone stopped at each."""
    tempo = [(0, _msg("set_tempo", tempo=500_000)), (0, _msg("end_of_track")),
             (960, _msg("set_tempo", tempo=250_000)), (960, _msg("set_tempo", tempo=1_000_000)),
             (0, _msg("end_of_track"))]
    notes = [(0, _msg("note_on", note=60, velocity=80)), (480, _msg("note_off", note=60)),
             (0, _msg("note_on", note=64, velocity=70)), (480, _msg("note_off", note=64)),
             (0, _msg("note_on", note=67, velocity=60)), (0, _msg("note_on", note=72, velocity=60)),
             (0, _msg("end_of_track")), (480, _msg("note_off", note=67)), (0, _msg("note_off", note=72)),
             (960, _msg("note_on", note=48, velocity=90)), (960, _msg("note_off", note=48)),
             (0, _msg("end_of_track"))]
    path = make_raw_midi(tmp_path / "roll.mid", [tempo, notes])
    ours = read_midi(path)
    pm = sorted((n.start, n.end, n.pitch) for n in pretty_midi.PrettyMIDI(str(path)).instruments[0].notes)
    assert len(ours) == len(pm) == 5  # no note lost
    assert np.abs(ours.start - [s for s, _, _ in pm]).max() < 1e-3
    assert np.abs(ours.end - [e for _, e, _ in pm]).max() < 1e-3 and ours.pitch.tolist() == [p for *_, p in pm]
    assert ours.end_time == pytest.approx(1.0 + 0.5 + 3.0)  # 120 bpm to tick 960, 240 bpm to 1920, 60 bpm to 3360


@pytest.mark.parametrize("case, reason", [
    ("tpq0", "0 ticks per quarter note"),
    ("smpte", "SMPTE frames per second"),
    ("drums", "only drums (1 note on MIDI channel 10)"),
    ("no_offs", "none of its 2 note-ons is ever released"),
])
def test_files_without_notes_say_why(tmp_path, case, reason):
    on, off = (lambda p, ch=0: _msg("note_on", note=p, velocity=80, channel=ch)), (lambda p, ch=0: _msg("note_off", note=p, channel=ch))
    events = {"tpq0": [(0, on(60)), (480, off(60))], "smpte": [(0, on(60)), (480, off(60))],
              "drums": [(0, on(36, 9)), (480, off(36, 9))], "no_offs": [(0, on(60)), (480, on(62))]}[case]
    division = {"tpq0": 0, "smpte": 0xE728}.get(case)
    path = make_raw_midi(tmp_path / f"{case}.mid", [events + [(0, _msg("end_of_track"))]], division=division)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way (tpq 0 used to divide by zero)
        with pytest.raises(MidiError) as caught:
            read_midi(path)
    assert str(caught.value).startswith(f"{path}: ") and reason in str(caught.value)
    assert "contains no notes" not in str(caught.value)
