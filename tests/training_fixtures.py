"""Shared helpers for the training, evaluation and distributed tests: a prepared fixture corpus, tiny configs, the
CLI in a subprocess (also on a disk that fills up), a file name that is not UTF-8."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from musicgpt.training.config import Config, config_from_dict, dump_toml
from musicgpt.training.log import read_metrics

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
LATIN1 = os.fsdecode(b"caf\xe9.mid")  # a name that is not UTF-8: Python keeps the byte as a lone surrogate


def prepare_fixtures(out: Path) -> Path:
    """The four fixture MIDI files prepared into `out` (train 2 docs, valid 1, test 1)."""
    from musicgpt.corpus.prepare import prepare

    prepare(FIXTURES, out, jobs=1, progress=False)
    return out


def micro_config(**sections) -> Config:
    """A model small enough for a step in milliseconds, with dropout and augmentation on (RNG matters)."""
    raw = {
        "model": {"n_layer": 2, "n_head": 2, "d_model": 32, "d_ff": 64, "n_ctx": 32, "max_relative_distance": 16,
                  "dropout": 0.1},
        "data": {"valid_windows": 4, "prefetch": 2, "workers": 1},
        "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 2},
        "train": {"steps": 6, "batch_size": 2, "precision": "fp32", "device": "cpu", "eval_every": 3,
                  "checkpoint_every": 3, "keep_last": 2, "log_every": 1, "progress": False},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


def write_config(config: Config, path: Path) -> Path:
    path.write_text(dump_toml(config))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train loss from a run's metrics.csv."""
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir / "metrics.csv") if r["train_loss"] is not None}


def cli(*args: str, **kwargs) -> subprocess.Popen:
    """Start `python -m musicgpt ARGS` in the repository root."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "musicgpt", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def run_cli(*args: str, limit_bytes: int | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m musicgpt ARGS` with the real stdout and stderr; with a file-size limit, a disk that fills up."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "musicgpt", *args], capture_output=True, cwd=cwd, timeout=300,
                          preexec_fn=limit if limit_bytes else None)
