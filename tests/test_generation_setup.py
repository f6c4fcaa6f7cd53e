"""Generation is set up in one place: the CLI, the Python API, the studio's form and infilling turn equal
arguments into equal prompts and settings (musicgpt.generation.setup), and a loaded model reads with its
checkpoint's tokenizer."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import musicgpt
import musicgpt.generation.infilling as infilling
import musicgpt.generation.loop as loop
from musicgpt.arcs.capture import ArcsConfig
from musicgpt.cli import main
from musicgpt.errors import ConfigError
from musicgpt.generation.setup import (DEFAULT_MAX_NOTE_SECONDS, DEFAULT_NEW_TOKENS, GenerationRequest, prepare)
from musicgpt.studio.files import FileStore
from musicgpt.studio.form import parse_fields
from musicgpt.studio.takes import TakeRunner

ROOT = Path(__file__).resolve().parents[1]
PRIMER = ROOT / "examples" / "pop909_001.mid"


@pytest.fixture(scope="module")
def bundled():
    return musicgpt.load_model()


@pytest.fixture
def plans(monkeypatch):
    """The plans `run` was handed (it generates nothing here: the set-up is what is compared)."""
    seen = []

    def run(model, tokenizer, plan, **kwargs):
        seen.append(plan)
        return []

    monkeypatch.setattr(loop, "run", run)
    monkeypatch.setattr(infilling, "run", run)
    return seen


def studio_plan(model, tmp_path, **fields):
    """The plan a studio take of these form fields prepares."""
    request = replace(parse_fields({k: str(v) for k, v in fields.items()}), primer_path=PRIMER, primer_name="p.mid")
    files = FileStore()
    runner = TakeRunner(model, model.tokenizer, files)
    try:
        return runner._plan(request)[0]
    finally:
        runner.close()
        files.close()  # its temporary folder goes


def same(a, b) -> None:
    assert a.settings == b.settings
    assert np.array_equal(a.prompt, b.prompt) and np.array_equal(a.unconditional, b.unconditional)
    assert a.infill == b.infill


def test_a_loaded_model_carries_its_checkpoints_tokenizer(bundled, tmp_path):
    assert bundled.tokenizer is not None and bundled.tokenizer.controls and bundled.tokenizer.infill
    model, tokenizer = musicgpt.load_checkpoint()
    assert tokenizer is model.tokenizer and tokenizer.fingerprint() == bundled.tokenizer.fingerprint()
    assert musicgpt.MusicGPT.from_pretrained().tokenizer.vocab_size == 453
    assert musicgpt.pipeline().tokenizer.controls == bundled.tokenizer.controls
    saved = bundled.save_pretrained(tmp_path / "again")  # the tokenizer it carries is saved with it
    assert musicgpt.load_model(saved).tokenizer.fingerprint() == bundled.tokenizer.fingerprint()


def test_the_readme_steering_and_infill_examples_run_with_load_model(bundled):
    samples = musicgpt.generate(bundled, PRIMER, primer_seconds=2, max_new_tokens=20, controls={"density": "high"},
                                seed=1)
    assert samples[0].n_generated > 0 and samples[0].ids[0] == bundled.tokenizer.header({"density": "high"})[0]
    pieces = musicgpt.infill(bundled, PRIMER, 2.0, 2.5, seed=1)
    assert pieces[0].infill == (2.0, 2.5) and pieces[0].stop_reason in ("end", "length")


def test_cli_python_and_studio_prepare_equal_continuations(bundled, plans, tmp_path):
    assert main(["generate", "--primer", str(PRIMER), "--primer-seconds", "3", "--seconds", "4", "--seed", "5",
                 "--temperature", "0.9", "--top-p", "0.95", "--min-p", "0.01", "--control", "density=high",
                 "--guidance", "2", "--plain-mask", "--max-note-seconds", "3", "--ignore-eos", "--arcs",
                 "--num-samples", "2", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    musicgpt.generate(bundled, PRIMER, primer_seconds=3, seconds=4, seed=5, temperature=0.9, top_p=0.95, min_p=0.01,
                      controls={"density": "high"}, guidance=2, keep_type_mass=False, max_note_seconds=3,
                      stop_at_eos=False, arcs=True, num_samples=2)
    cli, python = plans
    studio = studio_plan(bundled, tmp_path, primer_seconds=3, seconds=4, seed=5, temperature=0.9, top_p=0.95,
                         min_p=0.01, control="density=high", guidance=2, plain_mask="true", max_note_seconds=3,
                         ignore_eos="true", num_samples=2)
    same(cli, python)
    same(cli, studio)
    settings = cli.settings
    assert not settings.sampling.keep_type_mass and settings.max_note_seconds == 3 and not settings.stop_at_eos
    assert settings.arcs == ArcsConfig() and settings.guidance == 2 and settings.seed == 5


def test_the_defaults_live_once(bundled, plans, tmp_path):
    assert main(["generate", "--primer", str(PRIMER), "--primer-tokens", "50", "--seed", "1", "--quiet",
                 "--out", str(tmp_path / "cli")]) == 0
    musicgpt.generate(bundled, PRIMER, primer_tokens=50, seed=1)
    cli, python = plans
    studio = studio_plan(bundled, tmp_path, primer_tokens=50, seed=1, max_new_tokens=DEFAULT_NEW_TOKENS,
                         seconds="")  # the studio's own default length is seconds; ask for generation's instead
    same(cli, python)
    assert replace(studio.settings, arcs=None) == cli.settings  # a studio take always captures its arcs
    assert cli.settings.max_new_tokens == DEFAULT_NEW_TOKENS and cli.settings.max_note_seconds == DEFAULT_MAX_NOTE_SECONDS
    assert cli.settings.sampling.keep_type_mass and cli.settings.stop_at_eos and cli.settings.chunk == 256


def test_infill_honours_the_same_settings_everywhere(bundled, plans, tmp_path):
    assert main(["generate", "--primer", str(PRIMER), "--infill", "2", "4", "--seed", "6", "--control",
                 "dynamics=loud", "--plain-mask", "--max-note-seconds", "2", "--top-k", "40", "--quiet",
                 "--out", str(tmp_path / "cli")]) == 0
    musicgpt.infill(bundled, PRIMER, 2, 4, seed=6, controls=["dynamics=loud"], keep_type_mass=False,
                    max_note_seconds=2, top_k=40)
    cli, python = plans
    studio = studio_plan(bundled, tmp_path, infill_start=2, infill_end=4, seed=6, control="dynamics=loud",
                         plain_mask="true", max_note_seconds=2, top_k=40)
    same(cli, python)
    assert replace(studio.settings, arcs=None) == cli.settings
    settings = cli.settings
    assert not settings.sampling.keep_type_mass and settings.max_note_seconds == 2 and settings.end_steps == 200
    assert not settings.stop_at_eos  # an infilled middle ends at END, never at EOS
    default = prepare(bundled, bundled.tokenizer, GenerationRequest(primer=PRIMER, infill=(2, 4), seed=6))
    assert default.settings.max_note_seconds == 0  # the gap bounds an infilled middle's notes


@pytest.mark.parametrize("flags, words", [
    (["--seconds", "3"], "drop --seconds"), (["--primer-seconds", "3"], "drop --primer-seconds"),
    (["--max-new-tokens", "9"], "drop --max-new-tokens")])
def test_infill_refuses_the_flags_it_cannot_honour(flags, words, capsys):
    assert main(["generate", "--primer", str(PRIMER), "--infill", "2", "4", *flags, "--quiet"]) == 1
    assert words in capsys.readouterr().err


def test_requests_are_checked_before_any_model_work():
    with pytest.raises(ConfigError, match="num_samples"):
        GenerationRequest(num_samples=0)
    with pytest.raises(ConfigError, match="one way, not both"):
        GenerationRequest(primer_seconds=1, primer_tokens=5)
    with pytest.raises(ConfigError, match="0 <= START < END"):
        GenerationRequest(primer=PRIMER, infill=(3, 1))
    with pytest.raises(ConfigError, match="top_p"):
        GenerationRequest(top_p=0)


def test_attend_marks_primer_notes_as_the_command_does(bundled, tmp_path):
    import json

    assert main(["generate", "--primer", str(PRIMER), "--primer-seconds", "4", "--max-new-tokens", "40", "--seed", "1",
                 "--quiet", "--out", str(tmp_path)]) == 0
    doc = musicgpt.attend(bundled, tmp_path / "sample_00.mid")  # the model's own tokenizer, the primer track read
    assert main(["attend", str(tmp_path / "sample_00.mid"), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = json.loads((tmp_path / "cli" / "sample_00.arcs.json").read_text())
    assert 0 < sum(n.get("primer", False) for n in doc["notes"]) < len(doc["notes"])
    assert doc["notes"] == cli["notes"] and doc["arcs"] == cli["arcs"] and doc["source"] == cli["source"]
