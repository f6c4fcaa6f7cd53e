"""Continuation measures (musicgpt.metrics.continuation), the copy check's primer exclusion, "follow the primer"
in the set-up, and bench/continuation.py at a tiny size."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgpt.generation.setup import GenerationRequest, prepare
from musicgpt.metrics.continuation import MEASURES, Spread, degenerate, looped, measures, ngram_return, window
from musicgpt.metrics.copies import COPY_THRESHOLD, CopyIndex, check_copies
from musicgpt.metrics.folder import folder_notes
from musicgpt.music.midi import write_tracks
from musicgpt.music.notes import Notes
from tiny_models import long_midi, steering_model

ROOT = Path(__file__).resolve().parents[1]


def piece(seed: int, seconds: float = 100.0, rate: float = 6.0, low: int = 48, loud: int = 70) -> Notes:
    """Random piano notes on a 10 ms grid: about `rate` notes a second, pitches from `low` up two octaves."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    start = np.round(np.sort(rng.uniform(0, seconds, n)), 2)
    pitch = low + rng.choice([0, 2, 4, 5, 7, 9, 11, 12, 14, 16, 17, 19, 21, 23], n)
    return Notes.from_unsorted(start, start + rng.uniform(0.1, 0.6, n), pitch, rng.integers(loud - 15, loud + 15, n))


def spread_of(notes: Notes, tc: float = 40.0, n: float = 20.0) -> tuple[Spread, Notes]:
    """The spread of the window [tc, tc + n) of `notes` with its neighbours, and the primer before it."""
    primer = window(notes, tc - 20, tc)
    neighbours = [window(notes, tc + n, tc + 2 * n), window(notes, tc + 2 * n, tc + 3 * n), window(notes, 0, tc - 20)]
    return Spread.of(window(notes, tc, tc + n), neighbours, primer, n), primer


def test_the_real_continuation_scores_within_its_spread_and_silence_does_not():
    notes = piece(0)
    spread, primer = spread_of(notes)
    assert spread.neighbours == 3
    copy = window(notes, 40, 60)
    assert all(spread.within(measures(copy, primer, 20.0)).values())
    silence = spread.within(measures(Notes.empty(), primer, 20.0))
    assert not any(silence.values()) and set(silence) == set(MEASURES)


def test_music_of_another_kind_falls_outside():
    spread, primer = spread_of(piece(0))
    other = window(piece(1, rate=20.0, low=70, loud=110), 40, 60)  # dense, high, loud
    within = spread.within(measures(other, primer, 20.0))
    for name in ("density", "pitch_mean", "velocity_mean", "pitch_class_profile"):
        assert not within[name], name


def test_ngram_return_counts_primer_material_and_the_loop_returns_all_of_it():
    primer = window(piece(2), 0, 20)
    loop = looped(primer, 20.0, 30.0)
    assert len(loop) > len(primer) and loop.end_time <= 30.0
    assert ngram_return(loop, primer) > 0.95  # all but the n-grams across a lap's seam
    transposed = primer.transposed(5)
    assert ngram_return(transposed, primer) < 0.2  # other pitches ...
    assert ngram_return(transposed, primer, intervals=True) == 1.0  # ... the same intervals
    assert ngram_return(Notes.empty(), primer) is None


def test_degenerate_flags_silence_and_a_stuck_note_but_not_real_music():
    real = [window(piece(s), 0, 20) for s in range(4)]
    stuck = Notes(np.arange(0, 20, 0.1), np.arange(0, 20, 0.1) + 0.05, np.full(200, 60), np.full(200, 80))
    assert degenerate([real[0], Notes.empty(), stuck], real) == [False, True, True]


def test_a_primed_sample_is_not_a_copy_of_its_primer_but_copying_on_is(tmp_path):
    training = piece(3, seconds=60)
    primer, rest = window(training, 0, 30), training[training.start >= 30]
    other = piece(4, seconds=30).shifted(30.5)
    write_tracks([("primer", primer), ("continuation", other)], tmp_path / "own.mid")
    write_tracks([("primer", primer), ("continuation", rest)], tmp_path / "copying.mid")
    index = CopyIndex([training])
    assert index.longest_run(Notes.concat([primer, other])).length > COPY_THRESHOLD  # the primer alone
    assert index.longest_run(Notes.concat([primer, other]), exclude=primer).length < 8
    check = check_copies(folder_notes(tmp_path, progress=False), _training(training), progress=False)
    runs = {p.name: m.length for p, m in zip(check.generated.files, check.matches)}
    assert runs["own.mid"] < 8 and runs["copying.mid"] > COPY_THRESHOLD
    match = check.matches[[p.name for p in check.generated.files].index("copying.mid")]
    assert match.generated_note >= len(primer)  # counted in the whole piece, primer included


def _training(notes: Notes):
    from musicgpt.metrics.copies import TrainingSet

    return TrainingSet(Path("training"), "midi", ["training.mid"], [notes])


def test_follow_primer_reads_density_from_the_primer_unless_given_or_off():
    model, tokenizer = steering_model()
    dense = piece(5, seconds=1, rate=25.0)
    names = lambda plan: [tokenizer.token_name(int(t)) for t in plan.prompt[: len(plan.prompt) - len(plan.unconditional)]]
    followed = names(prepare(model, tokenizer, GenerationRequest(primer=dense, seconds=1, seed=0)))  # the default
    assert any("density" in n and "high" in n for n in followed)
    given = names(prepare(model, tokenizer, GenerationRequest(primer=dense, seconds=1, seed=0,
                                                                follow_primer=True, controls={"density": "low"})))
    assert any("density" in n and "low" in n for n in given) and not any("high" in n for n in given)
    assert names(prepare(model, tokenizer, GenerationRequest(primer=dense, seconds=1, seed=0,
                                                             follow_primer=False))) == []


def test_the_benchmark_at_a_tiny_size(tmp_path, monkeypatch):
    from bench import continuation

    model, tokenizer = steering_model()
    ckpt = model.save_pretrained(tmp_path / "ckpt", tokenizer=tokenizer)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for s in range(5):
        long_midi(corpus / f"piece{s}.mid", bars=10, seed=s)  # 20 s each
    out = tmp_path / "continuation.json"
    monkeypatch.chdir(ROOT)
    code = continuation.main(["--checkpoint", str(ckpt), "--asap", str(corpus), "--pop909", str(tmp_path / "none"),
                              "--split", "train", "--primers", "3", "--primer-seconds", "3", "--seconds", "2",
                              "--seeds", "2", "--copies", str(corpus), "--out", str(out)])
    assert code == 0
    d = json.loads(out.read_text())
    assert d["primers"] == 3 and d["sets"]["generated"]["windows"] == 6
    for name in ("generated", "looped", "floor"):
        share = d["sets"][name]
        assert 0 <= share["summary"] <= 1 and set(share["per_measure"]) == set(MEASURES)
    assert d["sets"]["generated"]["copies"]["threshold"] == COPY_THRESHOLD
    assert {r["t0"] for r in d["rows"]} != {0.0}  # not only the start of each piece
    from bench.report_continuation import section_continuation

    lines, headline = section_continuation(d)
    assert "summary share" in headline and any("degenerate windows" in line for line in lines)
    sys.modules.pop("bench.continuation", None)
