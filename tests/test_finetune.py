"""Fine-tuning keeps what the checkpoint can do: --init-from a steerable checkpoint keeps its control and
infilling tokens and rows (musicgpt.training.finetune), unless finetune.keep_steering = false drops them; a plain
checkpoint grows to a steerable vocabulary (carry_over: new rows leave the old logits unchanged), and prompt
tuning moves only the control rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgpt import checkpoint
from musicgpt.cli import main
from musicgpt.errors import CheckpointError, ConfigError
from musicgpt.model.gpt import MusicGPT, load_checkpoint, save_model
from musicgpt.tokens.controls import controls_vocabulary
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.training.conditioning import Conditioner, carry_over, control_rows, token_sources
from musicgpt.training.finetune import finetune_tokenizer, untrained_rows
from musicgpt.training.loop import train
from tiny_models import PRIMER, tiny_model
from training_fixtures import micro_config, prepare_fixtures

STEER = PerformanceTokenizer(controls=controls_vocabulary(["composer", "density", "dynamics"], ["Bach", "Chopin"]),
                             infill=True)  # 391 music tokens, then 9 CONTROL, 2 INFILL, 40 GAP
PLAIN = PerformanceTokenizer()
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


def test_new_embeddings_leave_old_logits_unchanged():
    model = tiny_model()
    source = token_sources(PLAIN, STEER)
    assert (source[:391] == np.arange(391)).all() and (source[391:] == -1).all()
    grown, note = carry_over(model, PLAIN, STEER, "test")
    assert note == "51 token embeddings added (CONTROL, GAP, INFILL), 391 carried over"
    ids = torch.from_numpy(PLAIN.encode(PRIMER).ids[:64])[None]
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(ids).logits[..., :391], model(ids).logits)
    with pytest.raises(CheckpointError, match="does not fit .*velocity_bins"):
        carry_over(model, PerformanceTokenizer(velocity_bins=16), STEER, "test")


def test_fine_tuning_adds_the_steering_tokens_and_records_the_model(tmp_path, capsys):
    import tomllib

    data = prepare_fixtures(tmp_path / "data")
    base = tmp_path / "base"
    train(micro_config(train={"steps": 2}), base, data=data)
    config = micro_config(data={"controls": ["density", "dynamics"], "infill_rate": 0.5}, finetune={"steps": 2})
    result = train(config, tmp_path / "ft", data=data, init_from=base)
    assert "token embeddings added (CONTROL, GAP, INFILL), 391 carried over" in capsys.readouterr().err
    model, tokenizer = load_checkpoint(result.last_checkpoint)
    assert list(tokenizer.controls) == ["density", "dynamics"] and tokenizer.infill
    assert model.config.vocab_size == tokenizer.vocab_size == 391 + 6 + 2 + 40
    written = tomllib.loads((tmp_path / "ft" / "config.toml").read_text())
    assert written["model"]["vocab_size"] == tokenizer.vocab_size and written["data"]["infill_rate"] == 0.5
    resumed = train(micro_config(data={"controls": ["density", "dynamics"], "infill_rate": 0.5},
                                 finetune={"steps": 3}), tmp_path / "ft", resume=True)
    assert load_checkpoint(resumed.last_checkpoint)[1] == tokenizer


def test_prompt_tuning_moves_only_the_control_rows_and_needs_a_trained_model(tmp_path):
    data = prepare_fixtures(tmp_path / "data")
    steer = {"controls": ["density", "dynamics"], "uncond_rate": 0.0, "control_dropout": 0.0}
    base = train(micro_config(data=steer, train={"steps": 2}), tmp_path / "base", data=data).last_checkpoint
    tuned = train(micro_config(data=steer, finetune={"steps": 3, "lr": 0.05, "trainable": "controls"}),
                  tmp_path / "tuned", data=data, init_from=base)
    (before, tokenizer), (after, _) = load_checkpoint(base), load_checkpoint(tuned.last_checkpoint)
    rows = control_rows(tokenizer)
    assert [tokenizer.token_name(i).split("=")[0] for i in rows] == ["CONTROL_density"] * 3 + ["CONTROL_dynamics"] * 3
    old, new = before.state_dict(), after.state_dict()
    assert after.tied_weights() == {"lm_head.weight"}  # the same tensor as tok_emb.weight
    for name in old:
        if name not in ("tok_emb.weight", "lm_head.weight"):
            assert torch.equal(old[name], new[name]), name
    others = np.setdiff1d(np.arange(tokenizer.vocab_size), rows)
    assert torch.equal(old["tok_emb.weight"][others], new["tok_emb.weight"][others])
    assert not torch.equal(old["tok_emb.weight"][rows], new["tok_emb.weight"][rows])
    assert tuned.best_valid_nll is not None
    with pytest.raises(ConfigError, match="needs --init-from"):
        train(micro_config(data=steer, finetune={"trainable": "controls"}), tmp_path / "fresh", data=data)
    with pytest.raises(ConfigError, match="needs data.controls"):
        train(micro_config(finetune={"trainable": "controls"}), tmp_path / "plain", data=data, init_from=base)
