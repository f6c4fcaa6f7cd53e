"""Everything the bundled model's card reports, measured with the project's own functions, in one command.

    python -m bench.bundled_model --install runs/medium --run runs/medium \\
        --abs-run runs/medium-abs --data data/asap --pop909 data/pop909 --threads 2

    # the twin later, keeping the rest of the results of the same weights:
    python -m bench.bundled_model --run runs/medium --abs-run runs/medium-abs --data data/asap \\
        --pop909 data/pop909 --threads 2 --update --skip eval,fp32,pieces,samples

writes bench/results/bundled_model.json and renders musicgpt/pretrained/MODEL_CARD.md from it
(bench/model_card.py). What it measures, on the weights installed in --checkpoint (default: the
bundled model, musicgpt/pretrained/; `--install CKPT` first installs a checkpoint there with
tools/install_pretrained.py), in bench/bundled_provenance.py, bundled_evaluation.py and bundled_samples.py:

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
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bundled_evaluation import evaluate, evaluate_all, make_subset_dir, per_piece
from bench.bundled_provenance import checkpoint_info, data_info, run_info
from bench.bundled_samples import samples
from bench.machine import machine_info
from bench.model_card import write_card
from musicgpt import checkpoint
from musicgpt._io import atomic_write_text
from musicgpt.generation import DEFAULT_MAX_NOTE_SECONDS
from tools.install_pretrained import install

ROOT = Path(__file__).resolve().parents[1]
CAVEAT = ("evaluation and samples on this machine's CPU; its timings are wall-clock seconds on a shared machine whose "
          "speed drifts 2-4x within minutes, for orientation, not comparison. Where and how the model was trained: "
          "the run's hardware record (run.json).")
RESULTS = ROOT / "bench" / "results" / "bundled_model.json"


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
    command = "python -m bench.bundled_model " + shlex.join(argv if argv is not None else sys.argv[1:])
    result: dict[str, Any] = previous_results(args.out, info) if args.update else {}
    result.update({
        "label": args.label, "subset": f"at most {args.max_docs} documents per split" if args.max_docs else None,
        "caveat": CAVEAT, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(torch_details=True),
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

    atomic_write_text(args.out, json.dumps(result, indent=1, default=_json_default) + "\n", make_parents=True)
    print(f"wrote {args.out}")
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
