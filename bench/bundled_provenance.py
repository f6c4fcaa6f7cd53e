"""Where the bundled model's figures come from: the training run (config, command, metrics.csv, run.json),
the checkpoint (config, meta, dtypes, size) and the prepared data (splits, pieces, composers), for the card.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from bench.format import shown
from musicgpt import GPTConfig, checkpoint, load_model
from musicgpt.corpus.shards import read_manifest
from musicgpt.errors import MusicGPTError
from musicgpt.training.config import PRESETS_DIR, config_to_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of RUN/metrics.csv as floats (empty cells dropped)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def config_file_for(run_dir: Path, fine_tune: bool = False) -> Path | None:
    """The preset named after the run (musicgpt/configs/<run name>.toml) when it gives the same config as the
    run's own config.toml; for a fine-tune (whose [model] is the checkpoint's), the preset that gives the same
    config but for [model]."""
    def same(candidate: Path) -> bool:
        try:
            a, b = config_to_dict(load_config(candidate)), config_to_dict(load_config(run_dir / "config.toml"))
        except MusicGPTError:
            return False
        if fine_tune:
            a.pop("model", None), b.pop("model", None)
        for d in (a, b):  # a display setting (off when the run's output is not a terminal), not the recipe
            d.get("train", {}).pop("progress", None)
        return a == b

    named = PRESETS_DIR / f"{run_dir.name}.toml"
    candidates = [named] + (sorted(PRESETS_DIR.glob("*.toml")) if fine_tune else [])
    return next((c for c in candidates if c.is_file() and same(c)), None)


def run_info(run_dir: Path, step: int | None = None) -> dict[str, Any]:
    """What the run directory says about training: config, command, steps, tokens, time, dates, valid curve.

    `step`: the installed checkpoint's step, whose training time (metrics.csv time_s) is reported too.
    """
    run_json = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    with open(run_dir / "config.toml", "rb") as f:
        config = tomllib.load(f)
    rows = read_metrics(run_dir)
    config_file = config_file_for(run_dir, fine_tune=bool(run_json.get("init_from")))
    data = run_json.get("data") or "DATA"
    config_arg = shown(config_file) if config_file else shown(run_dir / "config.toml")
    command = f"musicgpt train --config {config_arg} --data {data} --out {shown(run_dir)}"
    if run_json.get("init_from"):
        command += f" --init-from {run_json['init_from']}"
    train_rows = [r for r in rows if "train_loss" in r]
    last = train_rows[-1] if train_rows else {}
    valid = [{"step": int(r["step"]), "valid_nll": r["valid_nll"]} for r in rows if "valid_nll" in r]
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    finished = datetime.datetime.fromtimestamp((run_dir / "metrics.csv").stat().st_mtime) if rows else None
    resumes = run_json.get("resumes") or []  # `--resume RUN --set ...`: what changed, from which checkpoint
    # a fine-tune (--init-from) runs [finetune].steps when set, and its resumes change that key
    steps_key = "finetune.steps" if run_json.get("init_from") and config.get("finetune", {}).get("steps") else "train.steps"
    planned = config.get(steps_key.split(".")[0], {}).get("steps")
    for resume in resumes:
        planned = resume.get("changed", {}).get(steps_key, [None, planned])[1]
    return {
        "dir": shown(run_dir), "config": config, "config_file": shown(config_file) if config_file else None,
        "command": command, "data": data, "started": run_json.get("started"),
        "last_logged": finished.isoformat(timespec="seconds") if finished else None,
        "world_size": run_json.get("world_size"), "init_from": run_json.get("init_from"),
        "hardware": run_json.get("hardware"),  # what it trained on (runs before that field: the card says so)
        "steps_logged": int(last.get("step", 0)), "steps_planned": planned, "resumes": resumes,
        "tokens_logged": int(last.get("tokens", 0)), "train_seconds": last.get("time_s"),
        "final_train_loss": float(np.mean([r["train_loss"] for r in train_rows[-10:]])) if train_rows else None,
        "median_tokens_per_s": float(np.median(speeds)) if speeds else None,
        "valid_curve": valid, "best_valid_nll": min((v["valid_nll"] for v in valid), default=None),
        "seconds_at_checkpoint": next((r["time_s"] for r in reversed(train_rows)
                                       if step is not None and r["step"] <= step and "time_s" in r), None),
    }


def checkpoint_info(path: Path) -> dict[str, Any]:
    """Config, meta, size, stored dtypes and parameter count of a checkpoint directory."""
    from safetensors import safe_open

    config, raw = GPTConfig.from_checkpoint(path), checkpoint.read_config(path)
    with safe_open(str(path / checkpoint.WEIGHTS), framework="pt") as f:
        dtypes = sorted({f.get_slice(k).get_dtype() for k in f.keys()})
    tokenizer = checkpoint.load_tokenizer(path)
    return {"path": shown(path), "model": config.to_dict(), "meta": raw.get("meta") or {},
            "weights_bytes": (path / checkpoint.WEIGHTS).stat().st_size, "stored_dtypes": dtypes,
            "parameters": load_model(path).num_parameters(),
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None}


def data_info(data_dir: Path) -> dict[str, Any]:
    """Recipe, source folder, split sizes and piece/composer counts of a prepared directory."""
    manifest = read_manifest(data_dir)
    splits = {name: dict(s) for name, s in (manifest.get("splits") or {}).items()}
    for name, s in splits.items():
        s["n_pieces"] = len({x["group"] for x in manifest["sources"] if x["split"] == name})
    groups = {x["group"] for x in manifest["sources"]}
    source_dir = manifest.get("source_dir")
    return {"dir": shown(data_dir), "recipe": manifest.get("recipe"),
            "source_dir": os.path.relpath(source_dir, ROOT) if source_dir else None, "splits": splits,
            "n_files": len(manifest["sources"]) + len(manifest.get("skipped") or []), "n_pieces": len(groups),
            "n_composers": len({g.split("|")[0] for g in groups}), "skipped": len(manifest.get("skipped") or [])}
