"""Length generalization: relative vs absolute positions, trained at context 512, scored at 512, 1024, 2048.

The claim of Huang et al. 2018 to reproduce: a relative-attention model keeps (or improves) its NLL
when it reads longer windows than it was trained on; one with absolute positions degrades.

Both models come from the presets lengthgen-rel and lengthgen-abs (musicgpt/configs/), which differ in
`model.position` alone (checked below): same data, steps, batch, schedule and seed. Each is trained
with musicgpt.training.loop and scored with musicgpt.training.evaluate.evaluate_checkpoint (NLL per event in nats,
windows of `context` tokens moved by `context`, every token scored once).

Absolute beyond its training length: GPT-2's learned position table has n_ctx = 512 rows and
nothing after them, so the model as trained cannot read a 1024-token window at all
(evaluate_checkpoint refuses; the refusal is recorded as "not evaluable"). To still measure
something, a derived copy gets positions clamped to the last row (rows 512 .. 2047 = row 511):
identical to the original within 512 tokens (checked on a batch), and the most forgiving
extension a learned table allows without training. musicgpt/model/ is not changed.

Also measured: NLL by position inside the first 2048-token window of every long evaluation
document, which shows where a model gains or loses beyond position 512.

Sizes: --size quick (a 2-layer model for a few hundred steps; data/asap's test split sampled to a
few documents, or the repo's fixtures when no corpus is prepared, which are then also the training
data: said so in the JSON) and --size full (configs as written, whole test split; tens of minutes
per model on a busy 2-core CPU). Writes bench/results/lengthgen.json (quick) or lengthgen-full.json.

    python -m bench.length_generalization                 # quick, a few minutes
    nohup python -m bench.length_generalization --size full > runs/lengthgen-full.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

import torch
import torch.nn.functional as F

from bench.format import shown
from bench.machine import CAVEAT, NO_GPU, machine_info
from musicgpt import MusicGPT, load_checkpoint, load_model, save_model
from musicgpt._io import atomic_files, atomic_write_text
from musicgpt.corpus.shards import FORMAT, MANIFEST, VERSION, open_split, write_split
from musicgpt.errors import ConfigError, MusicGPTError
from musicgpt.training.config import PRESETS_DIR, Config, config_to_dict, load_config
from musicgpt.training.data import Specials
from musicgpt.training.evaluate import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"relative": PRESETS_DIR / "lengthgen-rel.toml", "absolute": PRESETS_DIR / "lengthgen-abs.toml"}
CONTEXTS = (512, 1024, 2048)
POSITION_BIN = 64  # tokens per point of the NLL-by-position curve
ASAP_PREPARED = ROOT / "data" / "asap"
FIXTURES = ROOT / "tests" / "fixtures"
# The quick size: the same recipe shrunk to a 2-layer model and a few hundred steps (minutes on a CPU).
QUICK = ("model.n_layer=2", "model.n_head=2", "model.d_model=64", "model.d_ff=256", "train.steps=300",
         "train.batch_size=4", "optim.warmup_steps=30", "optim.lr=3e-3", "optim.min_lr=3e-4",
         "train.eval_every=0", "train.checkpoint_every=1000000", "train.log_every=50", "data.prefetch=1")
QUICK_EVAL = (8, 4096)  # quick: the first 8 documents of the split, each cut to 4096 tokens
STRICT = 0.02  # NLL ratios within 2% of 1 count as "stays close"


# ---- data -------------------------------------------------------------------------------------------


def resolve_data(arg: str | None, size: str, work: Path) -> tuple[Path, str]:
    """A prepared corpus: --data, else data/asap when prepared, else the fixtures prepared into `work`."""
    from musicgpt.corpus.prepare import prepare

    if arg:
        path = Path(arg)
        if (path / "manifest.json").is_file():
            return path, str(path)
        if not path.is_dir():
            raise MusicGPTError(f"--data {path}: no such directory")
        prepare(path, work / "data", progress=False)
        return work / "data", f"{path} (prepared for this run)"
    if (ASAP_PREPARED / "manifest.json").is_file():
        return ASAP_PREPARED, "data/asap (ASAP, prepared with musicgpt prepare)"
    if size == "full":
        raise MusicGPTError("--size full needs a corpus: prepare ASAP first (musicgpt prepare "
                            "../shared/corpora/asap --out data/asap) or pass --data DIR")
    prepare(FIXTURES, work / "fixtures", progress=False)
    return work / "fixtures", "tests/fixtures (no prepared corpus: the 4 repo fixtures)"


def eval_split(data_dir: Path) -> str:
    """The held-out split to score: test when it has documents, else valid, else train (fixtures)."""
    for split in ("test", "valid", "train"):
        try:
            if open_split(data_dir, split).n_docs > 0:
                return split
        except MusicGPTError:
            continue
    raise MusicGPTError(f"{data_dir}: no documents in any split")


def write_sample(data_dir: Path, out: Path, splits: list[str], max_docs: int, max_tokens: int) -> tuple[Path, dict]:
    """A prepared directory whose 'test' split holds the first documents of `splits`, each cut to max_tokens."""
    docs = []
    for split in splits:
        s = open_split(data_dir, split)
        docs += [np.asarray(s.doc(i)[:max_tokens]) for i in range(s.n_docs)]
    docs = [d for d in docs if len(d)][:max_docs]
    out.mkdir(parents=True, exist_ok=True)
    with atomic_files() as group:  # a prepared folder: shards, tokenizer, then the manifest that lists them
        offsets, shards = write_split(group, out, "test", docs)
        group.write(out / "tokenizer.json", lambda tmp: shutil.copyfile(data_dir / "tokenizer.json", tmp))
        manifest = {"format": FORMAT, "version": VERSION, "sample_of": str(data_dir), "sampled_splits": splits,
                    "docs": len(docs), "max_tokens_per_doc": max_tokens, "sources": [], "shards": shards,
                    "splits": {"test": {"n_docs": len(docs), "n_tokens": int(offsets[-1])}}}
        group.write_text(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return out, {"docs": len(docs), "tokens": int(offsets[-1])}


# ---- training ---------------------------------------------------------------------------------------


def load_pair(overrides: tuple[str, ...]) -> dict[str, Config]:
    """Both configs, with overrides; refuse them unless they differ in model.position alone."""
    configs = {name: load_config(path, overrides) for name, path in CONFIGS.items()}
    a, b = (config_to_dict(c) for c in configs.values())
    a["model"].pop("position"), b["model"].pop("position")
    if a != b:
        diff = sorted(f"{t}.{k}" for t in a for k in a[t] if a[t][k] != b[t].get(k))
        raise ConfigError(f"{CONFIGS['relative'].name} and {CONFIGS['absolute'].name} must differ in "
                          f"model.position only; they also differ in {', '.join(diff)}")
    return configs


def last_checkpoint(run_dir: Path, steps: int) -> Path | None:
    """The run's checkpoint of step `steps`, if it finished."""
    path = run_dir / "checkpoints" / f"step-{steps:07d}"
    return path if (path / "config.json").is_file() else None


def last_logged(run_dir: Path) -> dict[str, float]:
    """The last logged train_loss and time_s (training seconds, evaluations excluded) of a run's metrics.csv."""
    import csv

    path = run_dir / "metrics.csv"
    found: dict[str, float] = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                found.update({k: float(row[k]) for k in ("train_loss", "time_s") if row.get(k)})
    return found


def train_one(name: str, config: Config, run_dir: Path, data_dir: Path, reuse: bool) -> dict:
    """Train one model (or reuse its finished run) and describe what was trained."""
    from musicgpt.training.loop import train
    from musicgpt.training.rundir import resume_config

    steps = config.train.steps
    ckpt = last_checkpoint(run_dir, steps) if reuse else None
    reused = ckpt is not None
    if ckpt is None:
        # an interrupted run of the same config continues where its last checkpoint left it
        resumable = reuse and any((run_dir / "checkpoints").glob("step-*/config.json")) and \
            resume_config(run_dir) == config
        if run_dir.exists() and not resumable:
            shutil.rmtree(run_dir)
        print(f"{'resuming' if resumable else 'training'} {name}: {steps} steps at context {config.model.n_ctx}",
              flush=True)
        result = train(config, run_dir, data=data_dir, resume=resumable)
        ckpt = last_checkpoint(run_dir, steps)
        if ckpt is None or result.interrupted:
            raise MusicGPTError(f"training {name} stopped at step {result.step} of {steps}")
    else:
        print(f"reusing {ckpt}", flush=True)
    meta = json.loads((ckpt / "config.json").read_text(encoding="utf-8")).get("meta", {})
    model = load_model(ckpt)
    logged = last_logged(run_dir)
    return {"checkpoint": str(ckpt), "parameters": model.num_parameters(), "steps": steps,
            "tokens_seen": meta.get("tokens"), "train_seconds": logged.get("time_s"), "threads": config.train.threads,
            "final_train_loss": logged.get("train_loss"), "precision": config.train.precision,
            "reused_finished_run": reused, "model": model.config.to_dict()}


# ---- the clamped absolute model ---------------------------------------------------------------------


def clamped_copy(src: Path, dst: Path, n_ctx: int) -> tuple[Path, float]:
    """A copy of an absolute-position checkpoint whose table is extended to n_ctx rows by repeating its last row.

    Returns the path and the largest logit difference to the original on a full training-length batch
    (0.0: within the original n_ctx the copy is the same model).
    """
    model, tokenizer = load_checkpoint(src)
    table = model.pos_emb.weight.detach()  # (n_ctx_trained, C)
    longer = MusicGPT(replace(model.config, n_ctx=n_ctx)).eval()
    state = model.state_dict()
    state["pos_emb.weight"] = torch.cat([table, table[-1:].expand(n_ctx - len(table), -1)])  # (n_ctx, C)
    longer.load_state_dict(state)
    save_model(longer, dst, tokenizer, meta={"derived_from": str(src),
                                                  "position_rows": f"0..{len(table) - 1} learned, "
                                                                   f"{len(table)}..{n_ctx - 1} = row {len(table) - 1}"})
    ids = torch.randint(3, model.config.vocab_size, (2, len(table)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(ids).logits - longer(ids).logits).abs().max().item()  # (2, L, V) each
    return dst, float(diff)


# ---- evaluation -------------------------------------------------------------------------------------


def score_contexts(ckpt: Path, eval_dir: Path, split: str, contexts: tuple[int, ...], batch_size: int) -> dict:
    """NLL per event at each context with evaluate_checkpoint; a refused context is recorded with its reason."""
    out = {}
    for context in contexts:
        t0 = time.perf_counter()
        try:
            r = evaluate_checkpoint(ckpt, [eval_dir], split=split, context=context, stride=context,
                                    batch_size=max(1, batch_size * CONTEXTS[0] // context), precision="fp32")
        except ConfigError as exc:
            out[str(context)] = {"status": "not evaluable", "reason": str(exc)}
            print(f"  context {context}: not evaluable ({exc})", flush=True)
            continue
        out[str(context)] = {"status": "ok", "nll": round(r.nll, 5), "perplexity": round(r.perplexity, 4),
                             "accuracy": round(r.accuracy, 4), "n_docs": r.n_docs, "n_tokens": r.n_tokens,
                             "per_type_nll": {k: round(v["nll"], 4) for k, v in r.per_type.items()},
                             "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  context {context}: NLL {r.nll:.4f} nats/event", flush=True)
    return out


@torch.no_grad()
def nll_by_position(ckpt: Path, eval_dir: Path, split: str, window: int, max_docs: int = 64) -> dict | None:
    """Mean NLL at each position of the first full `window`-token window of every long enough document."""
    model, tokenizer = load_checkpoint(ckpt)
    specials = Specials(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    docs = open_split(eval_dir, split)
    rows = []
    for d in range(docs.n_docs):
        if docs.lengths[d] < window or len(rows) >= max_docs:
            continue
        first = np.asarray(docs.doc(d)[:window], dtype=np.int64)
        ids = torch.from_numpy(np.concatenate([[specials.bos], first]))[None]  # (1, window + 1)
        logits = model(ids[:, :-1]).logits  # (1, window, V)
        rows.append(F.cross_entropy(logits[0].float(), ids[0, 1:], reduction="none").numpy())  # (window,)
    if not rows:
        return None
    nll = np.stack(rows).mean(0)  # (window,)
    edges = sorted({0, CONTEXTS[0], 2 * CONTEXTS[0], window})
    return {"docs": len(rows), "window": window, "bin": POSITION_BIN,
            "curve": [round(float(x), 4) for x in nll.reshape(-1, POSITION_BIN).mean(1)],
            "buckets": {f"{a}-{b - 1}": round(float(nll[a:b].mean()), 4) for a, b in zip(edges, edges[1:])}}


def relative_lower_everywhere(models: dict, contexts: tuple[int, ...]) -> bool:
    """Whether the relative model's NLL is below the absolute one's (clamped past its table) at every context."""
    def nll(name: str, c: int) -> float | None:
        v = models.get(name, {}).get("nll", {}).get(str(c), {})
        return v.get("nll") if v.get("status") == "ok" else None

    pairs = [(nll("relative", c), nll("absolute", c) or nll("absolute_clamped", c)) for c in contexts]
    return all(r is not None and a is not None and r < a for r, a in pairs)


def verdict(models: dict, contexts: tuple[int, ...]) -> dict:
    """Ratios of NLL at each context to NLL at the training context, and what they say about the claim."""
    base, longest = str(contexts[0]), str(contexts[-1])
    ratios, figures = {}, {}
    for name, m in models.items():
        nll = {c: v["nll"] for c, v in m["nll"].items() if v.get("status") == "ok"}
        ref = nll.get(base) if base in nll else models.get("absolute", {}).get("nll", {}).get(base, {}).get("nll")
        if ref:
            ratios[name] = {c: round(v / ref, 4) for c, v in nll.items()}
    rel = ratios.get("relative", {}).get(longest)
    clamp = ratios.get("absolute_clamped", {}).get(longest)
    figures["relative_stays_close"] = rel is not None and rel <= 1 + STRICT
    figures["absolute_degrades"] = clamp is not None and clamp > 1 + STRICT
    figures["claim_reproduced"] = figures["relative_stays_close"] and figures["absolute_degrades"]
    figures["relative_degrades_less"] = rel is not None and clamp is not None and rel < clamp
    figures["relative_lower_at_every_context"] = relative_lower_everywhere(models, contexts)
    parts = []
    if rel is not None:
        parts.append(f"relative: NLL at {longest} is {rel:.3f}x its NLL at {base}")
    if clamp is not None:
        parts.append(f"absolute (positions clamped past {base}): {clamp:.3f}x")
    parts.append("absolute as trained: not evaluable past its position table")
    if figures["claim_reproduced"]:
        outcome = " -> claim reproduced"
    elif figures["relative_stays_close"]:
        outcome = " -> no contrast at this size: relative stays close, but absolute does not degrade either"
    elif figures["relative_degrades_less"]:
        outcome = (" -> claim reproduced in part: relative degrades less than absolute"
                   + (" and is lower at every context" if figures["relative_lower_at_every_context"] else "")
                   + f", but does not stay within {STRICT:.0%} of its NLL at {base}")
    else:
        outcome = " -> claim NOT reproduced at this size"
    figures["summary"] = "; ".join(parts) + outcome
    return {"ratios_to_training_context": ratios, "stays_close_threshold": 1 + STRICT, **figures}


# ---- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("quick", "full"), default="quick")
    parser.add_argument("--data", help="prepared corpus or MIDI folder (default: data/asap, else tests/fixtures)")
    parser.add_argument("--steps", type=int, help="training steps of each model (default: the size's)")
    parser.add_argument("--threads", type=int, help="torch threads (default: the config's train.threads)")
    parser.add_argument("--work", type=Path, help="run directories (default: runs/lengthgen-full, or a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="skip training a model whose run already finished; resume one that was interrupted")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation windows per batch at context 512")
    parser.add_argument("--out", type=Path, help="default: bench/results/lengthgen.json (quick) or lengthgen-full.json")
    parser.add_argument("--note", help="a remark stored in the JSON and shown in the report "
                                       "(e.g. how a run was resumed)")
    args = parser.parse_args(argv)
    full = args.size == "full"
    out = args.out or ROOT / "bench" / "results" / ("lengthgen-full.json" if full else "lengthgen.json")
    overrides = () if full else QUICK
    if args.steps is not None:
        overrides += (f"train.steps={args.steps}", f"train.checkpoint_every={args.steps}")
    if args.threads is not None:
        overrides += (f"train.threads={args.threads}",)
    configs = load_pair(overrides)
    steps = configs["relative"].train.steps
    start = machine_info(torch_details=True)
    t_start = time.perf_counter()

    temp = None
    if args.work is None and not full:
        temp = tempfile.TemporaryDirectory(prefix="lengthgen-")
    work = Path(temp.name) if temp else (args.work or ROOT / "runs" / "lengthgen-full")
    work.mkdir(parents=True, exist_ok=True)
    try:
        data_dir, data_label = resolve_data(args.data, args.size, work)
        on_fixtures = data_label.startswith("tests/fixtures")
        split = eval_split(data_dir)
        if full:
            eval_dir, eval_docs = data_dir, open_split(data_dir, split)
            eval_info = {"data": data_label, "split": split, "docs": eval_docs.n_docs, "tokens": eval_docs.n_tokens,
                         "note": f"the whole {split} split"}
        else:
            splits = ["train", "valid", "test"] if on_fixtures else [split]
            eval_dir, sample = write_sample(data_dir, work / "eval", splits, *QUICK_EVAL)
            split = "test"
            eval_info = {"data": data_label, "split": "+".join(splits), **sample,
                         "note": ("the training files themselves (no held-out corpus without a prepared one): "
                                  "in-sample NLL" if on_fixtures else
                                  f"a sample: the first {QUICK_EVAL[0]} documents of the {splits[0]} split, "
                                  f"each cut to {QUICK_EVAL[1]} tokens")}
        print(f"data: {data_label}; evaluation: {eval_info['note']}", flush=True)

        models = {}
        for name, config in configs.items():
            models[name] = train_one(name, config, work / name, data_dir, args.reuse)
        trained_ctx = configs["absolute"].model.n_ctx
        if trained_ctx != CONTEXTS[0]:
            raise ConfigError(f"the configs train at context {trained_ctx}; "
                              f"this experiment is set up for {CONTEXTS[0]}")
        clamped, diff = clamped_copy(Path(models["absolute"]["checkpoint"]), work / "absolute-clamped", CONTEXTS[-1])
        models["absolute_clamped"] = {
            "checkpoint": str(clamped), "derived_from": "absolute",
            "how": (f"the absolute model's {trained_ctx}-row position table extended to {CONTEXTS[-1]} rows by "
                    f"repeating row {trained_ctx - 1}: every position past {trained_ctx - 1} reads the last learned "
                    "row; no weights are trained or changed"),
            "max_logit_diff_vs_absolute_within_trained_context": diff}

        for name in ("relative", "absolute", "absolute_clamped"):
            print(f"evaluating {name}", flush=True)
            contexts = CONTEXTS[1:] if name == "absolute_clamped" else CONTEXTS
            models[name]["nll"] = score_contexts(Path(models[name]["checkpoint"]), eval_dir, split, contexts,
                                                 args.batch_size)
        by_position = {name: nll_by_position(Path(models[name]["checkpoint"]), eval_dir, split, CONTEXTS[-1])
                       for name in ("relative", "absolute_clamped")}

        for m in models.values():  # paths inside the work directory, which a quick run deletes
            m["checkpoint"] = str(Path(m["checkpoint"]).relative_to(work))
        result = {
            "benchmark": "length_generalization", "size": args.size,
            "work": "a temporary directory (deleted)" if temp else str(work), "caveat": CAVEAT, "gpu": NO_GPU,
            "machine_start": start, "machine_end": machine_info(torch_details=True),
            "configs": {k: shown(v) for k, v in CONFIGS.items()}, "overrides": list(overrides),
            "same_budget": {"steps": steps, "batch_size": configs["relative"].train.batch_size,
                            "context": trained_ctx, "seed": configs["relative"].train.seed,
                            "differs_only_in": "model.position (checked)"},
            "training_data": data_label, "evaluation": eval_info, "contexts": list(CONTEXTS),
            "evaluation_method": ("musicgpt.training.evaluate.evaluate_checkpoint, fp32, windows of `context` tokens moved by "
                                  "`context` (stride = context): every event scored once, each seeing 0 .. context-1 "
                                  "events before it within its window"),
            "models": models, "nll_by_position": by_position, "verdict": verdict(models, CONTEXTS),
            "note": args.note,
            "wall_s": round(time.perf_counter() - t_start, 1),
        }
    finally:
        if temp is not None:
            temp.cleanup()
    atomic_write_text(out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(result["verdict"]["summary"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
