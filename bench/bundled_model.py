"""Everything the bundled model's card reports, measured with the project's own functions, in one command.

    python bench/bundled_model.py --install runs/medium --run runs/medium \\
        --abs-run runs/medium-abs --data data/asap --pop909 data/pop909 --threads 2

    # the twin later, keeping the rest of the results of the same weights:
    python bench/bundled_model.py --run runs/medium --abs-run runs/medium-abs --data data/asap \\
        --pop909 data/pop909 --threads 2 --update --skip eval,fp32,pieces,samples

writes bench/results/bundled_model.json and renders musicgpt/pretrained/MODEL_CARD.md from it
(bench/model_card.py). What it measures, on the weights installed in --checkpoint (default: the
bundled model, musicgpt/pretrained/; `--install CKPT` first installs a checkpoint there with
tools/install_pretrained.py):

- NLL per event (nats), perplexity, accuracy and NLL per event type with
  `musicgpt.training.evaluate.evaluate_checkpoint` (what `musicgpt evaluate` runs) on ASAP's test and valid
  splits at the trained context and at longer ones (--contexts), and on POP909's test split; the
  ASAP test figure at the trained context once more in fp32, to show what bf16 autocast changes;
- the NLL per piece (composer + title) of ASAP's test split with `musicgpt.training.evaluate.score` on each
  piece's performances, and their macro average: one piece (La Campanella) is half the split;
- the absolute-position twin (--abs-run, its best/ checkpoint) on the same data, at the contexts
  its position table allows;
- samples: continuations of primers cut from ASAP test performances (fixed seeds, default
  sampling), and degeneracy measures from `musicgpt.metrics` (repeated 4-note pitch n-grams,
  longest silence, notes per second, longest repeated-pitch run, polyphony for hanging notes) next
  to the same measures on real excerpts of the same length from the same split, plus the
  mgeval-style set comparison.

--max-docs N evaluates a subset (N documents per split, spread over the pieces) for a quick
check; the JSON then says "subset" and the card says it is not the final figure. Evaluations run
in bf16 autocast by default (fast on AMX CPUs; --precision fp32 for exact figures).
Timings are wall-clock on a shared machine (2 cores, speed drifts 2-4x): for orientation only.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

import musicgpt  # noqa: E402
from musicgpt.generation.loop import DEFAULT_MAX_NOTE_SECONDS  # noqa: E402
from musicgpt.device import cpu_flags, cpu_model  # noqa: E402
from musicgpt import checkpoint  # noqa: E402
from musicgpt.model import GPTConfig, load_checkpoint, load_model  # noqa: E402
from musicgpt.training.config import config_to_dict, load_config  # noqa: E402
from musicgpt.corpus.shards import Split, open_split  # noqa: E402
from musicgpt.training.data import Specials, windows  # noqa: E402
from musicgpt.errors import ConfigError, MusicGPTError  # noqa: E402
from musicgpt.training.evaluate import evaluate_checkpoint, report, score  # noqa: E402
from musicgpt.metrics import EmptyPieceError, compare_features, piece_features  # noqa: E402
from musicgpt.music.notes import Notes  # noqa: E402
from musicgpt.corpus.shards import read_manifest  # noqa: E402
from musicgpt.device import autocast_dtype  # noqa: E402

CAVEAT = ("evaluation and samples on this machine's CPU; its timings are wall-clock seconds on a shared machine whose "
          "speed drifts 2-4x within minutes, for orientation, not comparison. Where and how the model was trained: "
          "the run's hardware record (run.json).")
# Loops, stalls, stutters and hanging notes (a NOTE_ON never released sounds to the end of the sample).
DEGENERACY = ("repeated_4gram_share", "longest_silence", "notes_per_second", "longest_pitch_run", "polyphony")
RESULTS = ROOT / "bench" / "results" / "bundled_model.json"


# ---- provenance ----

def machine() -> dict[str, Any]:
    """The CPU, its core count and AMX support, torch, and whether a GPU is present."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in cpu_flags().split(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of RUN/metrics.csv as floats (empty cells dropped)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def config_file_for(run_dir: Path, fine_tune: bool = False) -> Path | None:
    """configs/<run name>.toml when it gives the same config as the run's own config.toml; for a fine-tune (whose
    [model] is the checkpoint's), the preset that gives the same config but for [model]."""
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

    named = ROOT / "configs" / f"{run_dir.name}.toml"
    candidates = [named] + (sorted((ROOT / "configs").glob("*.toml")) if fine_tune else [])
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
    config_arg = _rel(config_file) if config_file else _rel(run_dir / "config.toml")
    command = f"musicgpt train --config {config_arg} --data {data} --out {_rel(run_dir)}"
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
        "dir": _rel(run_dir), "config": config, "config_file": _rel(config_file) if config_file else None,
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
    return {"path": _rel(path), "model": config.to_dict(), "meta": raw.get("meta") or {},
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
    return {"dir": _rel(data_dir), "recipe": manifest.get("recipe"),
            "source_dir": os.path.relpath(source_dir, ROOT) if source_dir else None, "splits": splits,
            "n_files": len(manifest["sources"]) + len(manifest.get("skipped") or []), "n_pieces": len(groups),
            "n_composers": len({g.split("|")[0] for g in groups}), "skipped": len(manifest.get("skipped") or [])}


def _rel(path: Path | str | None) -> str | None:
    if path is None:
        return None
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


# ---- evaluation ----

def pieces_of(data_dir: Path, split: str) -> dict[str, list[int]]:
    """Document indices of each piece (the manifest's group: composer|title) in one split."""
    groups: dict[str, list[int]] = defaultdict(list)
    for source in read_manifest(data_dir)["sources"]:
        if source["split"] == split:
            groups[source["group"]].append(int(source["doc"]))
    return dict(sorted(groups.items()))


def subset_split(split: Split, docs: list[int]) -> Split:
    """An in-memory Split of some documents of `split`, in the given order."""
    parts = [np.asarray(split.doc(d)) for d in docs]
    offsets = np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64)
    return Split(np.concatenate(parts) if parts else np.zeros(0, np.uint16), offsets)


def spread_docs(groups: dict[str, list[int]], limit: int) -> list[int]:
    """Up to `limit` documents, taking one piece's next performance after another (round robin)."""
    chosen, queues = [], [list(v) for v in groups.values()]
    while len(chosen) < limit and any(queues):
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return sorted(chosen)


def make_subset_dir(data_dir: Path, out_dir: Path, max_docs: int) -> Path:
    """A prepared directory holding up to `max_docs` documents per split of `data_dir` (spread over pieces)."""
    manifest = read_manifest(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources, splits = [], {}
    for split in ("train", "valid", "test"):
        try:
            docs = open_split(data_dir, split)
        except MusicGPTError:
            continue
        keep = spread_docs(pieces_of(data_dir, split), max_docs)
        sub = subset_split(docs, keep)
        np.asarray(sub.tokens, dtype="<u2").tofile(out_dir / f"{split}.tokens.bin")
        np.save(out_dir / f"{split}.offsets.npy", sub.offsets)
        renumber = {d: i for i, d in enumerate(keep)}
        for s in manifest["sources"]:
            if s["split"] == split and s["doc"] in renumber:
                sources.append({**s, "doc": renumber[s["doc"]]})
        splits[split] = {"n_docs": sub.n_docs, "n_tokens": sub.n_tokens}
    (out_dir / "tokenizer.json").write_bytes((data_dir / "tokenizer.json").read_bytes())
    (out_dir / "manifest.json").write_text(json.dumps({**manifest, "sources": sources, "splits": splits,
                                                       "subset_of": str(data_dir)}, indent=1))
    return out_dir


def evaluate(ckpt: Path, data_dir: Path, split: str, context: int, args) -> dict[str, Any]:
    """`evaluate_checkpoint` figures (as `musicgpt evaluate --json` writes them) plus wall seconds."""
    t0 = time.perf_counter()
    try:
        result = evaluate_checkpoint(ckpt, [data_dir], split=split, context=context,
                                     batch_size=max(1, args.batch_tokens // context), device="cpu",
                                     precision=args.precision, progress=not args.quiet)
    except ConfigError as exc:  # e.g. an absolute-position model asked for a longer context
        return {"not_applicable": str(exc)}
    figures = result.to_dict()
    figures["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  {split} L={context}: nll {result.nll:.4f} ({result.n_tokens:,} events, {figures['seconds']} s)",
          file=sys.stderr)
    return figures


def per_piece(ckpt: Path, data_dir: Path, split: str, context: int, args) -> dict[str, Any]:
    """NLL per piece (composer + title) with `musicgpt.training.evaluate.score`, the macro average, and the pooled figure."""
    model, tokenizer = load_checkpoint(ckpt)
    docs = open_split(data_dir, split)
    specials = Specials(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    type_of = np.maximum(tokenizer.token_type(np.arange(model.config.vocab_size)), 0)
    amp = autocast_dtype(args.precision, torch.device("cpu"))
    batch = max(1, args.batch_tokens // context)
    pieces, pooled = [], None
    t0 = time.perf_counter()
    for group, doc_ids in pieces_of(data_dir, split).items():
        totals = score(model, windows(subset_split(docs, doc_ids), context, context, specials), context, batch,
                       "cpu", amp, type_of)
        composer, _, title = group.partition("|")
        pieces.append({"piece": group, "composer": composer, "title": title.replace("_", " "),
                       "performances": len(doc_ids), "events": totals.count, "nll": totals.nll_sum / totals.count,
                       "accuracy": totals.correct / totals.count})
        if pooled is None:
            pooled = totals
        else:
            pooled.nll_sum += totals.nll_sum
            pooled.count += totals.count
            pooled.correct += totals.correct
            pooled.type_nll, pooled.type_count = pooled.type_nll + totals.type_nll, pooled.type_count + totals.type_count
            pooled.type_correct = pooled.type_correct + totals.type_correct
        print(f"  {group}: nll {pieces[-1]['nll']:.4f} ({len(doc_ids)} performances)", file=sys.stderr)
    pooled_report = report(pooled, tokenizer.type_names, checkpoint=str(ckpt), data=str(data_dir), split=split,
                           context=context, stride=context, trained_context=model.config.n_ctx,
                           n_docs=docs.n_docs, n_tokens=docs.n_tokens)
    pieces.sort(key=lambda p: -p["events"])
    largest = pieces[0]
    rest = [p for p in pieces if p is not largest]
    return {"split": split, "context": context, "pieces": pieces,
            "macro_nll": float(np.mean([p["nll"] for p in pieces])),
            "pooled_nll": pooled_report.nll,
            "largest_piece": {"piece": largest["piece"], "share_of_events": largest["events"] / pooled.count},
            "pooled_nll_without_largest": (sum(p["nll"] * p["events"] for p in rest) / sum(p["events"] for p in rest)
                                           if rest else None),
            "seconds": round(time.perf_counter() - t0, 1)}


def evaluate_all(ckpt: Path, data: Path, pop909: Path | None, contexts: list[int], args,
                 splits=("test", "valid")) -> dict[str, Any]:
    """Every (corpus, split, context) figure of one checkpoint, keyed 'asap/test/1024'."""
    out = {}
    for split in splits:
        for context in contexts:
            out[f"asap/{split}/{context}"] = evaluate(ckpt, data, split, context, args)
    if pop909 is not None:
        for context in contexts:
            out[f"pop909/test/{context}"] = evaluate(ckpt, pop909, "test", context, args)
    return out


# ---- samples and degeneracy ----

def excerpt(notes: Notes, t0: float, t1: float) -> Notes:
    """Notes starting in [t0, t1), cut off at t1 and moved to start at 0."""
    keep = (notes.start >= t0) & (notes.start < t1)
    part = notes[keep]
    return Notes(part.start - t0, np.minimum(part.end, t1) - t0, part.pitch, part.velocity)


def clock_at(tokenizer, ids: np.ndarray) -> float:
    """Seconds of TIME_SHIFT in `ids`: the time at the end of that token sequence."""
    ids = np.asarray(ids, np.int64)
    shift = tokenizer.token_type(ids) == tokenizer.type_names.index("TIME_SHIFT")
    return float(tokenizer.token_value(ids[shift]).sum() * tokenizer.time_step)


def features_or_none(notes: Notes) -> dict | None:
    """piece_features, or None for a piece without notes."""
    try:
        return piece_features(notes)
    except EmptyPieceError:
        return None


def summary(values: list[float]) -> dict[str, float]:
    """mean, median, std, min, max."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std()),
            "min": float(v.min()), "max": float(v.max())}


def samples(ckpt: Path, data_dir: Path, args, max_note_seconds: float | None = None) -> dict[str, Any]:
    """Continuations of ASAP test primers and their degeneracy measures next to real excerpts of the same length."""
    model, tokenizer = load_checkpoint(ckpt)
    docs = open_split(data_dir, "test")
    span = args.primer_seconds + args.seconds
    decoded = {}

    def notes_of(d: int) -> Notes:
        if d not in decoded:
            decoded[d] = tokenizer.decode(np.asarray(docs.doc(d), np.int64))
        return decoded[d]

    pieces = {g: [d for d in ids if notes_of(d).end_time >= span] for g, ids in pieces_of(data_dir, "test").items()}
    pieces = {g: ids for g, ids in pieces.items() if ids}
    names = list(pieces)
    picks = [names[int(round(i))] for i in np.linspace(0, len(names) - 1, min(args.primers, len(names)))]
    picks = list(dict.fromkeys(picks))
    generated, rows = [], []
    t0 = time.perf_counter()
    for i, group in enumerate(picks):
        doc = pieces[group][0]
        seed = args.seed + i
        out = musicgpt.generate(model, np.asarray(docs.doc(doc), np.int64), tokenizer=tokenizer,
                                primer_seconds=args.primer_seconds, seconds=args.seconds,
                                num_samples=args.samples_per_primer, seed=seed, threads=args.threads,
                                progress=not args.quiet, max_note_seconds=max_note_seconds)
        for k, s in enumerate(out):
            clock0 = clock_at(tokenizer, s.ids[: s.primer_length])  # where the primer ends and new music begins
            continuation = excerpt(s.notes[~s.primer_notes], clock0, clock0 + args.seconds)
            generated.append(continuation)
            rows.append({"piece": group, "doc": doc, "seed": seed, "sample": k, "new_tokens": s.n_generated,
                         "stop_reason": s.stop_reason, "notes": len(continuation)})
            if args.samples_out:
                s.save(args.samples_out, f"{i:02d}_{k}_{group.replace('|', '_')}")
        print(f"  samples from {group}: {[r['notes'] for r in rows[-len(out):]]} notes", file=sys.stderr)
    gen_seconds = time.perf_counter() - t0
    reference, ref_rows = [], []
    for group, ids in pieces.items():
        for d in ids[: args.real_per_piece]:
            reference.append(excerpt(notes_of(d), args.primer_seconds, span))
            ref_rows.append({"piece": group, "doc": d, "notes": len(reference[-1])})
    gen_features = [features_or_none(n) for n in generated]
    ref_features = [features_or_none(n) for n in reference]
    for row, f in zip(rows, gen_features):
        row.update({m: (float(f[m]) if f is not None else None) for m in DEGENERACY})
    usable_gen = [f for f in gen_features if f is not None]
    usable_ref = [f for f in ref_features if f is not None]
    measures = {}
    for m in DEGENERACY:
        real = [float(f[m]) for f in usable_ref]
        gen = [float(f[m]) for f in usable_gen]
        low, high = min(real), max(real)
        outside = [v > high or (m == "notes_per_second" and v < low) for v in gen]
        measures[m] = {"generated": summary(gen), "real": summary(real), "outside_real_range": float(np.mean(outside))}
    degenerate = []
    for f in gen_features:
        if f is None:
            degenerate.append(True)
            continue
        bad = False
        for m in DEGENERACY:
            lo, hi = measures[m]["real"]["min"], measures[m]["real"]["max"]
            bad |= f[m] > hi or (m == "notes_per_second" and f[m] < lo)
        degenerate.append(bool(bad))
    comparison = compare_features(usable_gen, usable_ref) if len(usable_gen) >= 2 and len(usable_ref) >= 2 else {}
    sets = {name: {"overlap": float(c["overlap"]), "kl": float(c["kl"]),
                   "generated_mean": _scalar(c["generated"]["mean"]), "real_mean": _scalar(c["reference"]["mean"])}
            for name, c in comparison.items()}
    return {
        "primers": [{"piece": g, "doc": pieces[g][0]} for g in picks], "primer_seconds": args.primer_seconds,
        "seconds": args.seconds, "samples_per_primer": args.samples_per_primer, "seed": args.seed,
        "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                     "max_note_seconds": max_note_seconds or 0.0, "keep_type_mass": True},
        "n_generated": len(generated), "n_real": len(reference), "empty_samples": sum(f is None for f in gen_features),
        "stop_reasons": {r: sum(x["stop_reason"] == r for x in rows) for r in sorted({x["stop_reason"] for x in rows})},
        "degeneracy": measures,
        "degenerate_share": float(np.mean(degenerate)),
        "degenerate_rule": "a sample is counted degenerate when it has no notes, or its repeated-4-gram share, longest "
                           "silence, longest repeated-pitch run or polyphony exceeds the largest value among the real "
                           "excerpts, or its notes per second lies outside their range",
        "set_comparison": sets, "samples": rows, "real": ref_rows, "generation_seconds": round(gen_seconds, 1),
    }


def _scalar(value) -> float | None:
    array = np.asarray(value)
    return float(array.reshape(-1)[0]) if array.size == 1 else None


# ---- main ----

def main(argv: list[str] | None = None) -> int:
    """Measure, write the JSON, render the card."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the relative-attention training run directory")
    parser.add_argument("--abs-run", type=Path, help="the absolute-position twin's run directory (its best/)")
    parser.add_argument("--data", type=Path, required=True, help="ASAP prepared with `musicgpt prepare` (test/valid)")
    parser.add_argument("--pop909", type=Path, help="POP909 prepared with `musicgpt prepare` (its test split)")
    parser.add_argument("--checkpoint", type=Path, default=checkpoint.DEFAULT_DIR,
                        help="the weights the card describes (default: the bundled model, %(default)s)")
    parser.add_argument("--install", type=Path, metavar="CKPT",
                        help="first install this checkpoint (or run directory: its best/) into --checkpoint")
    parser.add_argument("--contexts", default="1024,2048", help="evaluation contexts (default %(default)s)")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="evaluation autocast")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="tokens per forward pass (default 8192)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the run shares the cores)")
    parser.add_argument("--max-docs", type=int, help="evaluate at most N documents per split (a quick, partial check)")
    parser.add_argument("--primers", type=int, default=8, help="primers, one per ASAP test piece (default 8)")
    parser.add_argument("--samples-per-primer", type=int, default=2, help="samples per primer, one batch (default 2)")
    parser.add_argument("--primer-seconds", type=float, default=10.0, help="primer length (default 10 s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each continuation (default 30 s)")
    parser.add_argument("--real-per-piece", type=int, default=2, help="real excerpts per test piece (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first primer's batch (then +1 each)")
    parser.add_argument("--samples-out", type=Path, help="also write the samples (MIDI) here")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: eval,fp32,pieces,abs,samples")
    parser.add_argument("--label", default="final", help="'final', or e.g. 'intermediate (step 1500)' for dev runs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON output (default %(default)s)")
    parser.add_argument("--base", type=Path, metavar="RESULTS.json",
                        help="a fine-tune: the results JSON of the model it was fine-tuned from (its training, figures "
                             "and absolute twin go on the card as the base)")
    parser.add_argument("--steering", type=Path, metavar="STEERING.json",
                        help="bench/steering.py's results for these weights (controls, infilling, guidance) for the card")
    parser.add_argument("--update", action="store_true",
                        help="keep the parts of an existing --out (same weights) that this call skips, e.g. "
                             "--update --skip eval,fp32,pieces,samples --abs-run DIR adds the twin later")
    parser.add_argument("--card", type=Path, help="card output (default: CHECKPOINT/MODEL_CARD.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = {s for s in args.skip.split(",") if s}
    contexts = [int(c) for c in args.contexts.split(",")]
    started = time.perf_counter()

    installed = None
    if args.install is not None:
        from install_pretrained import install

        installed = install(args.install, args.checkpoint)
        print(f"installed {installed['source']} into {installed['dest']} ({installed['stored_dtype']}, "
              f"{installed['bytes']:,} bytes)", file=sys.stderr)
    ckpt = checkpoint.resolve(args.checkpoint)
    info = checkpoint_info(ckpt)
    source = info["meta"].get("source")
    if source and not (ROOT / source).resolve().is_relative_to(args.run.resolve()):
        print(f"warning: {ckpt} was installed from {source}, not from {args.run}", file=sys.stderr)

    data, pop909 = args.data, args.pop909
    scratch = None
    if args.max_docs:
        scratch = tempfile.TemporaryDirectory(prefix="bundled-subset-")
        data = make_subset_dir(args.data, Path(scratch.name) / "asap", args.max_docs)
        pop909 = make_subset_dir(args.pop909, Path(scratch.name) / "pop909", args.max_docs) if pop909 else None

    run = run_info(args.run, info["meta"].get("step"))
    command = "python bench/bundled_model.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = previous_results(args.out, info) if args.update else {}
    result.update({
        "label": args.label, "subset": f"at most {args.max_docs} documents per split" if args.max_docs else None,
        "caveat": CAVEAT, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
        "command": command, "commands": result.get("commands", []) + [command],
        "precision": args.precision, "threads": args.threads, "contexts": contexts,
        "checkpoint": info, "installed": installed or result.get("installed"),
        "run": run, "data": {"asap": data_info(args.data), "pop909": data_info(args.pop909) if args.pop909 else None},
    })
    if args.base is not None:
        base = json.loads(args.base.read_text())
        result["base"] = {k: base.get(k) for k in ("checkpoint", "run", "evaluations", "absolute_twin", "command")}
    if args.steering is not None:
        result["steering"] = json.loads(args.steering.read_text())
    if "eval" not in skip:
        print(f"evaluating {ckpt}", file=sys.stderr)
        result["evaluations"] = evaluate_all(ckpt, data, pop909, contexts, args)
    if "fp32" not in skip and args.precision != "fp32" and "eval" not in skip:
        print("fp32 check of the headline figure", file=sys.stderr)
        key, n_ctx = f"asap/test/{info['model']['n_ctx']}", info["model"]["n_ctx"]
        exact = evaluate(ckpt, data, "test", n_ctx, argparse.Namespace(**{**vars(args), "precision": "fp32"}))
        fast = result["evaluations"][key]["nll"]
        result["fp32_check"] = {"figure": key, "nll_fp32": exact["nll"], f"nll_{args.precision}": fast,
                                "difference": fast - exact["nll"], "seconds": exact["seconds"]}
    if "pieces" not in skip:
        print("NLL per piece (ASAP test)", file=sys.stderr)
        result["per_piece"] = per_piece(ckpt, data, "test", info["model"]["n_ctx"], args)
    if args.abs_run is not None and "abs" not in skip:
        twin = args.abs_run / "best" if (args.abs_run / "best" / checkpoint.CONFIG).is_file() else args.abs_run
        print(f"evaluating the absolute-position twin {twin}", file=sys.stderr)
        twin_info = checkpoint_info(twin)
        twin_run = run_info(args.abs_run, twin_info["meta"].get("step"))
        result["absolute_twin"] = {"checkpoint": twin_info, "run": twin_run,
                                   "evaluations": evaluate_all(twin, data, pop909, contexts, args)}
    if "samples" not in skip:
        print("samples", file=sys.stderr)
        result["samples"] = samples(ckpt, args.data, args, DEFAULT_MAX_NOTE_SECONDS)
        print("samples without the long-note limit", file=sys.stderr)
        result["samples_uncapped"] = samples(ckpt, args.data, args, 0.0)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if scratch is not None:
        scratch.cleanup()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    from model_card import write_card

    card = write_card(json.loads(args.out.read_text()), args.card or ckpt / "MODEL_CARD.md")
    print(f"wrote {card}")
    return 0


def previous_results(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The results JSON at `path`, to be updated part by part; it must describe the same weights."""
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    before = previous.get("checkpoint", {}).get("meta", {}).get("weights_sha256")
    if before != info["meta"].get("weights_sha256"):
        raise SystemExit(f"--update: {path} describes other weights (sha256 {before}); run without --update")
    return previous


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
