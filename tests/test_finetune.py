"""Fine-tuning keeps what the checkpoint can do: --init-from a steerable checkpoint keeps its control and
infilling tokens and rows (musicgpt.training.finetune), unless finetune.keep_steering = false drops them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgpt import checkpoint
from musicgpt.cli import main
from musicgpt.errors import ConfigError
from musicgpt.model.gpt import MusicGPT, load_checkpoint, save_model
from musicgpt.tokens.controls import controls_vocabulary
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.training.conditioning import Conditioner, control_rows
from musicgpt.training.finetune import finetune_tokenizer, untrained_rows
from musicgpt.training.loop import train
from tiny_models import PRIMER
from training_fixtures import micro_config, prepare_fixtures

STEER = PerformanceTokenizer(controls=controls_vocabulary(["composer", "density", "dynamics"], ["Bach", "Chopin"]),
                             infill=True)  # 391 music tokens, then 9 CONTROL, 2 INFILL, 40 GAP
MUSIC = 391
QUICK = {"train": {"eval_every": 0, "checkpoint_every": 100}}


def quick_config(**sections):
    """micro_config without evaluation: a fine-tune of a few steps in a fraction of a second."""
    merged = {name: dict(values) for name, values in QUICK.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return micro_config(**merged)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_fixtures(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A micro model on a steerable vocabulary (composer, density, dynamics; infilling), saved as a checkpoint."""
    torch.manual_seed(0)
    model = MusicGPT(replace(micro_config().model, vocab_size=STEER.vocab_size, dropout=0.0))
    return save_model(model, tmp_path_factory.mktemp("steer") / "ckpt", STEER)


def steering_rows(path: Path) -> torch.Tensor:
    """The embedding rows of the control and infilling tokens of a checkpoint (the tied head shares them)."""
    model, tokenizer = load_checkpoint(path)
    assert model.tok_emb.weight.shape[0] == tokenizer.vocab_size
    return model.tok_emb.weight.detach()[MUSIC:].clone()


def test_a_plain_config_keeps_the_steering_tokens_and_leaves_their_rows_untouched(tmp_path, source, data_dir,
                                                                                   capsys):
    result = train(quick_config(finetune={"steps": 3, "warmup_steps": 0}), tmp_path / "ft", data=data_dir,
                   init_from=source)
    note = capsys.readouterr().err
    assert "kept its 51 control and infilling tokens (composer (3 values), density, dynamics; infilling)" in note
    assert "trains none of them" in note and "finetune.keep_steering = false drops them" in note
    tuned, tokenizer = load_checkpoint(result.last_checkpoint)
    assert tokenizer == STEER and tuned.config.vocab_size == STEER.vocab_size
    before, _ = load_checkpoint(source)
    old, new = before.tok_emb.weight.detach(), tuned.tok_emb.weight.detach()
    # No crop holds a control or infilling token, so their rows are frozen (not eroded through the tied head);
    # the music rows did train.
    assert torch.equal(old[MUSIC:], new[MUSIC:])
    assert not torch.equal(old[:MUSIC], new[:MUSIC])
    # A resumed run freezes the same rows.
    resumed = train(quick_config(finetune={"steps": 5, "warmup_steps": 0}), tmp_path / "ft", resume=True)
    assert resumed.step == 5 and torch.equal(steering_rows(resumed.last_checkpoint), old[MUSIC:])


def test_the_fine_tuned_checkpoint_lists_its_controls_and_infills(tmp_path, source, data_dir, capsys):
    train(quick_config(finetune={"steps": 1}), tmp_path / "ft", data=data_dir, init_from=source)
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "ft"), "--list-controls"]) == 0
    listed = capsys.readouterr().out
    assert "composer: Bach, Chopin, unknown" in listed and "density: low, medium, high" in listed
    assert "infill: yes" in listed
    out = tmp_path / "filled"
    assert main(["generate", str(tmp_path / "ft"), "--infill", "2", "4", "--primer", str(PRIMER), "--seed", "3",
                 "--max-note-seconds", "10", "--out", str(out), "--quiet"]) == 0
    assert "new notes in 2-4 s" in capsys.readouterr().out and (out / "sample_00.mid").is_file()


def test_keep_steering_false_drops_them(tmp_path, source, data_dir, capsys):
    result = train(quick_config(finetune={"steps": 1, "keep_steering": False}), tmp_path / "ft", data=data_dir,
                   init_from=source)
    assert ("391 carried over, 51 dropped (CONTROL, GAP, INFILL) (finetune.keep_steering = false)"
            in capsys.readouterr().err)
    tuned, tokenizer = load_checkpoint(result.last_checkpoint)
    assert tokenizer == PerformanceTokenizer() and tuned.config.vocab_size == MUSIC
    assert main(["generate", str(tmp_path / "ft"), "--list-controls"]) == 0
    assert "no controls" in capsys.readouterr().out


def test_data_controls_naming_some_of_the_checkpoints_is_refused_naming_the_option(tmp_path, source, data_dir):
    config = quick_config(data={"controls": ["density"]})
    with pytest.raises(ConfigError, match=r"data.controls = \['density'\] leaves out composer, dynamics.*"
                                          r"set finetune.keep_steering = false to drop"):
        train(config, tmp_path / "ft", data=data_dir, init_from=source)
    assert not (tmp_path / "ft").exists()  # refused before anything is written
    # Dropping them makes the same config a plain fine-tune with a density control.
    dropped = quick_config(data={"controls": ["density"]}, finetune={"steps": 1, "keep_steering": False})
    result = train(dropped, tmp_path / "dropped", data=data_dir, init_from=source)
    assert dict(checkpoint.load_tokenizer(result.last_checkpoint).controls) == {"density": ("low", "medium", "high")}


def test_data_controls_naming_them_all_train_them_and_add_the_corpus_composers_on_top():
    manifest = {"sources": [{"split": "train", "doc": i, "composer": c}
                            for i, c in enumerate(["Joplin"] * 3 + ["Chopin"] * 3 + ["Satie"])]}
    config = quick_config(data={"controls": ["composer", "density", "dynamics"]})
    tokenizer = finetune_tokenizer(PerformanceTokenizer(), manifest, config, STEER, "--init-from x")
    assert tokenizer.controls["composer"] == ("Bach", "Chopin", "Joplin", "unknown")  # Satie: < 3 files
    assert tokenizer.infill and list(tokenizer.controls) == ["composer", "density", "dynamics"]
    frozen = [tokenizer.token_name(i) for i in untrained_rows(tokenizer, manifest, config.data)]
    assert frozen[0] == "CONTROL_composer=Bach" and frozen[1:3] == ["INFILL_SUFFIX", "INFILL_PREFIX"]
    assert len(frozen) == 1 + 2 + 40  # Bach (not in this corpus) and the infilling tokens (infill_rate 0)
    # data.infill_rate > 0 trains the infilling tokens; a plain [data] trains no steering token.
    assert len(untrained_rows(tokenizer, manifest, replace(config.data, infill_rate=0.3))) == 1
    plain = finetune_tokenizer(PerformanceTokenizer(), manifest, quick_config(), STEER, "--init-from x")
    assert plain == STEER and untrained_rows(plain, manifest, quick_config().data) == list(range(MUSIC, 442))


def test_crops_are_told_only_the_controls_data_controls_names():
    rng = np.random.default_rng(0)
    music = STEER.encode(PRIMER).ids[:200]
    assert not Conditioner(STEER, [None], controls=[]).active  # kept, not trained: plain crops
    told = Conditioner(STEER, ["Chopin"], control_dropout=0.0, uncond_rate=0.0, controls=["density"])
    header = told.header(0, music, rng)
    assert [STEER.token_name(i).split("=")[0] for i in header] == ["CONTROL_density"]
    everything = Conditioner(STEER, ["Chopin"], control_dropout=0.0, uncond_rate=0.0)  # None: the tokenizer's
    assert len(everything.header(0, music, rng)) == 3 and control_rows(STEER) == list(range(MUSIC, MUSIC + 9))


def test_prompt_tuning_needs_the_controls_the_crops_are_told(tmp_path, source, data_dir):
    with pytest.raises(ConfigError, match="needs data.controls \\(the checkpoint's: composer, density, dynamics\\)"):
        train(quick_config(finetune={"trainable": "controls"}), tmp_path / "ft", data=data_dir, init_from=source)


@pytest.mark.skipif(not (checkpoint.DEFAULT_DIR / checkpoint.WEIGHTS).is_file(), reason="no bundled model")
def test_the_readme_recipe_on_the_bundled_model_keeps_list_controls(tmp_path, data_dir, capsys):
    """musicgpt train --config small-cpu --init-from bundled --data DIR, cut to one step of one crop."""
    run = tmp_path / "ft"
    assert main(["train", "--config", "small-cpu", "--init-from", "bundled", "--data", str(data_dir),
                 "--out", str(run), "--set", "finetune.steps=1", "--set", "train.batch_size=1",
                 "--set", "train.eval_every=0", "--set", "train.progress=false", "--set", "data.prefetch=0"]) == 0
    assert "kept its 62 control and infilling tokens" in capsys.readouterr().err
    assert main(["generate", str(run), "--list-controls"]) == 0
    listed = capsys.readouterr().out
    assert "composer: Bach," in listed and "dynamics: soft, medium, loud" in listed and "infill: yes" in listed
    bundled, tokenizer = load_checkpoint("bundled")
    tuned, tuned_tokenizer = load_checkpoint(run)
    assert tuned_tokenizer == tokenizer
    assert torch.equal(tuned.tok_emb.weight[MUSIC:], bundled.tok_emb.weight[MUSIC:])
