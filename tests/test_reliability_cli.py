"""Bad input to the commands and the Python calls behind them (issue 23): each gives a one-line error naming the
thing and the reason, never a traceback, an allocation that takes the machine down, or silent nonsense."""

import json
import shutil
import time
from pathlib import Path

import numpy as np

import pytest

import musicgpt
from musicgpt.cli import main
from musicgpt.errors import CheckpointError, ConfigError
from musicgpt.model.gpt import GPTConfig, MusicGPT
from musicgpt.music.scores import read_notes
from musicgpt.tokens import infill as fim
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import PRIMER, steering_model, tiny_model

PIECE_SECONDS = 76.0  # the primer's last note ends here


@pytest.fixture(scope="module")
def steering(tmp_path_factory):
    """A tiny checkpoint that can infill."""
    model, tokenizer = steering_model()
    return model.save_pretrained(tmp_path_factory.mktemp("steer") / "steer", tokenizer=tokenizer)


def one_line_error(capsys, argv: list[str]) -> str:
    """The error `musicgpt ARGV` prints: exit status 1, one line, no traceback."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args,words", [
    (["--infill", "nan", "3"], "--infill: START and END must be finite"),
    (["--infill", "1", "inf"], "--infill: START and END must be finite"),
    (["--infill", "0", "1e9"], "more than 600 s past the piece's end (76.0 s)"),
    (["--infill", "500", "600"], "START 500 s is not inside the piece (it ends at 76.0 s)"),
    (["--seconds", "inf"], "--seconds: must be finite"),
    (["--seed", "1180591620717411303424"], "--seed: must be an integer in 0..2**63-1"),
    (["--seed", "-1"], "--seed: must be an integer in 0..2**63-1"),
])
def test_generate_refuses_spans_lengths_and_seeds_it_cannot_use(steering, tmp_path, capsys, args, words):
    started = time.perf_counter()
    err = one_line_error(capsys, ["generate", str(steering), "--primer", str(PRIMER), "--quiet",
                                  "--out", str(tmp_path / "o"), *args])
    assert words in err
    assert time.perf_counter() - started < 30  # refused before any work, not after building a gap of 1e9 s
    assert not (tmp_path / "o").exists()


def test_python_infill_and_generate_refuse_the_same(steering):
    model = MusicGPT.from_pretrained(steering)
    for start, end in ((0.0, 1e9), (500.0, 600.0), (float("nan"), 3.0), (1.0, float("inf"))):
        with pytest.raises(ConfigError, match="infill: "):
            musicgpt.infill(model, PRIMER, start, end)
    with pytest.raises(ConfigError, match="seed: must be an integer"):
        musicgpt.generate(model, None, max_new_tokens=2, seed=2**70)
    with pytest.raises(ConfigError, match="seconds: must be finite"):
        musicgpt.generate(model, None, seconds=float("inf"))
    samples = musicgpt.infill(model, PRIMER, 70.0, PIECE_SECONDS + 5, seed=1)  # past the end, within the cap
    assert samples[0].infill == (70.0, PIECE_SECONDS + 5)


def test_an_infilling_prefix_is_built_from_the_tokens_it_keeps():
    """A start far past the piece costs a count, not a TIME_SHIFT per second (1e11 steps would be 800 GB)."""
    tokenizer = PerformanceTokenizer()
    ids = tokenizer.encode(read_notes(PRIMER)).ids
    started = time.perf_counter()
    tail, whole = fim.prefix_tail(ids, tokenizer, 10**11, 100)
    assert time.perf_counter() - started < 1.0
    assert len(tail) == 100 and not whole
    assert set(tail[:-1].tolist()) == {tokenizer.time_shift(tokenizer.max_shift_steps)}  # the silence before START
    assert tokenizer.token_type(tail[-1:])[0] == tokenizer.type_code("TIME_SHIFT")  # ... and its remainder
    for start in (0, 250, 3000, 7600, 9000):
        prefix, _ = fim.cut(ids, tokenizer, start, start + 50)
        for keep in (0, 7, len(prefix), len(prefix) + 3):
            tail, whole = fim.prefix_tail(ids, tokenizer, start, keep)
            assert np.array_equal(tail, prefix[len(prefix) - min(keep, len(prefix)):])
            assert whole == (keep >= len(prefix))


def test_a_checkpoint_whose_recorded_tokenizer_is_missing_is_refused_everywhere(checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "tokenizer.json").unlink()
    fingerprint = json.loads((broken / "config.json").read_text())["tokenizer"]["fingerprint"]
    for argv in (["generate", str(broken), "--max-new-tokens", "2", "--quiet", "--out", str(tmp_path / "g")],
                 ["evaluate", str(broken), "--data", str(PRIMER), "--quiet"], ["info", str(broken)],
                 ["attend", str(PRIMER), "--checkpoint", str(broken), "--out", str(tmp_path / "a")]):
        err = one_line_error(capsys, argv)
        assert "tokenizer.json is missing" in err and fingerprint in err
    with pytest.raises(CheckpointError, match=f"tokenizer.json is missing.*{fingerprint}"):
        musicgpt.pipeline(broken)
    unrecorded = tiny_model().save_pretrained(tmp_path / "unrecorded")  # saved without one: nothing to refuse
    assert MusicGPT.from_pretrained(unrecorded).tokenizer is None


@pytest.mark.parametrize("key,value,words", [
    ("n_layer", "six", "model.n_layer: must be a positive integer, got 'six'"),
    ("n_layer", 6.5, "model.n_layer: must be a positive integer, got 6.5"),
    ("bias", 1, "model.bias: must be true or false"),
    ("d_model", 2**20, "would need at least 35.2 TB of memory; this machine has"),
    ("vocab_size", 10**11, "would need at least 12.8 TB of memory; this machine has"),
])
def test_a_bad_model_config_in_a_checkpoint_is_one_line(checkpoint, tmp_path, capsys, key, value, words):
    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    config["model"][key] = value
    (bad / "config.json").write_text(json.dumps(config))
    err = one_line_error(capsys, ["generate", str(bad), "--max-new-tokens", "2", "--quiet",
                                  "--out", str(tmp_path / "g")])
    assert words in err and "bad model config in config.json" in err


def test_a_model_config_counts_its_parameters_without_building_the_model():
    for overrides in ({}, {"position": "absolute", "tie_weights": False}, {"position": "both", "bias": False}):
        config = GPTConfig.preset("tiny", **overrides)
        assert config.num_parameters() == sum(p.numel() for p in MusicGPT(config).parameters())


@pytest.mark.parametrize("command", ["generate", "attend", "heads"])
def test_threads_must_be_positive(checkpoint, tmp_path, capsys, command):
    args = {"generate": [], "attend": [str(PRIMER)], "heads": [str(PRIMER), "--out", str(tmp_path / "h")]}[command]
    with pytest.raises(SystemExit) as exc:
        main([command, *args, "--checkpoint", str(checkpoint), "--threads", "-1"])
    assert exc.value.code == 2
    assert "argument --threads: must be a positive integer, got -1" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_said_before_the_work(checkpoint, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for out, words in ((tmp_path / "afile", "exists and is not a folder"),
                       (tmp_path / "afile" / "sub", "cannot create the folder (Not a directory)")):
        err = one_line_error(capsys, ["generate", str(checkpoint), "--max-new-tokens", "2", "--quiet",
                                      "--out", str(out)])
        assert f"--out {out}: {words}" in err
        err = one_line_error(capsys, ["attend", str(PRIMER), "--checkpoint", str(checkpoint), "--tokens", "8",
                                      "--quiet", "--out", str(out)])
        assert f"--out {out}: {words}" in err


def test_evaluate_refuses_a_context_that_cannot_fit(checkpoint, capsys):
    err = one_line_error(capsys, ["evaluate", str(checkpoint), "--data", str(PRIMER), "--context", str(10**9),
                                  "--quiet"])
    assert "--context 1000000000: a window of 1000000000 tokens would need at least" in err
    assert "TB of memory; this machine has" in err
    with pytest.raises(SystemExit):
        main(["evaluate", str(checkpoint), "--data", str(PRIMER), "--context", "0"])
    assert "argument --context: must be a positive integer, got 0" in capsys.readouterr().err


def test_generate_refuses_a_batch_that_cannot_fit_and_says_how_many_would(checkpoint, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setattr("musicgpt.device.available_memory", lambda device="cpu": 100 * 2**20)
    err = one_line_error(capsys, ["generate", str(checkpoint), "--num-samples", "500", "--max-new-tokens", "2",
                                  "--quiet", "--out", str(tmp_path / "g")])
    assert "--num-samples 500: needs about" in err and "over the limit of 80 MB" in err and "samples fit" in err
    assert not (tmp_path / "g").exists()


def test_a_context_no_cache_can_hold_is_refused_on_load(checkpoint, tmp_path, capsys):
    huge = tmp_path / "huge"
    shutil.copytree(checkpoint, huge)
    config = json.loads((huge / "config.json").read_text())
    config["model"]["n_ctx"] = 10**10  # relative positions: no weight grows, one sequence's keys and values: 5.1 TB
    (huge / "config.json").write_text(json.dumps(config))
    for argv in (["generate", str(huge), "--max-new-tokens", "2", "--quiet", "--out", str(tmp_path / "g")],
                 ["attend", str(PRIMER), "--checkpoint", str(huge), "--tokens", "8", "--out", str(tmp_path / "a")],
                 ["heads", str(PRIMER), "--checkpoint", str(huge), "--out", str(tmp_path / "h")]):
        err = one_line_error(capsys, argv)
        assert "one 10000000000-token context" in err and "would need at least 5.1 TB of memory" in err


def test_python_threads_and_an_evaluation_window_are_checked_too(checkpoint):
    """The Python API refuses what the CLI refuses: threads < 1, and a window that cannot fit in memory."""
    import musicgpt
    from musicgpt.errors import ConfigError
    from musicgpt.training.evaluate import evaluate_checkpoint

    model = musicgpt.load_model(checkpoint)
    with pytest.raises(ConfigError, match="threads"):
        musicgpt.generate(model, max_new_tokens=4, threads=-1)
    with pytest.raises(ConfigError, match="--context 1000000000"):
        evaluate_checkpoint(checkpoint, [Path(__file__).parent / "fixtures" / "pop909_331.mid"], context=10**9,
                            progress=False)
