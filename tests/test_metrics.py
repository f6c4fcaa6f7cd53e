"""Music metrics: per-piece features with hand-computed answers, set comparison, and `musicgpt metrics`."""

import json

import numpy as np
import pytest

from musicgpt.cli import main
from musicgpt.metrics import (
    FEATURES,
    EmptyPieceError,
    TooFewPiecesError,
    analyze_key,
    compare_features,
    compare_sets,
    piece_features,
)
from musicgpt.metrics.key import key_profiles
from musicgpt.metrics.sets import gaussian_kde, kl_divergence, overlap_area
from musicgpt.music.notes import Notes

C_MAJOR_SCALE = [60, 62, 64, 65, 67, 69, 71, 72]


def melody(pitches, step=0.5, duration=None, velocity=80) -> Notes:
    """One note every `step` seconds."""
    start = np.arange(len(pitches)) * step
    return Notes(start, start + (duration or step), pitches, np.full(len(pitches), velocity))


def chords(pitch_sets, step=0.5) -> Notes:
    """One chord every `step` seconds."""
    start = [i * step for i, chord in enumerate(pitch_sets) for _ in chord]
    pitch = [p for chord in pitch_sets for p in chord]
    return Notes.from_unsorted(start, np.add(start, step), pitch, np.full(len(pitch), 80))


# --- per piece ---------------------------------------------------------------------------------


def test_c_major_scale_features():
    f = piece_features(melody(C_MAJOR_SCALE))
    assert set(f) == set(FEATURES) | {"key"}
    np.testing.assert_allclose(f["pitch_class_histogram"], np.array([2, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1]) / 8)
    assert f["key"] == "C major"
    assert f["key_consistency"] == 1.0
    assert f["pitch_range"] == 12
    assert f["used_pitches"] == 8
    assert f["notes_per_second"] == pytest.approx(2.0)  # 8 notes over 4 s
    assert f["polyphony"] == pytest.approx(1.0)
    assert f["polyphony_at_onsets"] == pytest.approx(1.0)
    assert f["repeated_4gram_share"] == 0.0
    assert f["longest_silence"] == 0.0
    assert f["longest_pitch_run"] == 1
    assert np.argmax(f["ioi_histogram"]) == 8 and f["ioi_histogram"].sum() == pytest.approx(1)  # 0.5 s in [0.4, 0.57)


def test_inter_onset_intervals_merge_chords_and_land_in_known_bins():
    # onsets 0 (a chord spread over 10 ms), 0.125, 0.375, 1.0: IOIs 0.125, 0.25, 0.625 s
    notes = Notes.from_unsorted([0.0, 0.01, 0.125, 0.375, 1.0], [1.5] * 5, [60, 64, 62, 64, 65], [80] * 5)
    ioi = piece_features(notes)["ioi_histogram"]
    expected = np.zeros(14)
    expected[[4, 6, 9]] = 1 / 3  # bins [0.1, 0.141), [0.2, 0.283), [0.566, 0.8)
    np.testing.assert_allclose(ioi, expected)


def test_duration_and_velocity_histograms():
    notes = Notes([0.0, 1.0, 2.0], [0.03, 1.3, 7.0], [60, 62, 64], [10, 20, 127])
    f = piece_features(notes)
    np.testing.assert_allclose(f["velocity_histogram"], [1 / 3, 1 / 3, 0, 0, 0, 0, 0, 1 / 3])
    # 30 ms -> first bin; 300 ms -> [0.283, 0.4); 5 s is past 3.2 s -> clipped into the last bin
    assert np.flatnonzero(f["duration_histogram"]).tolist() == [0, 7, 13]


def test_polyphony_time_averaged_and_at_onsets():
    # two notes held 0-2 s, a third 1-3 s: 6 note-seconds over 3 sounding seconds
    notes = Notes([0.0, 0.0, 1.0], [2.0, 2.0, 3.0], [60, 64, 67], [80, 80, 80])
    f = piece_features(notes)
    assert f["polyphony"] == pytest.approx(2.0)
    assert f["polyphony_at_onsets"] == pytest.approx((2 + 3) / 2)  # chord of 2; then 1 struck + 2 held


def test_pitch_class_transitions():
    f = piece_features(melody([60, 62, 72, 74]))  # C D C D: C->D twice, D->C once
    expected = np.zeros((12, 12))
    expected[0, 2], expected[2, 0] = 2 / 3, 1 / 3
    np.testing.assert_allclose(f["pitch_class_transitions"], expected)


def test_degeneracy_of_a_repeated_note():
    f = piece_features(melody([60] * 10, step=0.25))
    assert f["longest_pitch_run"] == 10
    assert f["repeated_4gram_share"] == 1.0
    assert f["used_pitches"] == 1 and f["pitch_range"] == 0


def test_degeneracy_measures_on_known_patterns():
    motif = piece_features(melody([60, 62, 64, 65] * 2))  # 4-grams ABCD BCDA CDAB DABC ABCD: ABCD twice
    assert motif["repeated_4gram_share"] == pytest.approx(2 / 5)
    repeated_chord = piece_features(chords([[60, 64, 67]] * 6 + [[62, 65, 69]]))
    assert repeated_chord["longest_pitch_run"] == 6
    alberti = piece_features(melody([48, 55, 52, 55] * 4, step=0.125))  # G struck every other onset
    assert alberti["longest_pitch_run"] == 1
    gap = Notes([0.0, 0.5, 3.0, 3.2], [1.0, 1.2, 4.0, 3.5], [60, 62, 64, 65], [80] * 4)
    assert piece_features(gap)["longest_silence"] == pytest.approx(1.8)  # 1.2 -> 3.0; 3.2-3.5 lies inside


def test_features_ignore_input_order_and_reject_empty_pieces():
    notes = chords([[60, 64, 67], [62, 65, 69], [59, 62, 67]])
    shuffled = notes[np.random.default_rng(0).permutation(len(notes))]
    a, b = piece_features(notes), piece_features(shuffled)
    for name in FEATURES:
        np.testing.assert_array_equal(a[name], b[name])
    with pytest.raises(EmptyPieceError):
        piece_features(Notes.empty())


def _music21_key(notes: Notes):
    from music21 import note, stream

    s = stream.Stream()
    for start, end, pitch in zip(notes.start, notes.end, notes.pitch):
        n = note.Note(int(pitch))
        n.quarterLength = float(end - start) * 2  # 120 qpm: the scale cancels in the correlation
        s.insert(float(start) * 2, n)
    return s.analyze("krumhansl")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_key_matches_music21_stream_analysis(seed):
    rng = np.random.default_rng(seed)
    n = 40
    start = np.sort(rng.uniform(0, 10, n))
    notes = Notes.from_unsorted(start, start + rng.uniform(0.1, 1.0, n), rng.integers(48, 84, n), np.full(n, 80))
    ours, theirs = analyze_key(notes), _music21_key(notes)
    assert (ours.tonic, ours.mode) == (theirs.tonic.pitchClass, theirs.mode)
    assert ours.correlation == pytest.approx(theirs.correlationCoefficient, abs=1e-9)


def test_key_of_minor_triads_and_profile_shape():
    d_minor = chords([[62, 65, 69], [57, 61, 64], [62, 65, 69], [55, 58, 62], [57, 61, 64], [62, 65, 69]])
    assert analyze_key(d_minor).name == "D minor"
    assert key_profiles().shape == (24, 12)


def test_key_consistency_drops_when_the_key_changes():
    steady = melody(C_MAJOR_SCALE * 10, step=0.5)  # 40 s of C major
    assert analyze_key(steady).consistency == 1.0
    f_sharp_major = [p + 6 for p in C_MAJOR_SCALE]
    modulating = Notes.concat([melody(C_MAJOR_SCALE * 5), melody(f_sharp_major * 6).shifted(20.0)])
    key = analyze_key(modulating)
    assert key.n_windows > 4
    assert 0.2 < key.consistency < 0.8


# --- set against set ---------------------------------------------------------------------------


def random_piece(seed: int, n: int = 64) -> Notes:
    """A diatonic random walk at a jittered tempo: one distribution, many pieces."""
    rng = np.random.default_rng(seed)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    degree = np.cumsum(rng.integers(-2, 3, n)) + 14
    pitch = 48 + 12 * (degree // 7) + scale[degree % 7]
    start = np.arange(n) * 0.25 * rng.uniform(0.8, 1.2)
    return Notes(start, start + 0.22, pitch, np.clip(rng.normal(70, 8, n), 1, 127).astype(int))


def stuck_piece(seed: int, n: int = 64) -> Notes:
    """What a degenerate model writes: one loud pitch, over and over."""
    start = np.arange(n) * 0.1
    return Notes(start, start + 0.05, np.full(n, 60 + seed % 3), np.full(n, 110))


def test_kde_overlap_and_kl_basics():
    grid = np.linspace(0, 10, 2001)
    p = gaussian_kde(np.array([2.0, 3.0, 4.0]), grid, 0.5)
    assert np.trapezoid(p, grid) == pytest.approx(1.0, abs=1e-3)
    q = gaussian_kde(np.array([8.0, 9.0]), grid, 0.3)
    assert overlap_area(p, p) == pytest.approx(1.0) and kl_divergence(p, p) == pytest.approx(0.0)
    assert overlap_area(p, q) < 0.01 and kl_divergence(p, q) > 5


def test_identical_sets_overlap_near_one():
    pieces = [piece_features(random_piece(s)) for s in range(12)]
    comparison = compare_features(pieces, pieces)
    assert list(comparison) == list(FEATURES)
    for name, c in comparison.items():
        assert c["overlap"] > 0.8, name  # not exactly 1: inter-set pairs include each piece with itself
        assert c["kl"] < 0.15, name
        assert c["generated"]["mean"] == pytest.approx(c["reference"]["mean"])


def test_same_distribution_overlaps_and_degenerate_set_does_not():
    reference = [random_piece(s) for s in range(12)]
    same = compare_sets([random_piece(100 + s) for s in range(12)], reference)
    overlaps = np.array([c["overlap"] for c in same.values()])
    assert overlaps.min() > 0.6 and np.median(overlaps) > 0.85
    stuck = compare_sets([stuck_piece(s) for s in range(12)], reference)
    for name in ["pitch_class_histogram", "ioi_histogram", "velocity_histogram", "repeated_4gram_share",
                 "longest_pitch_run"]:
        assert stuck[name]["overlap"] < 0.05, name
        assert stuck[name]["kl"] > 5, name
    assert stuck["longest_pitch_run"]["generated"]["mean"][0] == 64


def test_comparison_is_deterministic_and_needs_two_pieces():
    a, b = [random_piece(s) for s in range(4)], [random_piece(10 + s) for s in range(5)]
    first, second = compare_sets(a, b), compare_sets(a, b)
    for name in FEATURES:
        assert first[name]["overlap"] == second[name]["overlap"] and first[name]["kl"] == second[name]["kl"]
    assert first["pitch_range"]["inter"]["mean"] > 0
    with pytest.raises(TooFewPiecesError, match="generated set has 1"):
        compare_sets(a[:1], b)


# --- the command -------------------------------------------------------------------------------


def test_cli_end_to_end_skips_a_corrupt_file(tmp_path, capsys):
    from musicgpt.music.midi import write_midi

    generated, reference, out = tmp_path / "gen", tmp_path / "ref", tmp_path / "out"
    (generated / "nested").mkdir(parents=True)
    reference.mkdir()
    for s in range(3):
        write_midi(stuck_piece(s), generated / ("nested" if s else "") / f"g{s}.mid")
        write_midi(random_piece(s), reference / f"r{s}.mid")
    (generated / "broken.mid").write_bytes(b"MThd this is not a MIDI file")
    (generated / "notes.txt").write_text("not a MIDI file name, ignored")

    assert main(["metrics", str(generated), str(reference), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "broken.mid" in captured.err and "skipped" in captured.err
    for name in FEATURES:
        assert name in captured.out
    report = json.loads((out / "metrics.json").read_text())
    assert [s["path"].endswith("broken.mid") for s in report["generated"]["skipped"]] == [True]
    assert len(report["generated"]["files"]) == 3 and len(report["reference"]["files"]) == 3
    assert set(report["features"]) == set(FEATURES)
    assert report["features"]["repeated_4gram_share"]["generated"]["mean"] == 1.0
    assert report["pieces"]["generated"][0]["key"] == "C major"
    for png in ("kde.png", "histograms.png", "transitions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["metrics", str(empty), str(empty)]) == 1
    assert "no .mid or .midi files" in capsys.readouterr().err
    one = tmp_path / "one"
    one.mkdir()
    from musicgpt.music.midi import write_midi

    write_midi(random_piece(0), one / "a.mid")
    assert main(["metrics", str(one), str(one), "--quiet"]) == 1
    assert "at least 2" in capsys.readouterr().err
