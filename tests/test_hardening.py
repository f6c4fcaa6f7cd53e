"""Nothing read wrong, nothing half-written: bad names, broken folders, interrupted and concurrent runs, full disks."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from musicgpt.cli import main
from musicgpt.corpus import prepare, read_manifest
from musicgpt.corpus.shards import verify
from musicgpt.corpus.workdir import PartialResults, PrepareLock
from musicgpt.errors import DatasetError
from tiny_models import tiny_checkpoint
from training_fixtures import micro_config, write_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
REAL = sorted(FIXTURES.glob("*.mid"))
LATIN1 = os.fsdecode(b"caf\xe9.mid")  # a name that is not UTF-8: Python keeps the byte as a lone surrogate


def run_cli(*args: str, limit_bytes: int | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m musicgpt ARGS` with the real stdout and stderr; with a file-size limit, a disk that fills up."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "musicgpt", *args], capture_output=True, cwd=cwd, timeout=300,
                          preexec_fn=limit if limit_bytes else None)


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    for i, path in enumerate(REAL):
        shutil.copy(path, root / ("sub" if i % 2 else ".") / path.name)
    return root


# ---- names and folders ----------------------------------------------------------------------------------

def test_a_name_that_is_not_utf8_and_broken_links_do_not_stop_prepare(corpus, tmp_path):
    shutil.copy(REAL[0], corpus / "sub" / LATIN1)
    os.symlink(corpus / "gone.mid", corpus / "dangling.mid")
    os.symlink(corpus / "loop.mid", corpus / "loop.mid")
    os.symlink(corpus, corpus / "sub" / "back")  # a directory loop
    done = run_cli("prepare", str(corpus), "--out", str(tmp_path / "out"), "--quiet", "--jobs", "1")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    manifest = read_manifest(tmp_path / "out")
    assert f"sub/{LATIN1}" in [s["path"] for s in manifest["sources"]] + [s["path"] for s in manifest["skipped"]]
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["dangling.mid"].startswith("dangling symlink") and reasons["loop.mid"] == "symlink loop"
    assert reasons["sub/back"].startswith("directory loop")
    assert b"dangling.mid: dangling symlink" in done.stdout and b"caf\xe9.mid" in done.stdout  # printed as it is


def test_attend_and_evaluate_on_a_name_that_is_not_utf8(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    piece = tmp_path / LATIN1
    shutil.copy(REAL[0], piece)
    done = run_cli("attend", str(ckpt), str(piece), "--seconds", "3", "--out", str(tmp_path / "a"))
    assert done.returncode == 0 and b"caf\xe9.arcs.json" in done.stdout, done.stderr.decode(errors="replace")
    page = (tmp_path / "a" / f"{Path(LATIN1).stem}.html").read_text(encoding="utf-8")
    assert "<title>caf\ufffd.mid" in page
    assert run_cli("evaluate", str(ckpt), "--data", str(piece), "--quiet").returncode == 0


def test_evaluate_names_each_bad_file_and_why(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"")
    assert main(["evaluate", str(ckpt), "--data", str(bad), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}: empty file" in err and "none of 1 MIDI file" in err


# ---- a prepared folder is one unit ---------------------------------------------------------------------

def test_a_second_prepare_into_the_same_folder_is_refused_with_the_holders_pid(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with PrepareLock(out):
        done = run_cli("prepare", str(corpus), "--out", str(out), "--quiet")
        assert done.returncode == 1 and f"pid {os.getpid()}".encode() in done.stderr
    prepare(corpus, out, jobs=1, progress=False)  # released: the next run goes ahead


def test_an_interrupted_prepare_keeps_what_it_tokenized(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    added = []
    keep = PartialResults.add

    def interrupt_after_two(self, *args):
        keep(self, *args)
        added.append(args[0])
        if len(added) == 2:
            raise KeyboardInterrupt  # Ctrl-C, or a kill, in the middle of the run

    monkeypatch.setattr(PartialResults, "add", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        prepare(corpus, out, jobs=1, progress=False)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(PartialResults, "add", keep)
    result = prepare(corpus, out, jobs=1, progress=False)
    assert result.reused == 2 and result.tokenized == len(REAL) - 2
    assert not list(out.glob(".partial-*")) and verify(out)
    clean = prepare(corpus, tmp_path / "clean", jobs=1, progress=False)
    for name in result.manifest["shards"]:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    assert clean.manifest["shards"] == result.manifest["shards"]


def test_shards_that_disagree_with_the_manifest_are_refused(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    prepare(corpus, out, jobs=1, progress=False)
    data = bytearray((out / "train.tokens.bin").read_bytes())
    data[10] ^= 1  # another run's shard, same size
    (out / "train.tokens.bin").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="train.tokens.bin: does not match manifest.json"):
        verify(out)
    config = write_config(micro_config(), tmp_path / "c.toml")
    assert main(["train", "--config", str(config), "--data", str(out), "--out", str(tmp_path / "run")]) == 1
    assert "does not match manifest.json" in capsys.readouterr().err
    (out / "train.tokens.bin").write_bytes(bytes(data[:10]) + bytes([data[10] ^ 1]) + bytes(data[11:]))
    verify(out)
    (out / "valid.offsets.npy").unlink()  # a broken validation split is not "no validation"
    assert main(["train", "--config", str(config), "--data", str(out), "--out", str(tmp_path / "run2")]) == 1
    assert "valid.offsets.npy: missing" in capsys.readouterr().err


def test_a_full_disk_during_prepare_leaves_the_previous_folder_and_one_line(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(corpus, out, jobs=1, progress=False)
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".prepare.lock"}  # noqa
    before = files()
    done = run_cli("prepare", str(corpus), "--out", str(out), "--quiet", "--jobs", "1", limit_bytes=3000)
    err = done.stderr.decode().strip()
    assert done.returncode == 1 and len(err.splitlines()) == 1 and f"{out}/" in err and ": cannot write (" in err, err
    assert "tokens.bin: cannot write" in err and files() == before and verify(out)
    assert not list(out.glob(".*.tmp"))


# ---- runs ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(FIXTURES, out, jobs=1, progress=False)
    return out


def test_a_full_disk_while_training_ends_in_one_line_and_the_run_resumes(prepared, tmp_path):
    config = write_config(micro_config(train={"steps": 3, "eval_every": 0}), tmp_path / "c.toml")
    run = tmp_path / "run"
    assert run_cli("train", "--config", str(config), "--data", str(prepared), "--out", str(run)).returncode == 0
    done = run_cli("train", "--resume", str(run), "--set", "train.steps=6", limit_bytes=20_000)
    err = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and "cannot write" in err[-1] and "Traceback" not in done.stderr.decode(), err
    done = run_cli("train", "--resume", str(run), "--set", "train.steps=6")
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert (run / "checkpoints" / "step-0000006").is_dir()


def test_best_is_put_back_after_a_kill_between_the_two_renames_of_its_replacement(prepared, tmp_path, capsys):
    from musicgpt.training.loop import train

    run = tmp_path / "run"
    train(micro_config(train={"steps": 3, "eval_every": 3}), run, data=prepared)
    best = run / "best"
    newer = run / ".best.k1ll3d.tmp"  # the complete new copy, and the old one moved aside: best/ is gone
    shutil.copytree(best, newer)
    (newer / "marker").write_text("new")
    os.rename(best, run / ".best.old-1234abcd")
    assert main(["evaluate", str(run), "--data", str(prepared), "--quiet"]) == 0
    assert (best / "marker").read_text() == "new" and not newer.exists()
    assert main(["train", "--resume", str(run), "--set", "train.steps=4"]) == 0  # the old copy is cleaned up
    assert not list(run.glob(".best.*")) and (best / "config.json").is_file()


def test_a_garbage_line_in_metrics_csv_is_skipped_with_a_warning(prepared, tmp_path, capsys):
    from musicgpt.training.log import read_metrics

    run = tmp_path / "run"
    assert main(["train", "--config", str(write_config(micro_config(train={"steps": 3}), tmp_path / "c.toml")),
                 "--data", str(prepared), "--out", str(run)]) == 0
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


# ---- a checkpoint that disagrees with itself -----------------------------------------------------------

def test_a_tokenizer_json_that_is_not_the_models_is_refused(tmp_path, capsys):
    from musicgpt.errors import CheckpointError
    from musicgpt.model import load_checkpoint
    from musicgpt.tokens import PerformanceTokenizer

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
    from musicgpt.errors import CheckpointError
    from musicgpt.model import load_checkpoint
    from musicgpt.tokens import PerformanceTokenizer

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
    import torch

    from musicgpt.errors import CheckpointError, MusicGPTError
    from musicgpt.model import load_model
    from musicgpt.training.evaluate import Totals, report
    from tiny_models import tiny_model

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


# ---- configs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"[train]\nseed = -1\n", "train.seed: must be >= 0"),
    (b"[train]\nsteps = 1\n# caf\xe9\n", "not UTF-8 text"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, prepared, capsys, content, message):
    (tmp_path / "c.toml").write_bytes(content)
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--data", str(prepared), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_vocab_size_that_disagrees_with_the_tokenizer_is_refused(tmp_path, prepared, capsys):
    config = micro_config(model={"vocab_size": 10})
    assert "model.vocab_size" in config.explicit
    assert main(["train", "--config", str(write_config(config, tmp_path / "c.toml")), "--data", str(prepared),
                 "--out", str(tmp_path / "r")]) == 1
    assert "model.vocab_size: 10 disagrees with the tokenizer" in capsys.readouterr().err


def test_sections_left_to_the_defaults_are_said_and_a_bad_out_is_one_line(tmp_path, prepared, capsys):
    (tmp_path / "empty.toml").write_text("")
    from musicgpt.commands.train import _say_defaults
    from musicgpt.training.config import load_config

    _say_defaults(load_config(tmp_path / "empty.toml"), "empty.toml", fine_tuning=False)
    err = capsys.readouterr().err
    assert "sets nothing in [model]: training the default model (n_layer=6" in err and "steps=1000" in err
    _say_defaults(load_config(tmp_path / "empty.toml", ["train.steps=2", "model.n_layer=1"]), "empty.toml", False)
    assert capsys.readouterr().err == ""
    config = write_config(micro_config(), tmp_path / "c.toml")
    assert main(["train", "--config", str(config), "--data", str(prepared), "--out", "/proc/x/run"]) == 1
    assert "/proc/x/run: cannot create the run directory" in capsys.readouterr().err
