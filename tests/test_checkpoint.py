"""Checkpoint directories: round trips, atomic replacement, named errors, pickle-free extra states; a checkpoint
that disagrees with itself (another tokenizer.json, one saved before fingerprints, weights that are not finite)."""

import json

import pytest
import torch

from musicgpt import checkpoint
from musicgpt.cli import main
from musicgpt.errors import CheckpointError, MusicGPTError, WriteError
from musicgpt.tokens import PerformanceTokenizer
from musicgpt.model import GPTConfig, MusicGPT, load_checkpoint, load_model, save_model
from musicgpt.training.evaluate import Totals, report
from tiny_models import FIXTURES, tiny_checkpoint

REAL = sorted(FIXTURES.glob("*.mid"))


def tiny_model(**kw):
    torch.manual_seed(0)
    return MusicGPT(GPTConfig.preset("tiny", **kw)).eval()


def test_round_trip_gives_identical_logits(tmp_path):
    model = tiny_model(position="both")
    path = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "musicgpt-checkpoint" and config["version"] == 1
    assert config["model"]["position"] == "both"
    loaded = MusicGPT.from_pretrained(path)
    assert not loaded.training and loaded.config == model.config
    assert loaded.lm_head.weight is loaded.tok_emb.weight
    x = torch.randint(0, 391, (2, 50))
    assert torch.equal(loaded(x).logits, model(x).logits)


def test_untied_and_bfloat16(tmp_path):
    model = tiny_model(tie_weights=False)
    save_model(model, tmp_path / "c", dtype=torch.bfloat16)
    loaded = load_model(tmp_path / "c")
    assert loaded.lm_head.weight is not loaded.tok_emb.weight
    assert loaded.tok_emb.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight.bfloat16().float())


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "ckpt"
    tiny_model().save_pretrained(path)
    other = tiny_model(n_layer=1)
    other.save_pretrained(path)
    assert GPTConfig.from_checkpoint(path).n_layer == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "ckpt"
    tiny_model().save_pretrained(path)

    class Broken(PerformanceTokenizer):
        def save(self, p):
            raise OSError("disk full")

    with pytest.raises(WriteError, match="ckpt: cannot write .disk full"):  # one line naming the checkpoint
        tiny_model(n_layer=1).save_pretrained(path, tokenizer=Broken())
    assert GPTConfig.from_checkpoint(path).n_layer == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing"):
        tiny_model().save_pretrained(tmp_path / "notes")


def test_errors_name_the_path_and_reason(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        MusicGPT.from_pretrained(tmp_path / "nope")
    path = tiny_model().save_pretrained(tmp_path / "c")
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(path)
    (path / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
    (path / "config.json").write_text(json.dumps({"format": "musicgpt-checkpoint", "version": 1,
                                                  "model": {"n_layers": 3}}))
    with pytest.raises(CheckpointError, match="n_layers"):
        load_model(path)


def test_mismatched_weights_are_named(tmp_path):
    path = tiny_model().save_pretrained(tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["model"]["position"] = "both"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pos_emb.weight"):
        load_model(path)
    config["model"]["position"] = "relative"
    config["model"]["d_ff"] = 128
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.fc\.\w+ has shape \(64"):
        load_model(path)


def test_bundled_default_is_named_when_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(checkpoint, "DEFAULT_DIR", tmp_path / "pretrained")
    with pytest.raises(CheckpointError, match="pretrained"):
        MusicGPT.from_pretrained()
    with pytest.raises(CheckpointError, match="pretrained"):
        load_checkpoint()
    tiny_model().save_pretrained(tmp_path / "pretrained")
    model, tokenizer = load_checkpoint()
    assert model.config.n_layer == 2 and tokenizer is None


def test_tokenizer_travels_with_the_model(tmp_path):
    tokenizer_module = pytest.importorskip("musicgpt.tokens.performance")
    tokenizer = tokenizer_module.PerformanceTokenizer()
    path = tiny_model().save_pretrained(tmp_path / "c", tokenizer=tokenizer)
    model, loaded = load_checkpoint(path)
    assert loaded == tokenizer and model.config.vocab_size == tokenizer.vocab_size
    small = tokenizer_module.PerformanceTokenizer(max_shift_steps=10)
    with pytest.raises(CheckpointError, match="tokens"):
        tiny_model(vocab_size=small.vocab_size - 1).save_pretrained(tmp_path / "d", tokenizer=small)


def test_training_state_round_trip_without_pickle(tmp_path):
    model = tiny_model(dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    x = torch.randint(0, 391, (2, 20))
    for _ in range(2):
        opt.zero_grad()
        model(x, targets=x).loss.backward()
        opt.step()
    state = {"optimizer": opt.state_dict(), "step": 2, "rng": torch.get_rng_state(), "best": (1.5, "valid")}
    path = save_model(model, tmp_path / "c", states={"trainer": state}, meta={"step": 2})
    assert checkpoint.has_state(path, "trainer")
    assert json.loads((path / "config.json").read_text())["meta"] == {"step": 2}
    back = checkpoint.load_state(path, "trainer")
    assert back["step"] == 2 and back["best"] == (1.5, "valid") and torch.equal(back["rng"], state["rng"])

    # A restored optimizer continues exactly like the original one.
    model2 = load_model(path).train()
    model.train()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x, targets=x).loss.backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    checkpoint.save_state(path, "trainer", {"step": 3})
    assert checkpoint.load_state(path, "trainer") == {"step": 3}
    with pytest.raises(CheckpointError, match="object"):
        checkpoint.save_state(path, "trainer", {"f": object()})
    with pytest.raises(CheckpointError, match="config"):
        checkpoint.save_state(path, "config", {})


def test_info_lists_modules_and_every_tensor_and_plots(tmp_path, capsys):
    from musicgpt.cli import main

    tokenizer_module = pytest.importorskip("musicgpt.tokens.performance")
    model = tiny_model(position="both")
    path = model.save_pretrained(tmp_path / "c", tokenizer=tokenizer_module.PerformanceTokenizer())
    assert main(["info", str(path), "--plot", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert f"{model.num_parameters():,} parameters" in out
    assert "rel_emb (parameter [2, 32, 16])" in out
    for key, tensor in model.state_dict().items():
        assert key in out
    assert "[391, 32]" in out and "tied to tok_emb.weight" in out
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["note_on_similarity.png", "position_embedding_similarity.png",
                    "relative_embeddings_layer0.png", "relative_embeddings_layer1.png"]
    assert all((tmp_path / "plots" / p).stat().st_size > 10_000 for p in pngs)


def test_info_without_tokenizer_still_plots_what_it_can(tmp_path, capsys):
    from musicgpt.cli import main

    path = tiny_model().save_pretrained(tmp_path / "c")
    assert main(["info", str(path), "--plot", str(tmp_path / "plots")]) == 0
    assert "NOTE_ON similarity not drawn" in capsys.readouterr().err
    assert len(list((tmp_path / "plots").glob("relative_embeddings_layer*.png"))) == 2
    assert main(["info", str(tmp_path / "missing")]) == 1


# ---- one way to name a model: a checkpoint, a run directory, or "bundled" ----------------------------------

def test_a_run_directory_stands_for_its_best_else_its_latest_checkpoint(tmp_path, capsys):
    import os
    import stat

    from musicgpt._io import umask
    from musicgpt.cli import main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    for step in (3, 12):
        tiny_model(n_layer=1 if step == 3 else 2).save_pretrained(run / "checkpoints" / f"step-{step:07d}",
                                                                 tokenizer=PerformanceTokenizer())
    path, note = checkpoint.locate(run)
    assert path == run / "checkpoints" / "step-0000012" and "latest checkpoint" in note
    tiny_model(n_layer=1).save_pretrained(run / "best", tokenizer=PerformanceTokenizer(), meta={"step": 3})
    path, note = checkpoint.locate(run)
    assert path == run / "best" and "best checkpoint" in note and "(step 3)" in note
    assert MusicGPT.from_pretrained(run).config.n_layer == 1 and load_checkpoint(run)[0].config.n_layer == 1
    assert stat.S_IMODE(os.stat(run / "best").st_mode) == 0o777 & ~umask()  # readable by others, as the umask says
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in (run / "best").iterdir()} == \
        {f.name: 0o666 & ~umask() for f in (run / "best").iterdir()}  # safetensors alone would make its file 0600
    assert checkpoint.locate("bundled") == (checkpoint.DEFAULT_DIR, None) == checkpoint.locate(None)
    # the same CKPT shape for every command, --checkpoint as its alias; a run directory is named
    assert main(["info", str(run)]) == 0 and "note: " in capsys.readouterr().err
    assert main(["generate", str(run), "--max-new-tokens", "3", "--out", str(tmp_path / "g"), "--quiet", "--seed", "1"]) == 0
    assert "best checkpoint" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(run / "best"), "--max-new-tokens", "3", "--out", str(tmp_path / "h"),
                 "--quiet", "--seed", "1"]) == 0
    assert (tmp_path / "g" / "sample_00.mid").read_bytes() == (tmp_path / "h" / "sample_00.mid").read_bytes()
    assert main(["info", str(run), "--checkpoint", str(tmp_path)]) == 1 and "give the model once" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="training run directory or 'bundled'"):
        checkpoint.locate(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a training run"):
        checkpoint.locate(tmp_path / "run" / "checkpoints")


def test_a_tokenizer_json_that_is_not_the_models_is_refused(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    for other in (PerformanceTokenizer(velocity_bins=16), PerformanceTokenizer(time_step=0.02)):  # 375 / 391 tokens
        other.save(ckpt / "tokenizer.json")
        with pytest.raises(CheckpointError, match="not the tokenizer its model was saved with"):
            load_checkpoint(ckpt)
        for args in (["generate", "--checkpoint", str(ckpt), "--max-new-tokens", "4", "--out", str(tmp_path / "g")],
                     ["evaluate", str(ckpt), "--data", str(REAL[0]), "--quiet"],
                     ["attend", str(ckpt), str(REAL[0]), "--tokens", "40", "--out", str(tmp_path / "a")]):
            assert main(args) == 1 and "not the tokenizer" in capsys.readouterr().err


def test_a_checkpoint_saved_before_fingerprints_loads_with_a_warning_and_a_size_check(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "old")
    config = json.loads((ckpt / "config.json").read_text())
    del config["tokenizer"]
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="before tokenizer fingerprints"):
        load_checkpoint(ckpt)
    PerformanceTokenizer(velocity_bins=16).save(ckpt / "tokenizer.json")
    with pytest.raises(CheckpointError, match="has 375 tokens, the model 391"):
        load_checkpoint(ckpt)


def test_weights_that_are_not_finite_are_refused_and_evaluate_fails_on_a_nan(tmp_path, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight[3, 5] = float("nan")
    ckpt = model.save_pretrained(tmp_path / "nan")
    with pytest.raises(CheckpointError, match="blocks.1.mlp.fc.weight holds NaN or infinite values"):
        load_model(ckpt)
    assert main(["evaluate", str(ckpt), "--data", str(REAL[0]), "--quiet"]) == 1
    assert "NaN or infinite" in capsys.readouterr().err
    with pytest.raises(MusicGPTError, match="NLL nan"):
        report(Totals(nll_sum=float("nan"), count=3), None, checkpoint="c", data="d")
