"""The bundled model: its files, its card and license, a few seeded tokens; and the wiring that makes every
command use it when no checkpoint is given (tested with a tiny model standing in, so it runs without the weights)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import musicgpt
from musicgpt import checkpoint
from musicgpt.cli import main
from musicgpt.errors import CheckpointError
from musicgpt.model import GPTConfig, MusicGPT, load_checkpoint, load_model, save_model
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import PRIMER, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ and tools/ are packages of the checkout, not of the installed library

from bench import model_card  # noqa: E402
from tools import install_pretrained  # noqa: E402

BUNDLED = checkpoint.DEFAULT_DIR
EXAMPLE = ROOT / "examples" / "bach_prelude_bwv846_shi.mid"
MAX_BYTES = 25_000_000

needs_weights = pytest.mark.skipif(
    not (BUNDLED / checkpoint.WEIGHTS).is_file(),
    reason=f"no bundled weights yet: {BUNDLED / checkpoint.WEIGHTS} is absent (install them with "
           "python -m tools.install_pretrained)")


# ---- the shipped model ----

def test_license_note_names_the_inherited_license():
    text = (BUNDLED / "LICENSE").read_text()
    assert "CC BY-NC-SA 4.0" in text and "ASAP" in text


@needs_weights
def test_bundled_files_config_and_tokenizer_agree():
    config, raw = GPTConfig.from_checkpoint(), checkpoint.read_config()
    tokenizer = checkpoint.load_tokenizer()
    assert raw["format"] == checkpoint.FORMAT
    assert isinstance(tokenizer, PerformanceTokenizer)
    assert tokenizer.vocab_size == config.vocab_size
    # steerable: the default codec's 391 tokens first, unchanged, so what PerformanceTokenizer() encodes is what the
    # model learned; then the controls and infilling tokens
    plain = PerformanceTokenizer()
    assert {k: v for k, v in tokenizer.params().items() if k not in ("controls", "infill")} == plain.params()
    assert [tokenizer.token_name(i) for i in range(plain.vocab_size)] == [plain.token_name(i) for i in range(391)]
    assert set(tokenizer.controls) == {"composer", "density", "dynamics"} and tokenizer.infill
    assert {"Bach", "Chopin", "Liszt", "unknown"} <= set(tokenizer.controls["composer"])
    assert config.position == "relative"
    assert (BUNDLED / checkpoint.WEIGHTS).stat().st_size <= MAX_BYTES
    card = (BUNDLED / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "ASAP" in card
    assert "Not the final figures" not in card, "the card holds intermediate figures: regenerate it"
    # installed by tools.install_pretrained, and the card describes these very weights
    sha = install_pretrained.sha256(BUNDLED / checkpoint.WEIGHTS)
    assert raw["meta"]["weights_sha256"] == sha
    assert sha[:16] in card, "MODEL_CARD.md was measured on other weights: rerun python -m bench.bundled_model"


@needs_weights
def test_bundled_model_loads_and_generates_seeded_tokens():
    model = MusicGPT.from_pretrained()
    assert model.tok_emb.weight.shape[0] == checkpoint.load_tokenizer().vocab_size
    runs = [musicgpt.generate(primer=EXAMPLE, primer_tokens=64, max_new_tokens=24, seed=7, stop_at_eos=False)[0]
            for _ in range(2)]
    assert runs[0].n_generated == 24
    np.testing.assert_array_equal(runs[0].ids, runs[1].ids)
    tokenizer = checkpoint.load_tokenizer()
    assert tokenizer.grammar().accepts(runs[0].ids[1:])
    assert len(runs[0].notes) > 0


# ---- installing a checkpoint as the bundled model (tiny stand-in) ----

def test_install_copies_verifies_and_keeps_other_files(tmp_path):
    source = tiny_checkpoint(tmp_path / "run" / "best")
    dest = tmp_path / "pretrained"
    dest.mkdir()
    (dest / "LICENSE").write_text("license note")
    done = install_pretrained.install(tmp_path / "run", dest)  # a run directory means its best/
    assert done["verified"] and done["max_logit_diff"] == 0.0 and done["stored_dtype"] == "float32"
    assert (dest / "LICENSE").read_text() == "license note"
    raw = checkpoint.read_config(dest)
    assert raw["meta"]["source"] == str(source.resolve())
    assert raw["meta"]["weights_sha256"] == install_pretrained.sha256(dest / checkpoint.WEIGHTS)
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_install_stores_float16_over_the_size_limit(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    fp32 = (tmp_path / "ckpt" / checkpoint.WEIGHTS).stat().st_size
    done = install_pretrained.install(tmp_path / "ckpt", tmp_path / "small", max_bytes=fp32 - 1)
    assert done["stored_dtype"] == "float16" and done["bytes"] < fp32 * 0.6 and done["max_logit_diff"] > 0
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "small" / checkpoint.WEIGHTS)).values()} == {torch.float16}
    again = install_pretrained.install(tmp_path / "small", tmp_path / "again", max_bytes=fp32 - 1)
    assert again["stored_dtype"] == "float16" and again["max_logit_diff"] == 0.0  # float16 -> float16: exact
    assert again["sha256"] == done["sha256"]
    with pytest.raises(CheckpointError, match="limit"):
        install_pretrained.install(tmp_path / "ckpt", tmp_path / "tiny", max_bytes=fp32 // 4)


def test_install_falls_back_to_bfloat16_for_weights_outside_float16(tmp_path):
    tiny_checkpoint(tmp_path / "ckpt")
    model, tokenizer = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        model.blocks[0].mlp.fc.bias[0] = 1e5  # past float16's largest finite value
    save_model(model, tmp_path / "big", tokenizer)
    fp32 = (tmp_path / "big" / checkpoint.WEIGHTS).stat().st_size
    done = install_pretrained.install(tmp_path / "big", tmp_path / "small", max_bytes=fp32 - 1)
    assert done["stored_dtype"] == "bfloat16"


# ---- every command uses the bundled model when none is given ----

@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A tiny checkpoint installed as the bundled model."""
    tiny_checkpoint(tmp_path / "src")
    install_pretrained.install(tmp_path / "src", tmp_path / "pretrained")
    monkeypatch.setattr(checkpoint, "DEFAULT_DIR", tmp_path / "pretrained")
    return tmp_path / "pretrained"


def test_python_api_defaults_to_the_bundled_model(stand_in):
    reference = load_model(stand_in)
    model = MusicGPT.from_pretrained()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    (sample,) = musicgpt.generate(max_new_tokens=8, seed=1, stop_at_eos=False)
    assert sample.n_generated == 8


def test_commands_default_to_the_bundled_model(stand_in, tmp_path, capsys):
    assert main(["info"]) == 0
    assert f"checkpoint  {stand_in}" in capsys.readouterr().out
    assert main(["evaluate", "--data", str(PRIMER), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint  {stand_in}" in out and "\nnll " in out
    assert main(["generate", "--primer", str(PRIMER), "--primer-tokens", "32", "--max-new-tokens", "16",
                 "--seed", "3", "--arcs", "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    assert (tmp_path / "gen" / "sample_00.mid").is_file() and (tmp_path / "gen" / "sample_00.html").is_file()
    assert main(["attend", str(PRIMER), "--tokens", "48", "--out", str(tmp_path / "att")]) == 0
    assert (tmp_path / "att" / f"{PRIMER.stem}.arcs.json").is_file()


def test_missing_bundled_model_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "DEFAULT_DIR", tmp_path / "pretrained")
    assert main(["info"]) == 1
    assert "bundled model" in capsys.readouterr().err


# ---- the card renderer ----

def _measured() -> dict:
    """bench/results/bundled_model.json (skip the test when it has not been measured)."""
    results = ROOT / "bench" / "results" / "bundled_model.json"
    if not results.is_file():
        pytest.skip(f"{results} not measured yet (python -m bench.bundled_model)")
    return json.loads(results.read_text())


def test_card_renders_from_the_measured_results(tmp_path):
    data = _measured()
    text = model_card.write_card(data, tmp_path / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in text
    nll = data["evaluations"][f"asap/test/{data['checkpoint']['model']['n_ctx']}"]["nll"]
    assert f"{nll:.4f}" in text
    assert data["run"]["command"] in text
    # commands recorded as `python bench/bundled_model.py ...` before bench/ became a package run as modules now
    assert "python -m bench.bundled_model --run" in text and "python bench/" not in text


def test_card_renders_a_fine_tune_with_its_base_and_steering_figures(tmp_path):
    measured = _measured()
    # the plain model's results: the base of the measured fine-tune, or the measured results themselves
    base = measured.get("base") or {k: measured.get(k) for k in ("checkpoint", "run", "evaluations", "absolute_twin")}
    base = {**measured, **base}
    base.pop("base", None), base.pop("steering", None)
    base["checkpoint"]["tokenizer"] = {k: v for k, v in base["checkpoint"]["tokenizer"].items()
                                       if k not in ("controls", "infill")}
    tuned = json.loads(json.dumps(base))
    tuned["checkpoint"]["meta"]["weights_sha256"] = "ab" * 32
    tuned["checkpoint"]["tokenizer"].update(controls={"composer": ["Bach", "unknown"]}, infill=True)
    tuned["run"] = {**tuned["run"], "init_from": "bundled", "config": {**tuned["run"]["config"],
                    "finetune": {"lr": 1.5e-4, "min_lr": 1.5e-5, "warmup_steps": 50, "steps": 1200}}}
    tuned["evaluations"]["asap/test/1024"]["nll"] = 2.0011
    tuned.pop("absolute_twin", None)  # the fine-tune has no twin of its own: the base's is shown
    tuned["base"] = {k: base[k] for k in ("checkpoint", "run", "evaluations", "absolute_twin", "command")}
    runs = [{"guidance": g, "asked": a, "measured": [a], "match_share": m, "notes_per_second": n, "tokens_per_s": 50}
            for g, a, m, n in ((1.0, "low", 0.5, 7.0), (1.0, "high", 0.5, 12.0), (2.5, "low", 1.0, 5.0),
                               (2.5, "high", 1.0, 16.0))]
    tuned["steering"] = {
        "checkpoint": "musicgpt/pretrained", "weights_sha256": "ab" * 32, "quick": False,
        "plain": {"model": {"nll": 2.0011, "n_docs": 57, "checkpoint": "x"},
                  "baseline": {"nll": 1.9933, "checkpoint": "runs/plain"}, "difference": 0.0078},
        "composers": {"rows": ["Bach", "Liszt"], "columns": ["Bach", "Liszt", "unknown", "none"], "windows_per_doc": 2,
                      "docs": {"Bach": 18, "Liszt": 29},
                      "nll": {"Bach": {"Bach": 1.9, "Liszt": 2.0, "unknown": 1.95, "none": 1.96},
                              "Liszt": {"Bach": 2.1, "Liszt": 2.05, "unknown": 2.06, "none": 2.07}},
                      "diagonal_lowest": {"Bach": True, "Liszt": True}, "true_below_none": {"Bach": True, "Liszt": True}},
        "infill_nll": {"gaps": 60, "middle_tokens": 12345, "suffix_helped_share": 0.8,
                       "nll": {"prefix_and_suffix": 1.81, "prefix_alone": 1.93, "prefix_empty_suffix": 1.95}},
        "infill_validity": {"infills": 50, "valid": 50, "kept_onsets_exact_in_memory": 50,
                            "kept_onset_error_max_ms": 0.25, "new_notes_mean": 61.2},
        "guidance": {"samples": 4, "seconds": 15.0, "runs": runs, "match_share_g1": 0.5, "match_share_g2.5": 1.0,
                     "guided_over_unguided_tokens_per_s": 0.55},
        "long_controls": {"samples": 4, "seconds": 90.0, "high_minus_low_last_third_pinned": 2.0,
                          "high_minus_low_last_third_unpinned": -1.0,
                          "runs": [{"pinned": p, "asked": a, "notes_per_second_first_third": f,
                                    "notes_per_second_last_third": last, "window_slid_at_seconds": [10.0, 14.0]}
                                   for p, a, f, last in ((True, "low", 8.0, 9.0), (True, "high", 14.0, 11.0),
                                                         (False, "low", 8.0, 12.0), (False, "high", 14.0, 11.0))]}}
    text = model_card.render(tuned)
    assert "slides past the controls 10-14 s in" in text and "over the last third 9.0 / 11.0 with the controls" in text
    assert "12.0 / 11.0 without them: the density control holds." in text
    assert "## Training: the plain base model" in text and "## Training: the fine-tune for steering" in text
    assert "then fine-tuned for steering" in text and "It can be steered: controls composer (2 values)" in text
    assert "`bundled` was then the plain base model above" in text and "and fine-tuned for" in text
    assert "Measured on these weights" in text and "**50/50 valid**" in text and "**2.0011** against 1.9933" in text
    assert "| Bach | 18 | **1.900** | 2.000 | 1.950 | 1.960 |" in text and "+0.0078" in text
    assert "guidance 2.5: low 5.0, high 16.0 notes/s" in text and "lr 0.00015" in text
    assert "The base model's relative attention vs its absolute-position twin" in text
    plain = model_card.render({**base, "steering": {**tuned["steering"], "weights_sha256": None}})
    assert "**Measured on another checkpoint**" in plain and "It has no control or infilling tokens" in plain
