"""A training run's directory: its files, its step checkpoints, and the state a checkpoint must carry to resume.

    RUN_DIR/config.toml               the full config after overrides (what --resume reads back)
    RUN_DIR/run.json                  data directory, --init-from, world size, hardware, resumes
    RUN_DIR/metrics.csv               train loss, lr, tokens/s, valid NLL (see musicgpt.training.log)
    RUN_DIR/checkpoints/step-NNNNNNN/ the last `keep_last` checkpoints, each loadable by generate/evaluate,
                                      plus optimizer.* (AdamW state), trainer.* (step, schedule, data
                                      position, RNG states): safetensors + json, no pickle
    RUN_DIR/best/                     the weights with the lowest valid NLL so far
    RUN_DIR/data/                     the prepared corpus when --data was a MIDI folder

Checkpoints are written atomically (musicgpt.checkpoint); a killed run may leave hidden temporary
directories, which `clean_partial` removes, and never a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from musicgpt import checkpoint
from musicgpt._io import atomic_write_text, recover_directories, remove_leftovers
from musicgpt.device import Dist
from musicgpt.errors import CheckpointError, WriteError
from musicgpt.training.config import Config, config_to_dict, dump_toml, load_config

__all__ = ["CHECKPOINTS", "BEST", "STEP_PREFIX", "checkpoint_dirs", "step_dir", "clean_partial", "prune",
           "start_run_dir", "read_run_json", "record_resume", "resume_config", "config_changes", "rng_state",
           "set_rng_state", "gather_torch_rng"]

CHECKPOINTS, BEST, STEP_PREFIX = checkpoint.RUN_CHECKPOINTS, checkpoint.RUN_BEST, checkpoint.STEP_PREFIX
RUN_JSON = "run.json"
CONFIG_TOML = "config.toml"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX)
             and checkpoint.has_state(p, "trainer") and checkpoint.has_state(p, "optimizer")]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def clean_partial(run_dir: Path) -> list[Path]:
    """Remove what a killed run may have left: temporary files and directories, half-deleted checkpoints.

    First, a checkpoint directory that a kill between the two renames of its replacement left missing
    (best/, say) is put back from the newest complete copy. Returns the directories put back.
    """
    restored = recover(run_dir)
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_dir():
                remove_leftovers(p)  # a state file being replaced (save_state)
    for p in run_dir.glob(f".{BEST}.*"):
        shutil.rmtree(p, ignore_errors=True)
    remove_leftovers(run_dir)  # metrics.csv, run.json, config.toml being replaced
    if (run_dir / BEST).is_dir():
        remove_leftovers(run_dir / BEST)
    return restored


def recover(run_dir: Path) -> list[Path]:
    """Put back best/ (or a step checkpoint) that a kill in the middle of replacing it left missing."""
    complete = lambda p: (p / checkpoint.CONFIG).is_file() and (p / checkpoint.WEIGHTS).is_file()  # noqa: E731
    restored = recover_directories(run_dir, complete)
    if (run_dir / CHECKPOINTS).is_dir():
        restored += recover_directories(run_dir / CHECKPOINTS, complete)
    return restored


def prune(run_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(run_dir)[: max(0, len(checkpoint_dirs(run_dir)) - keep)]:
        trash = old.parent / f".trash-{old.name}"
        os.rename(old, trash)  # atomic: a half-deleted directory never looks like a checkpoint
        shutil.rmtree(trash, ignore_errors=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, CUDA) random states, pickle-free."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "numpy": np.random.get_state(legacy=False),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of rng_state."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_torch_rng(d: Dist) -> list[torch.Tensor]:
    """The torch CPU RNG state of every rank (dropout differs per rank)."""
    mine = torch.get_rng_state()
    if not d.enabled:
        return [mine]
    device = d.device if d.device.type == "cuda" else torch.device("cpu")
    out = [torch.empty_like(mine, device=device) for _ in range(d.world)]
    dist.all_gather(out, mine.to(device))
    return [t.cpu() for t in out]


def step_dir(run_dir: Path, step: int) -> Path:
    """Where the checkpoint of optimizer step `step` goes."""
    return run_dir / CHECKPOINTS / f"{STEP_PREFIX}{step:07d}"


def start_run_dir(run_dir: Path, config: Config, run: dict[str, Any]) -> None:
    """Create a new run: config.toml and run.json (refused when the directory already holds checkpoints)."""
    if checkpoint_dirs(run_dir):
        raise CheckpointError(f"{run_dir}: already holds checkpoints; use --resume {run_dir} "
                              "to continue it, or another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    atomic_write_text(run_dir / CONFIG_TOML, dump_toml(config))
    _write_run_json(run_dir, run)


def with_model(config: Config, model: Any, run_dir: Path | None) -> Config:
    """`config` with the model actually built (its vocabulary comes from the run's tokenizer), rewritten into
    RUN_DIR/config.toml when run_dir is given (rank 0), so the record tells the truth."""
    explicit = config.explicit
    config = replace(config, model=model)
    config.explicit = explicit
    if run_dir is not None:
        atomic_write_text(run_dir / CONFIG_TOML, dump_toml(config))
    return config


def read_run_json(run_dir: Path) -> dict[str, Any]:
    """The run.json of a run directory (what --resume needs besides config.toml)."""
    path = run_dir / RUN_JSON
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: not a training run directory ({RUN_JSON} is missing)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"--resume {run_dir}: {RUN_JSON} is unreadable ({exc})") from None


def record_resume(run_dir: Path, run: dict[str, Any], changed: dict[str, list]) -> None:
    """Append to run.json that the run was resumed with these config changes (so they stay on the record)."""
    dirs = checkpoint_dirs(run_dir)
    run.setdefault("resumes", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                          "from": dirs[-1].name if dirs else None, "changed": changed})
    _write_run_json(run_dir, run)


def _write_run_json(run_dir: Path, run: dict[str, Any]) -> None:
    atomic_write_text(run_dir / RUN_JSON, json.dumps(run, indent=2) + "\n")


def config_changes(before: Config, after: Config) -> dict[str, list]:
    """The dotted keys whose values differ between two configs, as {key: [before, after]}."""
    a, b = config_to_dict(before), config_to_dict(after)
    return {f"{section}.{key}": [a[section].get(key), value]
            for section, values in b.items() for key, value in values.items() if a[section].get(key) != value}


def resume_config(run_dir: str | Path, overrides=()) -> Config:
    """The config a run goes on with: RUN_DIR/config.toml, the changes earlier resumes made (run.json), then
    `key=value` overrides; so a later plain --resume keeps an earlier --set instead of reverting it."""
    path = Path(run_dir) / CONFIG_TOML
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: not a training run directory ({CONFIG_TOML} is missing)")
    run = read_run_json(Path(run_dir)) if (Path(run_dir) / RUN_JSON).is_file() else {}
    earlier = [f"{key}={_toml_value(after)}" for resume in run.get("resumes") or []
               for key, (_, after) in resume.get("changed", {}).items()]
    return load_config(path, [*earlier, *overrides])


def _toml_value(value: Any) -> str:
    """A value as TOML text, as `--set key=TEXT` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)  # strings and lists of them: JSON's quoting is valid TOML here
