"""The training loop on a micro model: checkpoints, exact resume, SIGTERM and kill -9, fine-tuning, logs, plots;
a full disk, a kill between the two renames of best/, a garbage line in metrics.csv."""

import json
import math
import os
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
import torch

from musicgpt.cli import main
from musicgpt.errors import CheckpointError, ConfigError, MusicGPTError
from musicgpt.model import GPTConfig, MusicGPT, load_checkpoint, load_model, save_model
from musicgpt.device import autocast_dtype
from musicgpt.training.loop import train, weights_fingerprint
from musicgpt.training.optim import Schedule, parameter_groups
from musicgpt.training.rundir import checkpoint_dirs, resume_config
from musicgpt.training.log import MetricsLog, read_metrics
from musicgpt.viz.curves import plot_curves
from training_fixtures import cli, losses, micro_config, prepare_fixtures, run_cli, write_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_fixtures(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted 6-step run that the resumed runs must reproduce exactly."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(micro_config(), run_dir, data=data_dir)
    return run_dir, result


def test_run_leaves_loadable_checkpoints_metrics_and_best(reference):
    run_dir, result = reference
    assert result.step == 6 and not result.interrupted
    assert [p.name for p in checkpoint_dirs(run_dir)] == ["step-0000003", "step-0000006"]
    assert result.last_checkpoint == run_dir / "checkpoints" / "step-0000006"
    model, tokenizer = load_checkpoint(result.last_checkpoint)  # what generate/evaluate do
    assert model.config.n_ctx == 32 and tokenizer.vocab_size == model.config.vocab_size
    best, _ = load_checkpoint(run_dir / "best")
    rows = read_metrics(run_dir / "metrics.csv")
    valid = [r["valid_nll"] for r in rows if r["valid_nll"] is not None]
    assert len(valid) == 2 and result.best_valid_nll == min(valid)
    assert sorted(losses(run_dir)) == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) for v in losses(run_dir).values())
    assert (run_dir / "config.toml").is_file() and resume_config(run_dir).model.n_ctx == 32
    # The checkpoint holds the exact weights the run ended with.
    trained = MusicGPT(model.config)
    trained.load_state_dict(model.state_dict())
    assert weights_fingerprint(trained) == weights_fingerprint(load_model(result.last_checkpoint))


def test_training_lowers_the_loss(tmp_path, data_dir):
    config = micro_config(train={"steps": 40, "eval_every": 0, "checkpoint_every": 40, "log_every": 1},
                          model={"dropout": 0.0}, optim={"lr": 3e-3, "warmup_steps": 5})
    train(config, tmp_path / "run", data=data_dir)
    curve = losses(tmp_path / "run")
    assert sum(curve[s] for s in range(36, 41)) / 5 < sum(curve[s] for s in range(1, 6)) / 5 - 0.5


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, reference, data_dir):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    # Roll the run back to its step-3 checkpoint, as if it had died right after writing it.
    shutil.rmtree(run_dir / "checkpoints" / "step-0000006")
    result = train(resume_config(run_dir), run_dir, resume=True)
    assert result.step == 6
    assert losses(run_dir) == losses(ref_dir)  # steps 1-3 kept, 4-6 recomputed: equal floats
    assert weights_fingerprint(load_model(result.last_checkpoint)) == \
        weights_fingerprint(load_model(ref_dir / "checkpoints" / "step-0000006"))


def test_resume_with_overrides_records_them_in_run_json(tmp_path, reference, data_dir):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "step-0000006")
    result = train(resume_config(run_dir, ["train.steps=8"]), run_dir, resume=True)
    assert result.step == 8
    run = json.loads((run_dir / "run.json").read_text())
    resumes = run["resumes"]
    assert resumes[0]["from"] == "step-0000003" and resumes[0]["changed"] == {"train.steps": [6, 8]}
    hw = run["hardware"]  # what the run trained on, for model cards
    assert hw["device"] == "cpu" and hw["gpu"] is None and hw["cores"] >= 1 and hw["torch"] == torch.__version__
    # a later resume goes on from the changed config: a plain --resume keeps 8, and going back to 6 is on the record
    assert resume_config(run_dir).train.steps == 8
    assert resume_config(run_dir, ["train.steps=6"]).train.steps == 6
    shutil.rmtree(run_dir / "checkpoints" / "step-0000008")
    train(resume_config(run_dir, ["train.steps=7"]), run_dir, resume=True)
    resumes = json.loads((run_dir / "run.json").read_text())["resumes"]
    assert [r["changed"] for r in resumes] == [{"train.steps": [6, 8]}, {"train.steps": [8, 7]}]


def _wait_for_step(run_dir: Path, proc, step: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.communicate()[1][-2000:]}")
        try:
            if any(s >= step for s in losses(run_dir)):
                return
        except (MusicGPTError, KeyError, ValueError):
            pass
        time.sleep(0.01)
    proc.kill()
    pytest.fail("training made no progress")


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, data_dir, how):
    # A constant learning rate makes the trajectory independent of the planned step count, so a run
    # planned for 10^6 steps and stopped early must match a plain 12-step run step for step. The thread
    # count is pinned: the reference and the resume run in this process, the interrupted run in another,
    # and float sums over another number of threads differ in their last bits.
    flat = {"optim": {"lr": 1e-3, "min_lr": 1e-3, "warmup_steps": 0}}
    reference = tmp_path / "reference"
    threads = torch.get_num_threads()
    try:
        train(micro_config(train={"steps": 12, "eval_every": 0, "threads": 2}, **flat), reference, data=data_dir)
        _interrupt_and_resume(tmp_path, data_dir, how, flat, reference)
    finally:
        torch.set_num_threads(threads)


def _interrupt_and_resume(tmp_path: Path, data_dir: Path, how: str, flat: dict, reference: Path) -> None:
    run_dir = tmp_path / "run"
    long_run = micro_config(train={"steps": 1_000_000, "eval_every": 0, "checkpoint_every": 1, "threads": 2}, **flat)
    proc = cli("train", "--config", str(write_config(long_run, tmp_path / "c.toml")), "--data", str(data_dir),
               "--out", str(run_dir))
    _wait_for_step(run_dir, proc, 3)
    proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    if how == "sigterm":
        assert proc.returncode == 143, err[-2000:]
        assert "SIGTERM: stopped at step" in err and f"--resume {run_dir}" in err
        stopped = checkpoint_dirs(run_dir)[-1]
        assert int(stopped.name.split("-")[1]) == max(losses(run_dir))  # the final checkpoint is the last step
    else:
        assert proc.returncode == -signal.SIGKILL
    done = max(int(p.name.split("-")[1]) for p in checkpoint_dirs(run_dir))
    assert 2 <= done < 12, "the run went too far before the signal landed"
    for path in checkpoint_dirs(run_dir):  # whatever the kill interrupted, every listed checkpoint loads
        load_checkpoint(path)

    result = train(resume_config(run_dir, ["train.steps=12"]), run_dir, resume=True)
    assert result.step == 12
    assert losses(run_dir) == losses(reference)
    assert weights_fingerprint(load_model(result.last_checkpoint)) == \
        weights_fingerprint(load_model(reference / "checkpoints" / "step-0000012"))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_fine_tuning_starts_from_the_checkpoint_with_its_own_lr(tmp_path, reference, data_dir):
    ref_dir, _ = reference
    source = ref_dir / "checkpoints" / "step-0000006"
    config = micro_config(model={"n_layer": 1, "d_model": 16},  # ignored: the checkpoint decides the shape
                          finetune={"lr": 2e-4, "min_lr": 2e-5, "warmup_steps": 0, "steps": 2},
                          train={"eval_every": 0})
    result = train(config, tmp_path / "ft", data=data_dir, init_from=source)
    assert result.step == 2
    tuned = load_model(result.last_checkpoint)
    original = load_model(source)
    assert tuned.config == original.config
    rows = read_metrics(tmp_path / "ft" / "metrics.csv")
    assert rows[0]["lr"] == pytest.approx(2e-4)
    # Small steps from the pretrained weights: close to them, but moved.
    delta = max((a - b).abs().max().item() for a, b in zip(tuned.parameters(), original.parameters()))
    assert 0 < delta < 2e-3


def test_fine_tuning_rejects_a_different_tokenizer(tmp_path, reference, data_dir):
    from musicgpt.tokens.performance import PerformanceTokenizer

    other = tmp_path / "ckpt"
    save_model(MusicGPT(GPTConfig.preset("tiny", vocab_size=500)), other, PerformanceTokenizer(velocity_bins=16))
    with pytest.raises(CheckpointError, match="tokenizer does not fit .* differ in velocity_bins"):
        train(micro_config(), tmp_path / "ft", data=data_dir, init_from=other)


def test_run_dir_with_checkpoints_is_not_overwritten(reference, data_dir):
    run_dir, _ = reference
    with pytest.raises(MusicGPTError, match="--resume"):
        train(micro_config(), run_dir, data=data_dir)


def test_resume_without_checkpoint_and_without_data_are_errors(tmp_path, data_dir):
    with pytest.raises(CheckpointError, match="config.toml is missing"):
        resume_config(tmp_path)
    with pytest.raises(ConfigError, match="data.path"):
        train(micro_config(), tmp_path / "run")


def test_midi_folder_is_prepared_into_the_run(tmp_path):
    from training_fixtures import FIXTURES

    result = train(micro_config(train={"steps": 1, "eval_every": 1}), tmp_path / "run", data=FIXTURES)
    assert (tmp_path / "run" / "data" / "manifest.json").is_file() and result.best_valid_nll is not None


def test_cli_train_errors_are_one_line(tmp_path, capsys):
    config = write_config(micro_config(), tmp_path / "c.toml")
    assert main(["train", "--config", str(config), "--set", "train.stepz=3", "--data", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert "train.stepz: unknown key" in err and len(err.splitlines()) == 1
    assert main(["train", "--resume", str(tmp_path), "--config", str(config)]) == 1
    assert main(["train"]) == 1


def test_schedule_warms_up_then_decays_to_the_floor():
    s = Schedule(peak=1.0, floor=0.1, warmup=10, total=110)
    assert s.lr(0) == pytest.approx(0.1) and s.lr(9) == pytest.approx(1.0)
    assert s.lr(10) == pytest.approx(1.0) and s.lr(60) == pytest.approx(0.55)
    assert s.lr(110) == pytest.approx(0.1) and s.lr(500) == pytest.approx(0.1)
    lrs = [s.lr(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("position", ["relative", "absolute"])
def test_no_weight_decay_on_embeddings_norms_and_biases(position):
    model = MusicGPT(GPTConfig.preset("tiny", position=position))
    decay, no_decay = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith(".weight") and "ln" not in n and "emb" not in n for n in decayed)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_autocast_choice():
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)


def test_metrics_log_truncates_rows_past_the_resumed_step(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, train_loss=float(step), lr=0.1)
    log.log(4, valid_nll=1.5)
    log.close()
    log = MetricsLog(tmp_path, resume_step=3, tensorboard=False)
    log.log(4, train_loss=40.0)
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r["step"], r["train_loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_plot_draws_a_png(reference, tmp_path, capsys):
    run_dir, _ = reference
    out = plot_curves(run_dir, tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert main(["plot", str(tmp_path)]) == 1  # no metrics.csv: one-line error


def test_metrics_go_to_tensorboard_when_installed(tmp_path, monkeypatch):
    import sys
    import types

    written = []

    class FakeWriter:  # stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is optional)
        def __init__(self, log_dir):
            written.append(("dir", log_dir))

        def add_scalar(self, key, value, step):
            written.append((key, value, step))

        def close(self):
            written.append(("closed",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    log = MetricsLog(tmp_path)
    log.log(3, train_loss=2.5, tokens=100, valid_nll=None)
    log.close()
    assert written == [("dir", str(tmp_path / "tensorboard")), ("train_loss", 2.5, 3), ("closed",)]


def test_fine_tuning_records_the_model_it_trains_and_says_so(tmp_path, reference, data_dir, capsys):
    from musicgpt.model import GPTConfig
    from musicgpt.training.config import load_config

    source = reference[0] / "checkpoints" / "step-0000006"
    config = micro_config(model={"n_layer": 1, "d_model": 16}, finetune={"steps": 1}, train={"eval_every": 0})
    train(config, tmp_path / "ft", data=data_dir, init_from=source)
    assert load_config(tmp_path / "ft" / "config.toml").model == GPTConfig.from_checkpoint(source)
    err = capsys.readouterr().err
    assert err.count("replaces [model] of the config") == 1 and "d_model 32" in err and "d_model 16" in err


def test_resuming_with_more_steps_goes_on_from_the_rate_it_had(tmp_path, data_dir, capsys):
    from musicgpt.training.optim import Schedule

    old = Schedule(peak=1e-3, floor=1e-4, warmup=2, total=10)
    new = Schedule(peak=1e-3, floor=1e-4, warmup=2, total=20).continued(old, 6)
    assert new.lr(6) == pytest.approx(old.lr(6)) and new.lr(19) < new.lr(12) < new.lr(7) < new.lr(6)
    assert new.lr(20) == pytest.approx(1e-4)
    assert Schedule(1e-3, 1e-4, 2, 20).lr(6) > old.lr(6)  # what restarting the schedule did: the rate jumped up
    assert Schedule(1e-3, 1e-4, 4, 20).continued(old, 1) == Schedule(1e-3, 1e-4, 4, 20)  # warming up: no seam
    # A finished run (6 of 6 steps, at the floor) extended to 12: it stays at the floor instead of jumping back up.
    run = tmp_path / "run"
    train(micro_config(train={"eval_every": 0}), run, data=data_dir)
    assert main(["train", "--resume", str(run), "--set", "train.steps=12"]) == 0
    assert "goes on from" in capsys.readouterr().err
    lr = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.csv") if r["lr"] is not None}
    assert all(lr[s] == pytest.approx(1e-4) for s in range(7, 13))  # metrics.csv row N holds step N-1's rate


def test_a_full_disk_while_training_ends_in_one_line_and_the_run_resumes(data_dir, tmp_path):
    config = write_config(micro_config(train={"steps": 3, "eval_every": 0}), tmp_path / "c.toml")
    run = tmp_path / "run"
    assert run_cli("train", "--config", str(config), "--data", str(data_dir), "--out", str(run)).returncode == 0
    done = run_cli("train", "--resume", str(run), "--set", "train.steps=6", limit_bytes=20_000)
    err = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and "cannot write" in err[-1] and "Traceback" not in done.stderr.decode(), err
    done = run_cli("train", "--resume", str(run), "--set", "train.steps=6")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (run / "checkpoints" / "step-0000006").is_dir()


def test_best_is_put_back_after_a_kill_between_the_two_renames_of_its_replacement(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(micro_config(train={"steps": 3, "eval_every": 3}), run, data=data_dir)
    best = run / "best"
    newer = run / ".best.k1ll3d.tmp"  # the complete new copy, and the old one moved aside: best/ is gone
    shutil.copytree(best, newer)
    (newer / "marker").write_text("new")
    os.rename(best, run / ".best.old-1234abcd")
    assert main(["evaluate", str(run), "--data", str(data_dir), "--quiet"]) == 0
    assert (best / "marker").read_text() == "new" and not newer.exists()
    assert main(["train", "--resume", str(run), "--set", "train.steps=4"]) == 0  # the old copy is cleaned up
    assert not list(run.glob(".best.*")) and (best / "config.json").is_file()


def test_a_garbage_line_in_metrics_csv_is_skipped_with_a_warning(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(write_config(micro_config(train={"steps": 3}), tmp_path / "c.toml")),
                 "--data", str(data_dir), "--out", str(run)]) == 0
    with open(run / "metrics.csv", "ab") as f:
        f.write(b"\x00\xff\xfe garbage,,\n4,nan,x\n")
    with pytest.warns(RuntimeWarning, match="not metrics rows"):
        rows = read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows if r["train_loss"] is not None] == [1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
        assert main(["train", "--resume", str(run), "--set", "train.steps=4"]) == 0
    assert json.loads((run / "run.json").read_text())["resumes"]
