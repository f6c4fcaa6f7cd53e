"""The bundled model's samples: continuations of ASAP test primers (fixed seeds, default sampling) and their
degeneracy measures (`musicgpt.metrics`) next to real excerpts of the same length from the same split.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import musicgpt
from bench.bundled_evaluation import pieces_of
from musicgpt import load_checkpoint
from musicgpt.corpus.shards import open_split
from musicgpt.metrics import EmptyPieceError, compare_features, piece_features
from musicgpt.music.notes import Notes

# Loops, stalls, stutters and hanging notes (a NOTE_ON never released sounds to the end of the sample).
DEGENERACY = ("repeated_4gram_share", "longest_silence", "notes_per_second", "longest_pitch_run", "polyphony")


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
