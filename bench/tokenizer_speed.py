"""Tokenizer speed: ours vs miditok MIDILike, end to end (MIDI path -> token ids), on the same real files.

- ours: `PerformanceTokenizer().encode(path)` (symusic parse, tempo map, pedal, same-pitch rule,
  vectorized encoding)
- miditok: `miditok.MIDILike()(path)` with its default config, the way its users call it
- miditok via musicgpt: `MiditokTokenizer("MIDILike").encode(path)` (our reading + re-timing, then
  miditok), for reference

The rate is notes in the files (as symusic pairs them, non-drum) per second of wall time, the same
count for every contender. The machine is shared and its speed drifts within minutes, so the
contenders run interleaved, round by round, in one process, and the speedup is the median of the
per-round ratios. Also measured: decode speed, and the training augmentation (transpose + stretch
via make_augmenter) on 1024-token crops, single-threaded.

Files: every `--every`-th file of ../shared/corpora/asap and ../shared/corpora/pop909 (default
every 10th), or tests/fixtures when the shared corpora are absent. Writes bench/results/tokenize.json.

    python -m bench.tokenizer_speed [--every N] [--rounds N] [--crops N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from musicgpt._io import atomic_write_text
from musicgpt.tokens.augment import make_augmenter
from musicgpt.tokens.miditok import MiditokTokenizer
from musicgpt.tokens.performance import PerformanceTokenizer

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared" / "corpora"


def pick_files(every: int) -> tuple[list[Path], str]:
    corpora = [SHARED / "asap", SHARED / "pop909"]
    if all(c.is_dir() for c in corpora):
        files = []
        for corpus in corpora:
            files += sorted(corpus.rglob("*.mid"))[::every]
        return files, f"every {every}th file of {', '.join(str(c) for c in corpora)}"
    return sorted((ROOT / "tests" / "fixtures").glob("*.mid")), "tests/fixtures (shared corpora absent)"


def timed(fn, files) -> float:
    began = time.perf_counter()
    for path in files:
        fn(path)
    return time.perf_counter() - began


def main() -> None:
    import miditok
    from symusic import Score

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=10, help="take every N-th file of each corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--crops", type=int, default=5000, help="1024-token crops for the augmentation rate")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tokenize.json")
    args = parser.parse_args()

    files, which = pick_files(args.every)
    notes = sum(t.note_num() for f in files for t in Score(str(f)).tracks if not t.is_drum)
    ours = PerformanceTokenizer()
    theirs = miditok.MIDILike()
    bridged = MiditokTokenizer("MIDILike")
    contenders = {"ours": lambda p: ours.encode(p).ids, "miditok_midilike": lambda p: theirs(p),
                  "miditok_midilike_via_musicgpt": lambda p: bridged.encode(p).ids}
    for fn in contenders.values():  # warm caches and lazy imports
        timed(fn, files[:3])

    rounds = []
    for r in range(args.rounds):
        seconds = {name: timed(fn, files) for name, fn in contenders.items()}
        rounds.append(seconds)
        print(f"round {r + 1}: " + ", ".join(f"{k} {notes / v:,.0f} notes/s" for k, v in seconds.items()))
    ratios = [s["miditok_midilike"] / s["ours"] for s in rounds]

    encoded = [ours.encode(f).ids for f in files]
    decode_s = timed(ours.decode, encoded)

    tokens = np.concatenate(encoded).astype(np.uint16)
    augment = make_augmenter(ours)
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(tokens) - 1100, args.crops)
    crops = [np.asarray(tokens[s:s + 1100], np.int64) for s in starts]
    began = time.perf_counter()
    for crop in crops:
        augment(crop, rng)
    augment_s = time.perf_counter() - began

    report = {
        "benchmark": "tokenize",
        "note": "notes/s = notes in the files / wall seconds; contenders interleaved per round in one process "
                "on a shared machine whose speed drifts: compare ratios within a round, not absolute rates "
                "across runs",
        "machine": machine_info(),
        "files": len(files), "file_selection": which, "notes": notes,
        "rounds": [{k: {"seconds": round(v, 4), "notes_per_s": round(notes / v)} for k, v in s.items()}
                   for s in rounds],
        "speedup_vs_miditok_midilike": {"median": round(statistics.median(ratios), 2),
                                        "min": round(min(ratios), 2), "max": round(max(ratios), 2)},
        "target_speedup": 20,
        "decode_notes_per_s": round(notes / decode_s),
        "augment": {"crop_tokens": 1100, "crops": args.crops, "crops_per_s": round(args.crops / augment_s),
                    "tokens_per_s": round(args.crops * 1100 / augment_s), "threads": 1},
    }
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n", make_parents=True)
    print(f"{len(files)} files, {notes:,} notes: ours is {report['speedup_vs_miditok_midilike']['median']}x "
          f"miditok MIDILike (median of {args.rounds} rounds; min {min(ratios):.1f}x, max {max(ratios):.1f}x)")
    print(f"decode {report['decode_notes_per_s']:,} notes/s; augmentation {report['augment']['crops_per_s']:,} "
          f"crops of 1100 tokens/s on one thread")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
