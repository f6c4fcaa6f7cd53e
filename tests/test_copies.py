"""Copy check (`musicgpt metrics --copies`): the longest run a generated piece shares with training pieces."""

import json
from pathlib import Path

import numpy as np
import pytest

from musicgpt.cli import main
from musicgpt.errors import MusicGPTError
from musicgpt.metrics.copies import (COPY_THRESHOLD, CopyCheckError, CopyIndex, NoteSequence, check_copies,
                                     prepared_training_set)
from musicgpt.metrics.folder import folder_notes
from musicgpt.music.midi import write_midi
from musicgpt.music.notes import Notes


def piece(seed: int, n: int = 200, chords: bool = True) -> Notes:
    """Random notes on the 10 ms grid: onsets 0-600 ms apart (0 = a chord when `chords`), pitches 36..95."""
    rng = np.random.default_rng(seed)
    ioi = rng.choice([0, 7, 12, 25, 33, 60] if chords else [7, 12, 25, 33, 60], n) / 100
    start = np.cumsum(ioi)
    notes = Notes.from_unsorted(start, start + 0.2, rng.integers(36, 96, n), rng.integers(40, 100, n))
    step = np.rint(notes.start * 100)
    again = np.r_[False, (step[1:] == step[:-1]) & (notes.pitch[1:] == notes.pitch[:-1])]
    return notes[~again]  # no pitch twice in one chord: note i of the table is note i of its NoteSequence


def splice(host: Notes, source: Notes, at_note: int, first: int, count: int) -> Notes:
    """`host` with notes first..first+count of `source` put in after host's note `at_note` (1 s later)."""
    copied = source[first : first + count]
    t0 = float(host.start[at_note]) + 1.0
    copied = copied.shifted(t0 - float(copied.start[0]))
    after = host[at_note + 1 :].shifted(float(copied.end.max()) + 1.0 - float(host.start[at_note + 1]))
    parts = [host[: at_note + 1], copied, after]
    return Notes.from_unsorted(*(np.concatenate([getattr(p, a) for p in parts])
                                 for a in ("start", "end", "pitch", "velocity")))


TRAINING = [piece(s) for s in range(5)]
SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "sample"


def test_a_copied_stretch_is_found_with_its_piece_and_offsets():
    generated = splice(piece(100), TRAINING[3], at_note=49, first=60, count=40)
    match = CopyIndex(TRAINING, names=[f"t{i}" for i in range(5)]).longest_run(generated)
    # 1 s gaps around the copy: no training interval is that long, so the run is exactly the 40 notes
    assert (match.length, match.piece, match.name) == (40, 3, "t3")
    # indices in each piece's note sequence (start, pitch order); onsets of the first and last note, 10 ms grid
    assert (match.training_note, match.generated_note) == (60, 50)
    assert match.training_seconds == pytest.approx((TRAINING[3].start[60], TRAINING[3].start[99]))
    assert match.generated_seconds == pytest.approx((generated.start[50], generated.start[89]))
    assert match.generated_notes == len(generated)


def test_unrelated_pieces_share_only_short_runs():
    index = CopyIndex(TRAINING)
    for seed in (100, 101, 102):
        assert index.longest_run(piece(seed)).length < 8


def test_timing_jitter_below_half_a_step_still_matches_and_more_breaks_the_run():
    source = TRAINING[1]
    rng = np.random.default_rng(7)
    jitter = rng.uniform(-0.0045, 0.0045, len(source))
    jittered = Notes.from_unsorted(source.start + jitter + 30.0, source.end + 30.0, source.pitch, source.velocity)
    index = CopyIndex(TRAINING)
    assert index.longest_run(jittered).length == len(NoteSequence.from_notes(source))
    late = source.start.copy()
    late[100] += 0.007  # rounds into the next step: the interval into and out of note 100 change
    broken = index.longest_run(Notes.from_unsorted(late, late + 0.2, source.pitch, source.velocity))
    assert broken.length < len(NoteSequence.from_notes(source))


def test_transposed_or_stretched_copies_do_not_match():
    """Exact pitches and intervals only: a copy a semitone up, or 5% slower, is not a copy here."""
    index = CopyIndex(TRAINING)
    source = TRAINING[2][:120]
    assert index.longest_run(source).length == 120
    assert index.longest_run(source.transposed(1)).length < 8
    assert index.longest_run(source.stretched(1.05)).length < 8


def test_chord_order_is_by_pitch_whatever_the_file_order():
    # a chord spread over 3 ms (one 10 ms step) is the same chord, lowest pitch first
    a = Notes.from_unsorted([0.0, 0.0, 0.0, 0.5], [1.0] * 4, [67, 60, 64, 72], [80] * 4)
    b = Notes.from_unsorted([0.003, 0.001, 0.0, 0.5], [1.0] * 4, [60, 64, 67, 72], [80] * 4)
    for notes in (a, b):
        seq = NoteSequence.from_notes(notes)
        assert seq.pitch.tolist() == [60, 64, 67, 72] and seq.ioi.tolist() == [0, 0, 0, 50]
    assert CopyIndex([a], seed=4).longest_run(b).length == 4


def test_same_results_as_brute_force_on_repetitive_music():
    """Two pitches and three intervals (chords included): many equal k-grams, ties broken by the earliest
    training piece and note, then the earliest generated note."""
    rng = np.random.default_rng(1)

    def small(n):
        start = np.cumsum(rng.choice([0, 0.01, 0.02], n))
        return Notes.from_unsorted(start, start + 0.1, rng.choice([60, 62], n), np.full(n, 80))

    def brute(training, generated, k):
        a, best = NoteSequence.from_notes(generated), (0,)
        for d, notes in enumerate(training):
            b = NoteSequence.from_notes(notes)
            sa, sb = a.symbols(), b.symbols()
            for t in range(len(b)):
                for g in range(len(a)):
                    n = 0
                    while (g + n < len(a) and t + n < len(b) and a.pitch[g + n] == b.pitch[t + n]
                           and (n == 0 or sa[g + n] == sb[t + n])):
                        n += 1
                    if n >= k and n > best[0]:
                        best = (n, d, t, g)
        return best

    for _ in range(30):
        training = [small(int(rng.integers(1, 50))) for _ in range(int(rng.integers(1, 4)))]
        generated, k = small(int(rng.integers(1, 50))), int(rng.integers(2, 7))
        m = CopyIndex(training, seed=k).longest_run(generated)
        assert ((m.length, m.piece, m.training_note, m.generated_note) if m.length else (0,)) == \
            brute(training, generated, k)


def test_repeated_notes_everywhere_stay_fast():
    """200 training pieces of one repeated note: every k-gram matches 200,000 places, but only run starts are
    measured, so this takes about a second instead of enumerating 4e8 pairs."""
    start = np.arange(1000) * 0.25
    same = Notes(start, start + 0.2, np.full(1000, 60), np.full(1000, 80))
    match = CopyIndex([same] * 200).longest_run(same)
    assert (match.length, match.piece, match.training_note, match.generated_note) == (1000, 0, 0, 0)


def test_settings_are_checked():
    with pytest.raises(CopyCheckError, match="grid"):
        CopyIndex(TRAINING, grid=0)
    with pytest.raises(CopyCheckError, match="seed"):
        CopyIndex(TRAINING, seed=1)


# --- the command -------------------------------------------------------------------------------


def write_sets(tmp_path):
    """train/: the five training pieces; gen/: one with 40 copied notes, one unrelated."""
    train, gen = tmp_path / "train", tmp_path / "gen"
    train.mkdir()
    gen.mkdir()
    for i, notes in enumerate(TRAINING):
        write_midi(notes, train / f"t{i}.mid")
    write_midi(splice(piece(100), TRAINING[3], at_note=49, first=60, count=40), gen / "copied.mid")
    write_midi(piece(101), gen / "fresh.mid")
    return train, gen


def test_cli_copy_check_against_a_midi_folder(tmp_path, capsys):
    train, gen = write_sets(tmp_path)
    out = tmp_path / "out"
    assert main(["metrics", "--copies", str(train), str(gen), "--copy-threshold", "30", "--out", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    copied_row = next(line for line in text.splitlines() if line.startswith("copied.mid"))
    assert "COPY 40" in copied_row and "t3.mid" in copied_row and "#50" in copied_row and "#60" in copied_row
    assert "COPY" not in next(line for line in text.splitlines() if line.startswith("fresh.mid"))
    report = json.loads((out / "metrics.json").read_text())
    assert "features" not in report and not (out / "kde.png").exists()  # no reference set, no comparison
    copies = report["copies"]
    assert copies["settings"] == {"grid_s": 0.01, "seed_notes": 4, "threshold_notes": 30}
    assert copies["training"]["kind"] == "midi" and copies["training"]["pieces"] == 5
    assert [p.endswith("copied.mid") for p in copies["flagged"]] == [True]
    copied, fresh = copies["pieces"]
    assert copied["copy"] and copied["training_piece"] == "t3.mid" and copied["longest_run"] == 40
    assert (copied["generated_note"], copied["training_note"]) == (50, 60)
    assert not fresh["copy"] and fresh["longest_run"] < 8
    # the other order of the arguments, the default threshold
    assert main(["metrics", str(gen / "copied.mid"), "--copies", str(train), "--quiet"]) == 0
    assert f"longer than {COPY_THRESHOLD} notes" in capsys.readouterr().out


def test_cli_copy_check_against_a_prepared_folder(tmp_path, capsys):
    """The train split of a `musicgpt prepare` folder, decoded with its tokenizer: the same runs as its MIDI."""
    train, gen = write_sets(tmp_path)
    prepared, out = tmp_path / "prepared", tmp_path / "out"
    assert main(["prepare", str(train), "--out", str(prepared), "--recipe", "folder", "--ratios", "1,0,0",
                 "--jobs", "1", "--quiet"]) == 0
    assert main(["metrics", str(gen), "--copies", str(prepared), "--out", str(out), "--quiet"]) == 0
    assert "(train split)" in capsys.readouterr().out
    from_prepared = json.loads((out / "metrics.json").read_text())["copies"]
    assert from_prepared["training"]["kind"] == "prepared" and from_prepared["training"]["split"] == "train"
    assert main(["metrics", str(gen), "--copies", str(train), "--out", str(out), "--quiet"]) == 0
    from_midi = json.loads((out / "metrics.json").read_text())["copies"]
    differ = ("training_piece", "training_index")  # a name and a position in each source's own order
    (copied, fresh), (copied_midi, fresh_midi) = from_prepared["pieces"], from_midi["pieces"]
    assert {k: v for k, v in copied.items() if k not in differ} == \
        {k: v for k, v in copied_midi.items() if k not in differ}
    assert copied["longest_run"] == 40 and copied["training_piece"] == "t3.mid"  # the manifest's source path
    assert fresh["longest_run"] == fresh_midi["longest_run"]
    # another split: empty here, so nothing is found
    assert main(["metrics", str(gen), "--copies", str(prepared), "--split", "valid", "--quiet"]) == 0
    assert "(valid split): 0 pieces" in capsys.readouterr().out


def test_prepared_training_set_decodes_a_split_named_by_source_path(tmp_path):
    """The Python API of `metrics --copies PREPARED` on a real corpus: a piece of it copies itself whole."""
    prepared = tmp_path / "prepared"
    assert main(["prepare", str(SAMPLE), "--out", str(prepared), "--recipe", "folder", "--ratios", "1,0,0",
                 "--jobs", "1", "--quiet"]) == 0
    training = prepared_training_set(prepared)
    assert (training.kind, training.split) == ("prepared", "train")
    assert sorted(training.names) == sorted(p.name for p in SAMPLE.glob("*.mid")) and len(training.pieces) == 4
    generated = folder_notes(SAMPLE / "pop909_326.mid", progress=False)
    (match,) = check_copies(generated, training, progress=False).matches
    assert match.name == "pop909_326.mid" and match.length == match.generated_notes > 700
    assert (match.generated_note, match.training_note) == (0, 0)
    assert prepared_training_set(prepared, "valid").pieces == []  # prepared with no valid documents
    with pytest.raises(MusicGPTError, match="manifest.json"):
        prepared_training_set(tmp_path / "nothing")


def test_cli_comparison_and_copy_check_together(tmp_path, capsys):
    train, gen = write_sets(tmp_path)
    out = tmp_path / "out"
    assert main(["metrics", str(gen), str(train), "--copies", str(train), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "pitch_class_histogram" in text and "copy check against" in text
    report = json.loads((out / "metrics.json").read_text())
    assert {"features", "reference", "copies"} <= set(report) and (out / "kde.png").is_file()


def test_cli_needs_something_to_do(tmp_path, capsys):
    train, gen = write_sets(tmp_path)
    assert main(["metrics", str(gen)]) == 1
    assert "nothing to do" in capsys.readouterr().err
    assert main(["metrics", str(gen), str(train), "--split", "valid"]) == 1
    assert "--copies is missing" in capsys.readouterr().err
    assert main(["metrics", str(gen), "--copies", str(train), "--split", "valid", "--quiet"]) == 1
    assert "needs a `musicgpt prepare` folder" in capsys.readouterr().err
    assert main(["metrics", str(gen), "--copies", str(train), "--copy-threshold", "-1", "--quiet"]) == 1
    assert "threshold" in capsys.readouterr().err
