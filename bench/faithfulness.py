"""How faithful each arc measure is: does its ranking of past notes match what hiding them does to the model?

For query notes sampled from held-out pieces (the test split of --data, by piece: `musicgpt.corpus.recipes`;
one performance per piece), each note in its context (the piece's first --tokens tokens, BOS included; query
notes have their NOTE_ON at position >= --min-context):

- influence (the reference, `musicgpt.arcs.influence`): the query note's NLL rise when each past note in
  its context is hidden (masked from attention, positions unchanged), every past note scored;
- spearman: per measure (attention, norm, rollout; `musicgpt.arcs.measures`), the Spearman correlation of
  its scores of the past notes with their influence, per query then averaged; for each layer and head,
  each layer's head mean, the last layer's head mean (what the viewer draws by default: the last layer,
  every head) and the mean over all layers and heads. The query row is the NOTE_ON's (as the arcs are
  drawn); "before" scores the row that predicts the note's first token, for comparison;
- deletion: the NLL rise when the top-k past notes by a measure (viewer aggregate) are hidden together,
  against k random past notes and the k most recent (k = 1, 3, 10), and the top-k by influence itself
  (what one-at-a-time influence ranks highest, hidden together; a reference, not a bound).

Usage: python -m bench.faithfulness [--checkpoint CKPT] [--data FOLDER] [--notes N] [--out FILE.json]
Writes bench/results/faithfulness.json by default. `--on-demand T` instead times influence for one clicked note
with T tokens of context (16 or 32 candidates ranked by attention, and every past note) into the same file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.machine import CAVEAT, machine_info
from musicgpt._io import atomic_write_text
from musicgpt.arcs.forward import trace
from musicgpt.arcs.influence import base_nll, influence, masked_nll, piece_maps, query_context
from musicgpt.arcs.measures import CHEAP, note_influence, note_scores, token_scores
from musicgpt.corpus.recipes import held_out_pieces
from musicgpt.errors import MusicGPTError
from musicgpt.model import load_model
from musicgpt.music.scores import read_notes
from musicgpt.tokens.registry import tokenizer_of

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "corpora" / "asap"
KS = (1, 3, 10)
ROWS = ("note_on", "before")


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rho of two score vectors (average ranks for ties); None when either is constant."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]  # ties share their mean rank


def query_figures(model, ids: np.ndarray, maps, note: int, rng: np.random.Generator, batch: int) -> dict | None:
    """Influence of every past note of one query note, each measure's Spearman and the deletion figures."""
    ctx = query_context(ids, maps, note, model.config.n_ctx)
    n_past = len(ctx.past)
    if n_past < max(KS) + 2:
        return None
    on, before = len(ctx.ids) - 1, int(ctx.targets.min()) - 1
    tr = trace(model, ctx.ids, [on, before])
    infl = influence(model, ctx, tr, batch=batch)  # (P,)
    n_notes = len(maps.note_token)
    out = {"note": int(note), "context_tokens": int(len(ctx.ids)), "past_notes": int(n_past),
           "nll": base_nll(ctx, tr), "influence_max": float(infl.max()), "spearman": {}, "deletion": {}}
    viewer = {}
    for measure in CHEAP:
        scores = note_scores(token_scores(tr, [on, before], measure), ctx.owner, np.array([note, note]), n_notes)
        past = scores[..., ctx.past]  # (L, H, 2, P)
        fig = {}
        for r, row in enumerate(ROWS):
            grid = [[spearman(past[l, h, r], infl) for h in range(past.shape[1])] for l in range(past.shape[0])]
            fig[row] = {"heads": grid, "layers": [spearman(past[l, :, r].mean(0), infl) for l in range(past.shape[0])],
                        "viewer": spearman(past[-1, :, r].mean(0), infl), "all": spearman(past[:, :, r].mean((0, 1)), infl)}
        out["spearman"][measure] = fig
        viewer[measure] = past[-1, :, 0].mean(0)
        viewer[measure + "_all_layers"] = past[:, :, 0].mean((0, 1))
    viewer["influence"] = infl
    recency = np.array([int(t.max()) for t in ctx.tokens], np.float64)  # later tokens: more recent
    masks, labels = [], []
    for k in KS:
        for name, score in viewer.items():
            top = np.argsort(-score, kind="stable")[:k]
            masks.append(np.concatenate([ctx.tokens[i] for i in top]))
            labels.append((name, k))
        masks.append(np.concatenate([ctx.tokens[i] for i in rng.choice(n_past, k, replace=False)]))
        labels.append(("random", k))
        masks.append(np.concatenate([ctx.tokens[i] for i in np.argsort(-recency, kind="stable")[:k]]))
        labels.append(("recent", k))
    rise = masked_nll(model, ctx, tr, masks, batch=batch) - out["nll"]
    for (name, k), value in zip(labels, rise):
        out["deletion"].setdefault(name, {})[str(k)] = float(value)
    return out


def summarize(queries: list[dict]) -> dict:
    """Means (and standard errors) over the query notes of every figure."""

    def mean(values) -> dict:
        v = np.array([x for x in values if x is not None], np.float64)
        if not len(v):
            return {"mean": None, "se": None, "n": 0}
        se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
        return {"mean": round(float(v.mean()), 4), "se": None if se is None else round(se, 4), "n": int(len(v))}

    spear = {}
    for measure in CHEAP:
        spear[measure] = {}
        for row in ROWS:
            figs = [q["spearman"][measure][row] for q in queries]
            n_layer, n_head = len(figs[0]["heads"]), len(figs[0]["heads"][0])
            spear[measure][row] = {
                "viewer": mean(f["viewer"] for f in figs), "all": mean(f["all"] for f in figs),
                "layers": [mean(f["layers"][l] for f in figs)["mean"] for l in range(n_layer)],
                "heads": [[mean(f["heads"][l][h] for f in figs)["mean"] for h in range(n_head)] for l in range(n_layer)],
            }
    names = queries[0]["deletion"].keys()
    deletion = {name: {str(k): mean(q["deletion"][name][str(k)] for q in queries) for k in KS} for name in names}
    return {"spearman": spear, "deletion": deletion}


def on_demand(model, tokenizer, pieces: list[Path], context: int, candidates: list[int | None]) -> dict:
    """Seconds to compute one query note's influence arcs on demand (what a click asks for), for the first
    note of the first piece long enough with `context` tokens before its NOTE_ON, per candidate count."""
    for path in pieces:
        ids = np.r_[tokenizer.bos_id, tokenizer.encode(read_notes(path)).ids][: context + 8].astype(np.int64)
        maps = piece_maps(tokenizer, ids)
        later = np.flatnonzero(maps.note_token >= min(context, model.config.n_ctx) - 1)
        if len(later):
            note = int(later[0])
            break
    else:
        raise SystemExit(f"no piece has {context} tokens")
    ctx = query_context(ids, maps, note, model.config.n_ctx)
    rows = []
    for count in candidates:
        began = time.perf_counter()
        rises = note_influence(model, ids, maps, note, candidates=count)
        rows.append({"candidates": count if count is not None else len(ctx.past), "seconds": round(time.perf_counter() - began, 2),
                     "scored": len(rises)})
        print(f"on demand: {path.name} note {note}, {len(ctx.ids)} tokens of context, {len(ctx.past)} past notes, "
              f"{rows[-1]['scored']} scored in {rows[-1]['seconds']} s", flush=True)
    return {"piece": path.name, "note": note, "context_tokens": int(len(ctx.ids)), "past_notes": int(len(ctx.past)),
            "rank_by": "attention, all layers and heads", "runs": rows, "threads": torch.get_num_threads(), "machine": machine_info()}


def _pm(fig: dict) -> str:
    return "-" if fig["mean"] is None else f"{fig['mean']:+.3f} ± {fig['se'] or 0:.3f}"


def section(d: dict) -> tuple[list[str], str]:
    """The docs/benchmarks.md section of a results file: (Markdown lines, one-line headline)."""
    from bench.format import table

    sp, de = d["spearman"], d["deletion"]
    lines = [f"`python -m bench.faithfulness` ({d['checkpoint']} model): {d['notes']} query notes from "
             f"{len(d['pieces'])} held-out pieces ({d['split']} split of {Path(d['data']).name}, by piece), each "
             f"in the first {d['tokens']} tokens of its piece with its NOTE_ON at position >= {d['min_context']}. "
             "Influence hides one past note at a time (masked, positions unchanged) and every past note is "
             "scored; figures are means over the query notes ± their standard error.", ""]
    rows = []
    for m in CHEAP:
        heads = np.array(sp[m]["note_on"]["heads"], dtype=float)
        l, h = np.unravel_index(np.nanargmax(heads), heads.shape)
        layers = sp[m]["note_on"]["layers"]
        best = int(np.nanargmax(np.array(layers, dtype=float)))
        rows.append([m, _pm(sp[m]["note_on"]["viewer"]), _pm(sp[m]["note_on"]["all"]), f"L{best} {layers[best]:+.3f}",
                     f"L{l} H{h} {heads[l, h]:+.3f}", _pm(sp[m]["before"]["viewer"])])
    lines += ["Spearman correlation with influence of each measure's ranking of the past notes:", ""]
    lines += table(["measure", "viewer: last layer, head mean", "all layers and heads", "best layer (head mean)",
                    "best head", "viewer, row before the note"], rows)
    names = [*(n for n in de if n not in ("random", "recent", "influence")), "influence", "random", "recent"]
    ks = [str(k) for k in d["ks"]]
    lines += ["Deletion: the query note's NLL rise (nats) when the top k past notes are hidden together:", ""]
    lines += table(["hidden notes", *(f"k = {k}" for k in ks)], [[n, *(_pm(de[n][k]) for k in ks)] for n in names])
    if "on_demand" in d:
        o = d["on_demand"]
        runs = ", ".join(f"{r['scored']} scored: {r['seconds']} s" for r in o["runs"])
        lines += [f"Influence on demand for one note with {o['context_tokens']} tokens of context ({o['past_notes']} "
                  f"past notes; candidates ranked by {o['rank_by']}, {o['threads']} thread(s), load average "
                  f"{'/'.join(f'{x:.2f}' for x in o['machine']['load_average'] or [])}): {runs}.", ""]
    viewer = ", ".join(f"{m} {sp[m]['note_on']['viewer']['mean']:+.3f}" for m in CHEAP)
    three = {n: de[n]["3"]["mean"] for n in ("attention_all_layers", "random", "recent") if n in de}
    return lines, (f"Spearman with influence (last layer): {viewer}; hiding the top 3 by attention (all layers) "
                   + ", ".join(f"{n.replace('attention_all_layers', 'attention')} {v:.2f}" for n, v in three.items())
                   + " nats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a corpus folder (default: ASAP)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--notes", type=int, default=40, help="query notes in all (default 40)")
    parser.add_argument("--per-piece", type=int, default=2, help="query notes per piece (default 2)")
    parser.add_argument("--tokens", type=int, default=384, help="context: the first N tokens of each piece")
    parser.add_argument("--min-context", type=int, default=128, help="query NOTE_ONs at positions >= this")
    parser.add_argument("--batch", type=int, default=1, help="ablations per forward pass (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faithfulness.json")
    parser.add_argument("--on-demand", type=int, default=0, metavar="T",
                        help="only time influence on demand for one note with T tokens of context (16, 32 and every "
                             "past note scored) and add it to --out under 'on_demand' (the rest of the file is kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    tokenizer = tokenizer_of(model)
    rng = np.random.default_rng(args.seed)
    pieces = held_out_pieces(args.data, args.split)
    if args.on_demand:
        report = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": "faithfulness"}
        report["on_demand"] = on_demand(model, tokenizer, pieces, args.on_demand, [16, 32, None])
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n", make_parents=True)
        print(f"wrote {args.out} (on_demand)")
        return
    rng.shuffle(pieces)
    began, queries, used = time.perf_counter(), [], []
    start_machine = machine_info(torch_details=True)
    for path in pieces:
        if len(queries) >= args.notes:
            break
        try:
            ids = np.r_[tokenizer.bos_id, tokenizer.encode(read_notes(path)).ids][: args.tokens].astype(np.int64)
        except MusicGPTError as exc:
            print(f"skipped {path.name}: {exc}")
            continue
        maps = piece_maps(tokenizer, ids)
        eligible = np.flatnonzero(maps.note_token >= args.min_context)
        if not len(eligible):
            continue
        picked = rng.choice(eligible, min(args.per_piece, len(eligible), args.notes - len(queries)), replace=False)
        for note in sorted(picked.tolist()):
            fig = query_figures(model, ids, maps, note, rng, args.batch)
            if fig is not None:
                fig["piece"] = str(path.relative_to(args.data)) if path.is_relative_to(args.data) else path.name
                queries.append(fig)
                print(f"{len(queries)}/{args.notes} {path.name} note {note}: {fig['past_notes']} past notes, "
                      f"viewer rho attention {fig['spearman']['attention']['note_on']['viewer']}, "
                      f"{time.perf_counter() - began:.0f} s", flush=True)
        used.append(path.name)
    if not queries:
        raise SystemExit(f"{args.data}: no query note with {max(KS) + 2} or more past notes in {args.split}")
    report = {
        "benchmark": "faithfulness", "checkpoint": args.checkpoint or "bundled", "data": str(args.data),
        "split": args.split, "pieces": used, "notes": len(queries), "tokens": args.tokens,
        "min_context": args.min_context, "seed": args.seed, "ks": list(KS),
        "seconds": round(time.perf_counter() - began, 1), "machine_start": start_machine,
        "machine_end": machine_info(torch_details=True), "caveat": CAVEAT,
        **summarize(queries), "queries": queries,
    }
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n", make_parents=True)
    s = report["spearman"]
    for measure in CHEAP:
        print(f"{measure}: spearman with influence, viewer {s[measure]['note_on']['viewer']}, all "
              f"{s[measure]['note_on']['all']}; row before {s[measure]['before']['viewer']}")
    for name, by_k in report["deletion"].items():
        print(f"deletion {name}: " + ", ".join(f"k={k} {v['mean']}" for k, v in by_k.items()))
    print(f"wrote {args.out} ({len(queries)} notes, {report['seconds']} s)")


if __name__ == "__main__":
    main()
