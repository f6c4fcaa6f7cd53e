"""Steering a model (issue #15): generation with controls and guidance, infilling, evaluation under a control, the CLI.

A tiny random model grown to a vocabulary with controls and infilling tokens stands in for a trained one:
these tests pin the mechanics (what the model reads, the clock, the files), not the music.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
import torch

import musicgpt
from musicgpt.arcs.capture import ArcsConfig
from musicgpt.arcs.format import validate_arcs
from musicgpt.cli import main
from musicgpt.errors import ConfigError
from musicgpt.generation.loop import Generation, GenerationSettings
from musicgpt.generation.sampling import SamplingConfig
from musicgpt.music.scores import read_notes
from musicgpt.tokens.controls import controls_vocabulary
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.training.conditioning import carry_over

from tiny_models import FIXTURES, PRIMER, tiny_model

PLAIN = PerformanceTokenizer()
ROOT = Path(__file__).resolve().parents[1]
TOK = PerformanceTokenizer(controls=controls_vocabulary(["composer", "density"], ["Bach", "Chopin"]), infill=True)


@pytest.fixture(scope="module")
def model():
    grown, _ = carry_over(tiny_model(), PLAIN, TOK, "test")
    return grown.eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "steer", tokenizer=TOK)


def test_controls_open_the_prompt_and_guidance_one_changes_nothing(model):
    header = TOK.header({"composer": "Chopin", "density": "high"})
    kw = dict(tokenizer=TOK, max_new_tokens=20, seed=3, primer_tokens=30, stop_at_eos=False)
    (a,) = musicgpt.generate(model, PRIMER, controls=["composer=Chopin", "density=high"], **kw)
    (b,) = musicgpt.generate(model, PRIMER, controls={"composer": "chopin", "density": "high"}, guidance=1.0, **kw)
    (plain,) = musicgpt.generate(model, PRIMER, **kw)
    assert a.ids[: len(header)].tolist() == header.tolist() and a.ids[len(header)] == TOK.bos_id
    assert a.ids.tolist() == b.ids.tolist()
    assert plain.ids[0] == TOK.bos_id and len(plain.ids) == len(a.ids) - len(header)
    with torch.no_grad():  # the model reads the header: its next-token distribution moves
        after = model(torch.from_numpy(a.ids[: a.primer_length])[None]).logits[0, -1]
        without = model(torch.from_numpy(plain.ids[: plain.primer_length])[None]).logits[0, -1]
    assert not torch.allclose(after, without)
    assert len(a.notes) == len(TOK.decode(a.ids))  # CONTROL tokens decode to nothing


def test_guidance_mixes_the_two_passes_as_full_forward_passes_say(model):
    header = TOK.header({"composer": "Bach"})
    music = np.r_[TOK.bos_id, TOK.encode(PRIMER).ids[:40]]
    settings = GenerationSettings(max_new_tokens=5, seconds=None, sampling=SamplingConfig(), seed=1, num_samples=2,
                                  arcs=None, stop_at_eos=False, return_logits=False, chunk=16, max_note_seconds=0.0,
                                  guidance=2.5)
    g = Generation(model, TOK, np.r_[header, music], settings, uncond_prompt=music)
    for _ in range(5):
        seqs = [np.asarray(s) for s in g.seqs]
        with torch.no_grad():
            cond = torch.log_softmax(model(torch.from_numpy(np.stack(seqs))).logits[:, -1], -1)
            uncond = torch.log_softmax(model(torch.from_numpy(np.stack([s[len(header):] for s in seqs]))).logits[:, -1], -1)
        torch.testing.assert_close(g.guidance.mix(g.logits), uncond + 2.5 * (cond - uncond), atol=2e-4, rtol=0)
        g.step()


def test_bad_controls_and_guidance_are_refused(model):
    with pytest.raises(ConfigError, match="trained without control tokens"):
        musicgpt.generate(tiny_model(), None, tokenizer=PLAIN, controls={"composer": "Bach"}, max_new_tokens=2)
    with pytest.raises(ConfigError, match="guidance: steers towards controls"):
        musicgpt.generate(model, None, tokenizer=TOK, guidance=2.0, max_new_tokens=2)
    with pytest.raises(ConfigError, match="guidance: must be a positive number"):
        musicgpt.generate(model, None, tokenizer=TOK, controls={"density": "low"}, guidance=0, max_new_tokens=2)
    with pytest.raises(ConfigError, match="density='fast': unknown value"):
        musicgpt.generate(model, None, tokenizer=TOK, controls={"density": "fast"}, max_new_tokens=2)
    with pytest.raises(ConfigError, match="not trained for infilling"):
        musicgpt.infill(tiny_model(), PRIMER, 1.0, 2.0, tokenizer=PLAIN)
    with pytest.raises(ConfigError, match="0 <= START < END"):
        musicgpt.infill(model, PRIMER, 5.0, 5.0, tokenizer=TOK)


@pytest.mark.parametrize("start,end", [(3.0, 6.5), (0.0, 1.5), (60.0, 90.0)])
def test_infill_keeps_the_rest_exactly_and_fills_only_the_gap(model, start, end, tmp_path):
    original = read_notes(PRIMER)
    samples = musicgpt.infill(model, PRIMER, start, end, tokenizer=TOK, seed=2, num_samples=2, arcs=True,
                              controls={"composer": "Bach"}, guidance=1.5)
    outside = (original.start < start) | (original.start >= end)
    for s in samples:
        assert s.stop_reason == "end" and s.infill == (start, end)
        kept, new = s.notes[s.primer_notes], s.notes[~s.primer_notes]
        np.testing.assert_array_equal(kept.start, original.start[outside])  # exact: not re-quantized
        np.testing.assert_array_equal(kept.pitch, original.pitch[outside])
        assert (kept.end <= original.end[outside]).all()  # cut only where a new note of the pitch begins
        assert len(new) and (new.start >= start).all() and (new.start < end).all() and (new.end <= end + 1e-9).all()
        assert np.isfinite(s.note_nll[~s.primer_notes]).all() and np.isnan(s.note_nll[s.primer_notes]).all()
        validate_arcs(s.arcs)
        notes = s.arcs["notes"]
        assert s.arcs["infill"] == [start, end] and {n["part"] for n in notes} <= {"prefix", "middle", "suffix"}
        assert all(n["start"] >= end - 0.006 for n in notes if n["part"] == "suffix")
        forward = [a for a in s.arcs["arcs"] if notes[a["key"]]["start"] > notes[a["query"]]["start"]]
        assert all(notes[a["key"]]["part"] == "suffix" != notes[a["query"]]["part"] for a in forward)
        assert bool(forward) == any(n["part"] == "suffix" for n in notes)  # read first, attended to
        path = s.save(tmp_path, "x")[0]
        midi = pretty_midi.PrettyMIDI(str(path))
        assert [i.name for i in midi.instruments] == ["piece", "infill"]
        assert sum(len(i.notes) for i in midi.instruments) == len(s.notes)
        mido.MidiFile(path)  # parses


def test_every_infill_of_random_spans_is_valid_midi(model, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        start = float(rng.uniform(0, 70))
        end = start + float(rng.uniform(0.2, 8))
        (s,) = musicgpt.infill(model, PRIMER, start, end, tokenizer=TOK, seed=i, temperature=1.3)
        path = s.save(tmp_path, f"s{i}")[0]
        notes = pretty_midi.PrettyMIDI(str(path)).instruments
        for pitch in range(128):  # no two notes of one pitch overlap
            spans = sorted((n.start, n.end) for inst in notes for n in inst.notes if n.pitch == pitch)
            assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:]))


def test_cli_lists_controls_generates_with_them_and_infills(checkpoint, tmp_path, capsys):
    assert main(["generate", str(checkpoint), "--list-controls"]) == 0
    out = capsys.readouterr().out
    assert "composer: Bach, Chopin, unknown" in out and "density: low, medium, high" in out and "infill: yes" in out
    assert main(["generate", str(checkpoint), "--primer", str(PRIMER), "--primer-tokens", "40", "--max-new-tokens",
                 "12", "--control", "composer=Chopin", "--guidance", "2", "--seed", "1", "--quiet", "--out",
                 str(tmp_path / "g")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", str(checkpoint), "--primer", str(PRIMER), "--infill", "2", "4", "--seed", "1", "--arcs",
                 "--quiet", "--out", str(tmp_path / "i")]) == 0
    assert "new notes in 2-4 s" in capsys.readouterr().out
    assert json.loads((tmp_path / "i" / "sample_00.arcs.json").read_text())["infill"] == [2.0, 4.0]
    html = (tmp_path / "i" / "sample_00.html").read_text()
    assert "suffix" in html
    assert main(["generate", str(checkpoint), "--infill", "2", "4", "--quiet"]) == 1
    assert "needs --primer FILE" in capsys.readouterr().err
    plain = tiny_model().save_pretrained(tmp_path / "plain", tokenizer=PLAIN)
    assert main(["generate", str(plain), "--control", "composer=Bach", "--max-new-tokens", "2", "--quiet",
                 "--out", str(tmp_path / "p")]) == 1
    assert "trained without control tokens" in capsys.readouterr().err


def test_evaluate_reads_each_files_composer_or_the_given_control(checkpoint, tmp_path, capsys):
    from musicgpt.corpus.prepare import prepare
    from musicgpt.training.evaluate import evaluate_checkpoint

    corpus = tmp_path / "corpus"
    for composer, name in (("Bach", "pop909_331.mid"), ("Chopin", "pop909_806.mid")):
        (corpus / composer).mkdir(parents=True)
        shutil.copy(FIXTURES / name, corpus / composer / "a.mid")
    prepared = tmp_path / "prepared"
    prepare(corpus, prepared, composer_from="folder", ratios=(1, 0, 0), jobs=1, progress=False)
    own = evaluate_checkpoint(checkpoint, [prepared], split="train", progress=False)
    given = evaluate_checkpoint(checkpoint, [prepared], split="train", progress=False, controls=["composer=Bach"])
    plain = evaluate_checkpoint(checkpoint, [prepared], split="train", progress=False, own_controls=False)
    assert own.controls == "each document's own composer (2 of 2 known)" and given.controls == "composer=Bach"
    assert plain.controls == "none" and own.n_tokens == given.n_tokens == plain.n_tokens
    assert len({round(r.nll, 6) for r in (own, given, plain)}) == 3  # three different readings
    assert main(["evaluate", str(checkpoint), "--data", str(prepared), "--split", "train", "--control",
                 "composer=Bach", "--quiet"]) == 0
    assert "controls    composer=Bach" in capsys.readouterr().out


def test_the_steering_benchmark_accepts_a_true_infill_and_catches_a_moved_kept_note(model, tmp_path):
    spec = importlib.util.spec_from_file_location("steering_bench", ROOT / "bench" / "steering.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    original = read_notes(PRIMER)
    (s,) = musicgpt.infill(model, PRIMER, 3.0, 6.5, tokenizer=TOK, seed=4)
    path = s.save(tmp_path, "x")[0]
    problems, error = bench._check_infill(path, original, 3.0, 6.5)
    assert problems == [] and error <= 0.25e-3 + 1e-9  # ticks are 0.5 ms: writing rounds by at most half of one
    moved = original.start.copy()
    moved[np.flatnonzero(original.start >= 6.5)[0]] += 0.005
    shifted = type(original)(moved, original.end + (moved - original.start), original.pitch, original.velocity)
    problems, error = bench._check_infill(path, shifted, 3.0, 6.5)
    assert problems == ["a kept note moved by 5.00 ms"], problems


def test_the_long_controls_benchmark_compares_a_pinned_header_with_one_that_slides_out(model):
    from musicgpt.generation import loop

    spec = importlib.util.spec_from_file_location("steering_bench", ROOT / "bench" / "steering.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    original = loop.pinned_header
    out = bench.long_controls(model, TOK, PRIMER, 1, 6.0)
    assert loop.pinned_header is original  # switched back after the unpinned runs
    assert [(r["pinned"], r["asked"]) for r in out["runs"]] == [(True, "low"), (True, "high"), (False, "low"),
                                                                  (False, "high")]
    assert all(r["notes_per_second_first_third"] >= 0 for r in out["runs"]) and "high_minus_low_last_third_pinned" in out


def test_the_png_of_an_infilled_piece_shades_the_gap_and_dashes_arcs_to_later_notes(model, tmp_path):
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch

    from musicgpt.viz.png import SUFFIX_COLOR, draw_arcs, render_png

    (s,) = musicgpt.infill(model, PRIMER, 3.0, 6.5, tokenizer=TOK, seed=2, arcs=True)
    d, notes = s.arcs, s.arcs["notes"]
    forward = [a for a in d["arcs"] if notes[a["key"]]["start"] > notes[a["query"]]["start"]]
    q = forward[0]["query"]
    ax = Figure().add_subplot()
    assert draw_arcs(ax, d, q, layers=[forward[0]["layer"]], top=None, threshold=0.0) == q
    dashed = [p for p in ax.patches if isinstance(p, PathPatch) and p.get_linestyle() not in ("-", "solid")]
    assert dashed, "an arc to a later (suffix) note is drawn dashed"
    role = {"prefix": "kept, before the gap", "middle": "infilled"}[notes[q]["part"]]  # the suffix is read first
    assert role in ax.get_title(loc="left") and [t.get_text() for t in ax.texts] == [" infill ▸"]
    faces = [tuple(round(c, 3) for c in fc[:3]) for coll in ax.collections for fc in coll.get_facecolors()]
    assert tuple(round(int(SUFFIX_COLOR[i:i + 2], 16) / 255, 3) for i in (1, 3, 5)) in faces
    assert render_png(d, tmp_path / "infill.png", q).__eq__(q) and (tmp_path / "infill.png").stat().st_size > 0


def test_controls_stay_in_the_window_of_a_generation_longer_than_the_context(model):
    """Past n_ctx the CONTROL header stays first in the window (as in every training crop), arcs included."""
    from musicgpt.generation.loop import pinned_header
    from test_kv_cache import pinned_reference

    header = TOK.header({"composer": "Chopin", "density": "high"})
    music = np.r_[TOK.bos_id, TOK.encode(PRIMER).ids[:40]]
    assert pinned_header(TOK, np.r_[header, music]) == 2 and pinned_header(TOK, music) == 0
    assert pinned_header(PLAIN, music) == 0 and pinned_header(TOK, header) == 2
    infill_prompt = np.r_[header, TOK.suffix_id, music[1:5], TOK.prefix_id, music]
    assert pinned_header(TOK, infill_prompt) == 0  # its suffix block would not be kept: neither is its header
    settings = GenerationSettings(max_new_tokens=300, seconds=None, sampling=SamplingConfig(), seed=2, num_samples=1,
                                  arcs=ArcsConfig(), stop_at_eos=False, return_logits=False, chunk=16,
                                  max_note_seconds=0.0, guidance=1.0)
    g = Generation(model, TOK, np.r_[header, music], settings)
    assert g.cache.pinned == 2
    while not g.done:
        g.step()
    seq = torch.tensor([g.seqs[0][: g.cache.length]])  # the last token is fed only when its arcs are wanted
    assert seq.shape[1] > 2 * model.config.n_ctx
    with torch.no_grad():
        expected = pinned_reference(model, seq, model.config.n_ctx, 2)[0, -1]
    assert (g.logits[0] - expected).abs().max() <= 1e-4  # the next token's distribution: header still read
    (sample,) = g.samples()
    validate_arcs(sample.arcs)
