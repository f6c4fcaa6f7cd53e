"""Music metrics: speed of `musicgpt metrics`, and reference figures that show the metrics discriminate.

- speed: reading N MIDI files (musicgpt.music.midi.read_midi) against reading them and computing every
  feature (musicgpt.metrics.piece_features), interleaved round by round in this process; the ratio
  is the cost of the features over the parse they start from. Also the set comparison alone, and
  `musicgpt metrics A B` end to end (one run, process start included).
- reference figures (mgeval overlap and KL against the same reference set, ASAP half B):
    real vs real         ASAP half A   vs ASAP half B   (two disjoint sets of performances)
    real vs other corpus POP909        vs ASAP half B   (pop arrangements vs classical performances)
  and POP909 half A vs POP909 half B for a second within-corpus figure. Metrics that discriminate
  give a high overlap / low KL within a corpus and a lower overlap / higher KL across corpora.

Files: evenly spaced over the sorted file lists of ../shared/corpora/asap and the main files of
../shared/corpora/pop909 (POP909/NNN/NNN.mid); without them, the ASAP and POP909 files of
tests/fixtures and examples/ (2 + 2 per corpus: tiny sets, said so in the JSON).
Writes bench/results/metrics.json.

    python -m bench.metrics [--files 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import CAVEAT, machine_info
from musicgpt._io import atomic_write_text
from musicgpt.metrics import compare_features, piece_features
from musicgpt.music.midi import read_midi

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "corpora"


def spread(files: list[Path], n: int) -> list[Path]:
    """n files evenly spaced over a sorted list (all of them when there are fewer)."""
    if len(files) <= n:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def pick_sets(n: int) -> tuple[dict[str, list[Path]], str]:
    """Two halves of ASAP and two of POP909, n files each, and where they came from."""
    asap_dir, pop_dir = SHARED / "asap", SHARED / "pop909" / "POP909"
    if asap_dir.is_dir() and pop_dir.is_dir():
        asap = spread(sorted(asap_dir.rglob("*.mid")), 2 * n)
        pop = spread(sorted(p for p in pop_dir.glob("*/*.mid") if p.stem == p.parent.name), 2 * n)
        source = f"{asap_dir} and {pop_dir} (evenly spaced over the sorted file lists)"
    else:
        local = sorted((ROOT / "tests" / "fixtures").glob("*.mid")) + sorted((ROOT / "examples").glob("*.mid"))
        asap = [p for p in local if not p.name.startswith("pop909")]
        pop = [p for p in local if p.name.startswith("pop909")]
        source = "tests/fixtures and examples/ (no ../shared corpora: 2 files per set, a smoke run, not a reference)"
    sets = {"asap_a": asap[0::2], "asap_b": asap[1::2], "pop909_a": pop[0::2], "pop909_b": pop[1::2]}
    return sets, source


def time_speed(files: list[Path], rounds: int) -> dict:
    """Interleaved rounds of read-only and read+features over the same files."""
    read_s, feat_s = [], []
    piece_features(read_midi(files[0]))  # warm-up: imports, music21's key profiles
    for r in range(rounds):
        t = time.perf_counter()
        notes = [read_midi(f) for f in files]
        read_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for f in files:
            piece_features(read_midi(f))
        feat_s.append(time.perf_counter() - t)
        print(f"round {r}: read {len(files) / read_s[-1]:.1f} files/s, read + features "
              f"{len(files) / feat_s[-1]:.1f} files/s", flush=True)
    n_notes = sum(len(n.pitch) for n in notes)
    ratios = [f / r for f, r in zip(feat_s, read_s)]
    return {"files": len(files), "notes": n_notes, "rounds": rounds,
            "read_s": [round(x, 4) for x in read_s], "read_and_features_s": [round(x, 4) for x in feat_s],
            "files_per_s": round(len(files) / statistics.median(feat_s), 2),
            "notes_per_s": round(n_notes / statistics.median(feat_s)),
            "features_over_read": round(statistics.median(ratios), 2),
            "note": "ratio = (read + features) / read, median of per-round ratios"}


def comparison_figures(candidate: list[dict], reference: list[dict]) -> dict:
    """Per feature: overlap and KL of the candidate set against the reference (mgeval), and their means."""
    comparison = compare_features(candidate, reference)
    per = {name: {"overlap": round(float(c["overlap"]), 4), "kl": round(float(c["kl"]), 4)}
           for name, c in comparison.items()}
    return {"features": per, "mean_overlap": round(float(np.mean([v["overlap"] for v in per.values()])), 4),
            "mean_kl": round(float(np.mean([v["kl"] for v in per.values()])), 4)}


def cli_run(a: list[Path], b: list[Path]) -> dict:
    """`musicgpt metrics A B --out DIR` once, end to end, on folders of links to the chosen files."""
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        dirs = []
        for name, files in (("a", a), ("b", b)):
            d = Path(tmp) / name
            d.mkdir()
            for i, f in enumerate(files):
                (d / f"{i:04d}_{f.name}").symlink_to(f.resolve())
            dirs.append(d)
        cmd = [sys.executable, "-m", "musicgpt", "metrics", str(dirs[0]), str(dirs[1]), "--quiet",
               "--out", str(Path(tmp) / "out")]
        t = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - t
        written = sorted(p.name for p in (Path(tmp) / "out").glob("*")) if done.returncode == 0 else []
    return {"command": "musicgpt metrics A B --quiet --out DIR", "files": len(a) + len(b),
            "seconds": round(seconds, 2), "exit_code": done.returncode, "wrote": written,
            "stderr_tail": done.stderr[-500:] if done.returncode else "",
            "note": "one run; includes process start and imports"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=40, help="files per set (4 sets: ASAP A/B, POP909 A/B)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--no-cli", action="store_true", help="skip the end-to-end `musicgpt metrics` run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "metrics.json")
    args = parser.parse_args(argv)
    start, t0 = machine_info(), time.perf_counter()
    sets, source = pick_sets(args.files)
    print(f"files: {source}; " + ", ".join(f"{k} {len(v)}" for k, v in sets.items()), flush=True)

    speed = time_speed(sets["asap_a"] + sets["pop909_a"], args.rounds)
    features = {k: [piece_features(read_midi(f)) for f in v] for k, v in sets.items()}
    t = time.perf_counter()
    within = comparison_figures(features["asap_a"], features["asap_b"])
    speed["compare_sets_s"] = round(time.perf_counter() - t, 3)
    speed["compare_sets_pieces"] = [len(features["asap_a"]), len(features["asap_b"])]
    across = comparison_figures(features["pop909_a"], features["asap_b"])
    pop_within = comparison_figures(features["pop909_a"], features["pop909_b"])
    names = list(within["features"])
    separated = [n for n in names if across["features"][n]["overlap"] < within["features"][n]["overlap"]]
    result = {
        "benchmark": "metrics", "caveat": CAVEAT, "machine_start": start,
        "files": source, "files_per_set": {k: len(v) for k, v in sets.items()},
        "speed": speed,
        "reference": {
            "reference_set": "asap_b",
            "asap_a_vs_asap_b": within, "pop909_a_vs_asap_b": across, "pop909_a_vs_pop909_b": pop_within,
            "features_where_cross_corpus_overlap_is_lower": separated,
            "discriminating_features": f"{len(separated)} of {len(names)}",
            "mean_overlap_ratio_cross_over_within": round(across["mean_overlap"] / within["mean_overlap"], 3),
            "note": "overlap 1 / KL 0: the candidate set lies as close to the reference set as the reference "
                    "lies to itself",
        },
    }
    if not args.no_cli:
        result["cli"] = cli_run(sets["asap_a"], sets["asap_b"])
    result["machine_end"] = machine_info()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(f"mean overlap: ASAP vs ASAP {within['mean_overlap']:.3f}, POP909 vs ASAP {across['mean_overlap']:.3f}, "
          f"POP909 vs POP909 {pop_within['mean_overlap']:.3f}; cross-corpus overlap lower on "
          f"{len(separated)} of {len(names)} features")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
