"""Continuations against what the piece really does next: held-out primers, N s generated, the real next N s.

Primers: held-out performances (the test split by piece of ASAP and of POP909, `musicgpt.corpus.recipes`; one
performance per piece is primed, the piece's others serve as references), --primer-seconds of music (20 s) taken
at several points of each piece (its start and evenly spaced places after it: at least two per piece, more when
there are fewer pieces than primers), half the primers from each corpus. A primer too long for the context loses
whole seconds at its start until it fits (its length is recorded). Each primer is continued for --seconds (20 s)
with --seeds samples (seeds SEED + primer, one batch) through the one generation set-up
(`musicgpt.generation.setup`: GenerationRequest -> prepare -> loop.run), at the set-up's defaults unless an option
below is given. The continuation is the generated notes with onsets in the N s after the primer's last event.

Every continuation is measured against the real next N s of the same performance and its spread
(`musicgpt.metrics.continuation`: the real continuation and its neighbours, the windows of the same performance
just after it and just before the primer, and the window at the same place, by share of length, of up to two
other performances of the piece). The same measures in the same run for references: another performance of the
same piece at the same place (the ceiling; ASAP pieces with two or more test performances), another piece's
real continuation from the same corpus (the floor) and the primer looped (a trivial "stay in the piece"
baseline). Also: degenerate windows (against all real continuations), copies of the training data (ASAP's train
split; the primer excluded: `CopyIndex.longest_run(..., exclude=primer)`).

Usage: python -m bench.continuation [--checkpoint CKPT] [--primers 40] [--seconds 20] [--seeds 2] [--out FILE]
Writes bench/results/continuation.json by default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.machine import CAVEAT, machine_info
from musicgpt._io import atomic_write_text
from musicgpt.corpus.recipes import collect
from musicgpt.generation.loop import run
from musicgpt.generation.setup import GenerationRequest, load_model_and_tokenizer, prepare
from musicgpt.metrics.continuation import (MEASURES, PROFILES, Spread, degenerate, looped, measures, summary_share,
                                           window)
from musicgpt.metrics.copies import COPY_THRESHOLD, CopyIndex
from musicgpt.music.midi import read_midi
from musicgpt.music.notes import Notes

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
SETS = ("generated", "ceiling", "floor", "looped")
NEIGHBOURS_EACH_WAY = 2
OTHER_PERFORMANCES = 2  # besides the ceiling's, as neighbours
HEADER_ROOM = 4  # tokens kept free in the context for a CONTROL header


@dataclass
class Primer:
    """One primer: where it sits in which performance, and the real music around it."""

    corpus: str
    piece: str
    file: str
    composer: str | None
    t0: float
    primer: Notes = field(repr=False)
    real: Notes = field(repr=False)
    neighbours: list = field(repr=False)
    ceiling: Notes | None = field(default=None, repr=False)


def held_out(folder: Path, split: str) -> list[tuple[str, list, str | None]]:
    """(piece, its performances' Sources sorted by path, composer) of the split, pieces sorted."""
    _, sources = collect(folder)
    pieces: dict[str, list] = {}
    for s in sorted((s for s in sources if s.split == split), key=lambda s: s.rel):
        pieces.setdefault(s.group, []).append(s)
    return [(g, pieces[g], pieces[g][0].composer) for g in sorted(pieces)]


def fits(tokenizer, notes: Notes, n_ctx: int) -> bool:
    """Whether [BOS] + the notes' tokens leave HEADER_ROOM in the context."""
    return len(tokenizer.encode(notes).ids) <= n_ctx - 1 - HEADER_ROOM


def primers_of(corpus: str, folder: Path, n: int, args, tokenizer, n_ctx: int) -> list[Primer]:
    """`n` primers of one corpus's held-out pieces at several points of each (module docstring)."""
    pieces = held_out(folder, args.split)
    p, N = args.primer_seconds, args.seconds
    points = max(2, math.ceil(n / max(len(pieces), 1)))
    chosen = [pieces[int(round(i))] for i in np.linspace(0, len(pieces) - 1, min(len(pieces), math.ceil(n / points)))]
    out = []
    for piece, performances, composer in chosen:
        notes = read_midi(performances[0].path)
        length = notes.end_time
        others = [read_midi(s.path) for s in performances[1 : 2 + OTHER_PERFORMANCES]]
        for frac in np.arange(points) / points:
            if len(out) >= n:
                break
            t0 = float(np.floor(frac * max(length - p - 3 * N, 0.0)))  # room for the windows after the real one
            tc = t0 + p
            if tc + N > length:
                continue
            while not fits(tokenizer, window(notes, t0, tc), n_ctx) and t0 < tc - 1:
                t0 += 1.0
            near = [window(notes, tc + k * N, tc + (k + 1) * N) for k in range(1, NEIGHBOURS_EACH_WAY + 1)
                    if tc + (k + 1) * N <= length]
            near += [window(notes, t0 - k * N, t0 - (k - 1) * N) for k in range(1, NEIGHBOURS_EACH_WAY + 1)
                     if t0 - k * N >= 0]
            at = [(o, tc * o.end_time / length) for o in others]  # the same place, by share of the performance
            aligned = [window(o, t, t + N) for o, t in at if t + N <= o.end_time]
            if len(near) + len(aligned[1:]) < 2:
                continue
            out.append(Primer(corpus, piece, performances[0].rel, composer, t0, window(notes, t0, tc),
                              window(notes, tc, tc + N), near + aligned[1:], aligned[0] if aligned else None))
    return out[:n]


def clock(tokenizer, ids: np.ndarray) -> float:
    """Seconds of TIME_SHIFT in `ids`: where the primer ends and the new music begins."""
    ids = np.asarray(ids, np.int64)
    shift = tokenizer.token_type(ids) == tokenizer.type_code("TIME_SHIFT")
    return float(tokenizer.token_value(ids[shift]).sum() * tokenizer.time_step)


def request_options(args) -> dict:
    """Only what the command line gives: every other setting is the set-up's default (never copied here)."""
    given = {name: getattr(args, name) for name in ("temperature", "top_k", "top_p", "min_p", "max_note_seconds")
             if getattr(args, name) is not None}
    if args.controls:
        given["controls"] = args.controls
    if args.follow_primer is not None:
        given["follow_primer"] = args.follow_primer
    return given


def continue_primer(model, tokenizer, primer: Primer, i: int, args) -> tuple[list[Notes], list[dict], dict]:
    """The generated windows of one primer, one row per sample, and the settings the plan resolved."""
    request = GenerationRequest(primer=primer.primer, seconds=args.seconds, seed=args.seed + i,
                                num_samples=args.seeds, **request_options(args))
    plan = prepare(model, tokenizer, request)
    samples = run(model, tokenizer, plan, threads=args.threads)
    windows, rows = [], []
    for s in samples:
        c0 = clock(tokenizer, s.ids[: s.primer_length])
        windows.append(window(s.notes[~s.primer_notes], c0, c0 + args.seconds))
        rows.append({"seed": int(s.seed), "stop_reason": s.stop_reason, "new_tokens": int(s.n_generated),
                     "notes": len(windows[-1]), "sample": s})
    header = plan.prompt[: len(plan.prompt) - len(plan.unconditional)]
    resolved = {"sampling": {k: getattr(plan.settings.sampling, k) for k in
                             ("temperature", "top_k", "top_p", "min_p", "keep_type_mass")},
                "max_note_seconds": plan.settings.max_note_seconds,
                "controls": [tokenizer.token_name(int(t)) for t in header]}
    return windows, rows, resolved


def scalars(m: dict) -> dict:
    """A measures dict without its profiles (for the JSON)."""
    return {k: (None if v is None else round(float(v), 4)) for k, v in m.items() if k not in PROFILES}


def training_index(folder: Path) -> tuple[CopyIndex, int]:
    """The copy index of the corpus's train split (what the bundled model learnt from), and its file count."""
    _, sources = collect(folder)
    train = [s for s in sources if s.split == "train"]
    pieces, names = [], []
    for s in train:
        try:
            pieces.append(read_midi(s.path))
            names.append(s.rel)
        except Exception as exc:  # an unreadable file is left out of the index, and said
            print(f"copy index: skipped {s.rel}: {exc}", file=sys.stderr)
    return CopyIndex(pieces, names), len(pieces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--asap", type=Path, default=CORPORA / "asap")
    parser.add_argument("--pop909", type=Path, default=CORPORA / "pop909")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--primers", type=int, default=40, help="primers in all, half from each corpus (default 40)")
    parser.add_argument("--primer-seconds", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds generated and compared (default 20)")
    parser.add_argument("--seeds", type=int, default=2, help="samples per primer (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=None, help="default: the set-up's")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--max-note-seconds", type=float, default=None)
    parser.add_argument("--controls", nargs="*", default=None, metavar="NAME=VALUE")
    parser.add_argument("--follow-primer", action=argparse.BooleanOptionalAction, default=None,
                        help="controls read from the primer on or off (default: the set-up's follow_primer)")
    parser.add_argument("--copies", type=Path, default=CORPORA / "asap",
                        help="corpus whose train split the copy check indexes (default ASAP)")
    parser.add_argument("--no-copies", action="store_true", help="skip the copy check")
    parser.add_argument("--label", default="", help="a name for this run's settings in the JSON")
    parser.add_argument("--levers", type=Path, nargs="*", default=[], metavar="JSON",
                        help="earlier runs (other settings) whose summaries go into this run's JSON as 'levers'")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "continuation.json")
    args = parser.parse_args(argv)
    began, machine_start = time.perf_counter(), machine_info(torch_details=True)
    model, tokenizer = load_model_and_tokenizer(args.checkpoint)
    n_ctx = model.config.n_ctx
    corpora = [(name, folder) for name, folder in (("asap", args.asap), ("pop909", args.pop909)) if folder.is_dir()]
    if not corpora:
        raise SystemExit("no corpus: give --asap and/or --pop909 folders")
    primers = []
    for k, (name, folder) in enumerate(corpora):
        share = args.primers // len(corpora) + (k < args.primers % len(corpora))
        primers += primers_of(name, folder, share, args, tokenizer, n_ctx)
    print(f"{len(primers)} primers from {len(corpora)} corpora", file=sys.stderr)
    index = None
    if not args.no_copies:
        index, indexed = training_index(args.copies)
        print(f"copy index: {indexed} performances, {index.n_notes} notes", file=sys.stderr)
    windows: dict[str, list[Notes]] = {s: [] for s in SETS}
    flags: dict[str, list[dict]] = {s: [] for s in SETS}
    copies: dict[str, list[int]] = {s: [] for s in SETS}
    rows, resolved, t_gen = [], None, 0.0
    for i, p in enumerate(primers):
        spread = Spread.of(p.real, p.neighbours, p.primer, args.seconds)
        t = time.perf_counter()
        generated, samples, resolved = continue_primer(model, tokenizer, p, i, args)
        t_gen += time.perf_counter() - t
        floor = next((q.real for q in primers[i + 1 :] + primers[:i] if q.corpus == p.corpus and q.piece != p.piece),
                     None)
        refs = {"ceiling": p.ceiling, "floor": floor, "looped": looped(p.primer, args.primer_seconds, args.seconds)}
        row = {"corpus": p.corpus, "piece": p.piece, "file": p.file, "t0": p.t0,
               "primer_seconds": round(args.primer_seconds, 2), "neighbours": spread.neighbours,
               "real": scalars(spread.real), "bands": {k: v and [round(x, 4) for x in v] for k, v in spread.bands.items()},
               "controls": resolved["controls"], "samples": []}
        for w, s in zip(generated, samples):
            m = measures(w, p.primer, args.seconds)
            within = spread.within(m)
            flags["generated"].append(within)
            windows["generated"].append(w)
            sample = s.pop("sample")
            if index is not None:
                run_ = index.longest_run(sample.notes, exclude=sample.notes[sample.primer_notes]).length
                copies["generated"].append(run_)
                s["longest_copied_run"] = run_
            s.update(within=within, measures=scalars(m),
                     distances={k: spread.distance(k, m[k]) for k in MEASURES})
            row["samples"].append(s)
        for name, w in refs.items():
            if w is None:
                continue
            m = measures(w, p.primer, args.seconds)
            within = spread.within(m)
            flags[name].append(within)
            windows[name].append(w)
            if index is not None and name != "looped":
                copies[name].append(index.longest_run(w).length)
            row[name] = {"within": within, "measures": scalars(m),
                         "distances": {k: spread.distance(k, m[k]) for k in MEASURES}}
        rows.append(row)
        got = np.mean([np.mean(list(f.values())) for f in flags["generated"][-len(generated):]])
        print(f"{i + 1}/{len(primers)} {p.piece} @{p.t0:.0f}s: notes {[s['notes'] for s in samples]} "
              f"(real {len(p.real)}), within {got:.2f}, {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    real = [p.real for p in primers]
    sets = {}
    for name in SETS:
        share = summary_share(flags[name])
        bad = degenerate(windows[name], real) if windows[name] else []
        share["degenerate"] = int(sum(bad))
        share["windows"] = len(windows[name])
        if index is not None and name != "looped":
            share["copies"] = {"longest_run_max": max(copies[name], default=0),
                               "flagged": int(sum(r > COPY_THRESHOLD for r in copies[name])),
                               "threshold": COPY_THRESHOLD}
        sets[name] = share
    by_corpus = {c: {name: summary_share([f for f, r in zip(flags[name], _owners(rows, name)) if r == c])["summary"]
                     for name in SETS} for c in dict.fromkeys(p.corpus for p in primers)}
    report = {
        "benchmark": "continuation", "checkpoint": args.checkpoint or "bundled", "label": args.label,
        "corpora": {name: os.path.relpath(folder.resolve(), ROOT) for name, folder in corpora}, "split": args.split,
        "primers": len(primers), "primer_seconds": args.primer_seconds, "seconds": args.seconds,
        "seeds": args.seeds, "seed": args.seed, "threads": args.threads, "options": request_options(args),
        "resolved": {k: v for k, v in (resolved or {}).items() if k != "controls"}, "measures": list(MEASURES), "sets": sets, "by_corpus": by_corpus,
        "issue_figures": issue_figures(rows), "levers": [lever(path) for path in args.levers],
        "generation_seconds": round(t_gen, 1),
        "seconds_total": round(time.perf_counter() - began, 1), "machine_start": machine_start,
        "machine_end": machine_info(torch_details=True), "caveat": CAVEAT, "rows": rows,
    }
    atomic_write_text(args.out, json.dumps(report, indent=1, default=_plain) + "\n", make_parents=True)
    g = sets["generated"]
    print(f"summary share: generated {g['summary']:.3f}, " + ", ".join(
        f"{n} {sets[n]['summary']:.3f}" for n in SETS[1:] if sets[n]["summary"] is not None)
        + f"; degenerate {g['degenerate']} of {g['windows']}; wrote {args.out}")
    return 0


def lever(path: Path) -> dict:
    """The summary of an earlier run of this benchmark (another setting), for the 'levers' table."""
    d = json.loads(path.read_text(encoding="utf-8"))
    g = d["sets"]["generated"]
    return {"file": path.name, "label": d.get("label", ""), "options": d.get("options", {}), "primers": d["primers"],
            "seeds": d["seeds"], "seconds": d["seconds"], "summary": g["summary"], "per_measure": g["per_measure"],
            "degenerate": g["degenerate"], "windows": g["windows"],
            "by_corpus": {c: v["generated"] for c, v in d.get("by_corpus", {}).items()},
            "references": {n: d["sets"][n]["summary"] for n in SETS[1:] if n in d["sets"]}}


def _owners(rows: list[dict], name: str) -> list[str]:
    """The corpus of each window of set `name`, in the order the windows were measured."""
    if name == "generated":
        return [r["corpus"] for r in rows for _ in r["samples"]]
    return [r["corpus"] for r in rows if name in r]


def issue_figures(rows: list[dict]) -> dict:
    """The issue's first figures: density within 0.67-1.5x of the real next N s, pitch-class profile closer to
    the real continuation than the floor's is, and both (shares of generated windows)."""
    density, closer, both, ratios = [], [], [], []
    for r in rows:
        floor = r.get("floor", {}).get("distances", {}).get("pitch_class_profile")
        for s in r["samples"]:
            real, gen = r["real"]["density"], s["measures"]["density"]
            ratio = gen / real if real else None
            ratios.append(ratio)
            d_ok = ratio is not None and 2 / 3 <= ratio <= 1.5
            dist = s["distances"]["pitch_class_profile"]
            c_ok = dist is not None and floor is not None and dist < floor
            density.append(d_ok), closer.append(c_ok), both.append(d_ok and c_ok)
    ok = [x for x in ratios if x is not None]
    return {"density_within_0.67_1.5": float(np.mean(density)) if density else None,
            "pitch_classes_closer_than_floor": float(np.mean(closer)) if closer else None,
            "both": float(np.mean(both)) if both else None,
            "density_ratio_median": float(np.median(ok)) if ok else None,
            "density_ratio_max": float(np.max(ok)) if ok else None}


def _plain(x):
    """JSON for numpy scalars and arrays."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON: {type(x).__name__}")


if __name__ == "__main__":
    sys.exit(main())
