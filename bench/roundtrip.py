"""Round trip of every file of the shared corpora: MIDI -> Notes -> tokens -> Notes -> MIDI -> tokens.

For each corpus (default: ../shared/corpora/asap and ../shared/corpora/pop909), every MIDI file is
read with musicgpt.music.midi.read_midi (pedal folded), encoded, decoded, and compared with the notes
it came from:

- notes kept: decoded notes / notes read (the only losses are same-pitch onsets that fall into one
  10 ms step, which the tokenizer merges; counted separately as `merged`)
- onset / offset error: |decoded - source| in ms (max, 99th percentile, mean); offsets also for
  notes lasting at least half a step (shorter ones are lengthened to one step)
- velocity within its bin: share of decoded notes whose velocity lies in the bin of the source
  note's velocity (merged notes take the loudest of their group and are reported apart)
- exact: decode(encode(x).ids) == encode(x).notes, and writing the decoded notes to MIDI, reading
  them back and re-encoding gives the same ids (10 ms steps survive a file round trip)

Also counts raw notes as symusic pairs them (before the same-pitch rule) and times the stages.
Writes bench/results/roundtrip.json. Usage: python -m bench.roundtrip [CORPUS_DIR ...] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import machine_info
from musicgpt._io import atomic_write_text
from musicgpt.errors import MusicGPTError
from musicgpt.music.midi import midi_files, read_midi, write_midi
from musicgpt.tokens.performance import PerformanceTokenizer

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_CORPORA = [ROOT.parent / "shared" / "corpora" / "asap", ROOT.parent / "shared" / "corpora" / "pop909"]


def raw_note_count(path: Path) -> int:
    """Notes as symusic pairs them, non-drum tracks, before pedal and the same-pitch rule."""
    from symusic import Score

    return sum(t.note_num() for t in Score(str(path)).tracks if not t.is_drum)


def file_round_trip(path: Path, tok: PerformanceTokenizer, scratch: Path) -> dict:
    notes = read_midi(path)
    enc = tok.encode(notes)
    decoded, index = tok.decode_with_index(enc.ids)
    exact_decode = all(np.array_equal(getattr(decoded, k), getattr(enc.notes, k))
                       for k in ("start", "end", "pitch", "velocity")) and np.array_equal(index, enc.note_index)
    write_midi(decoded, scratch)
    exact_file = np.array_equal(tok.encode(scratch, sustain=False).ids, enc.ids)

    src = notes[enc.source_index]
    lost = np.setdiff1d(np.arange(len(notes)), enc.source_index)
    step = tok.time_step
    lost_keys = {(int(notes.pitch[i]), int(np.rint(notes.start[i] / step))) for i in lost}
    merged = np.array([k in lost_keys for k in zip(decoded.pitch.tolist(),
                                                   np.rint(decoded.start / step).astype(int).tolist())], bool)
    same_bin = tok.velocity_to_bin(decoded.velocity) == tok.velocity_to_bin(src.velocity)
    return {
        "raw_notes": raw_note_count(path), "notes": len(notes), "decoded": len(decoded), "merged": len(lost),
        "tokens": len(enc.ids),
        "onset_err": np.abs(decoded.start - src.start), "offset_err": np.abs(decoded.end - src.end),
        "long": src.duration >= step / 2, "same_bin": same_bin, "merged_mask": merged,
        "exact_decode": bool(exact_decode), "exact_file": bool(exact_file),
    }


def summarize(rows: list[dict]) -> dict:
    def ms(values: np.ndarray) -> dict:
        if not len(values):
            return {"max": None, "p99": None, "mean": None}
        return {"max": round(float(values.max()) * 1e3, 3), "p99": round(float(np.percentile(values, 99)) * 1e3, 3),
                "mean": round(float(values.mean()) * 1e3, 3)}

    onset = np.concatenate([r["onset_err"] for r in rows]) if rows else np.zeros(0)
    offset = np.concatenate([r["offset_err"] for r in rows]) if rows else np.zeros(0)
    long = np.concatenate([r["long"] for r in rows]) if rows else np.zeros(0, bool)
    same_bin = np.concatenate([r["same_bin"] for r in rows]) if rows else np.zeros(0, bool)
    merged = np.concatenate([r["merged_mask"] for r in rows]) if rows else np.zeros(0, bool)
    notes = sum(r["notes"] for r in rows)
    decoded = sum(r["decoded"] for r in rows)
    return {
        "files": len(rows),
        "raw_notes": sum(r["raw_notes"] for r in rows),
        "notes_read": notes,
        "notes_decoded": decoded,
        "notes_kept_pct": round(100.0 * decoded / max(notes, 1), 4),
        "notes_merged_same_step_same_pitch": sum(r["merged"] for r in rows),
        "files_with_all_notes_kept": sum(r["merged"] == 0 for r in rows),
        "tokens": sum(r["tokens"] for r in rows),
        "onset_error_ms": ms(onset),
        "offset_error_ms": ms(offset),
        "offset_error_ms_notes_at_least_half_step": ms(offset[long]),
        "notes_shorter_than_half_step": int((~long).sum()),
        "velocity_within_bin_pct": round(100.0 * same_bin[~merged].mean(), 4) if (~merged).any() else None,
        "velocity_within_bin_pct_merged_notes": round(100.0 * same_bin[merged].mean(), 4) if merged.any() else None,
        "exact_decode_files": sum(r["exact_decode"] for r in rows),
        "exact_midi_file_round_trip_files": sum(r["exact_file"] for r in rows),
    }


def run_corpus(folder: Path, tok: PerformanceTokenizer, limit: int | None) -> dict:
    from tqdm import tqdm

    files = midi_files(folder)[:limit]
    rows, skipped = [], []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "decoded.mid"
        for path in tqdm(files, desc=folder.name, unit="file"):
            try:
                rows.append(file_round_trip(path, tok, scratch))
            except MusicGPTError as exc:
                skipped.append({"path": str(path.relative_to(folder)), "reason": str(exc)})
    result = {"corpus": str(folder), "files_found": len(files), **summarize(rows), "skipped": skipped,
              "seconds": round(time.perf_counter() - began, 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", nargs="*", type=Path, default=DEFAULT_CORPORA)
    parser.add_argument("--limit", type=int, default=None, help="files per corpus (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "roundtrip.json")
    args = parser.parse_args()
    tok = PerformanceTokenizer()
    corpora = [c for c in args.corpora if c.is_dir()]
    if not corpora:
        sys.exit(f"no corpus folder found among {', '.join(map(str, args.corpora))}")
    report = {
        "benchmark": "roundtrip", "tokenizer": tok.to_dict(),
        "machine": machine_info(),
        "corpora": [run_corpus(folder, tok, args.limit) for folder in corpora],
    }
    for c in report["corpora"]:
        print(f"{Path(c['corpus']).name}: {c['files']} files ({len(c['skipped'])} skipped), "
              f"notes kept {c['notes_kept_pct']}% ({c['notes_merged_same_step_same_pitch']} merged), "
              f"onset max {c['onset_error_ms']['max']} ms p99 {c['onset_error_ms']['p99']} ms, "
              f"offset max {c['offset_error_ms']['max']} ms p99 {c['offset_error_ms']['p99']} ms "
              f"(notes >= 5 ms: max {c['offset_error_ms_notes_at_least_half_step']['max']} ms), "
              f"velocity in bin {c['velocity_within_bin_pct']}%, "
              f"exact decode {c['exact_decode_files']}/{c['files']}, "
              f"exact MIDI file round trip {c['exact_midi_file_round_trip_files']}/{c['files']}")
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n", make_parents=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
