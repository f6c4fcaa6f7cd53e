"""`musicgpt attend` on a long piece: peak memory, time, arcs and output sizes. Writes bench/results/attend_memory.json.

    python -m bench.attend_memory                  # a 60-minute piece: about 5 minutes on a quiet 2-core CPU
    python -m bench.attend_memory --minutes 2      # a quick run

The piece is the Chopin etude of the test fixtures (tests/fixtures/asap_chopin_etude_op25_8_Toscano02.mid,
1455 notes in 66 s, dense piano: about 22 notes and 83 tokens a second) played again and again, each
copy shifted in time, up to the asked length. `musicgpt attend` runs on it with the bundled model in a
child process (the CLI as a user runs it, default settings); this process samples the child's resident
memory every 0.2 s (a timeline) and reads its peak from the kernel (ru_maxrss of wait4), with its wall
and CPU time. Memory is what this benchmark is about: teacher forcing aggregates each chunk's attention
rows to note arcs and drops them, so what grows with the piece is the note arcs (20 bytes each while
computing, about 60 bytes each as a line of arcs.json) and the notes; the viewer page holds at most
--html-max-arcs arcs (the heaviest). Not a timed test: the timings drift with the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.machine import CAVEAT, NO_GPU, machine_info
from musicgpt._io import atomic_write, atomic_write_text
from musicgpt.music.midi import read_midi, write_midi
from musicgpt.music.notes import Notes

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "fixtures" / "asap_chopin_etude_op25_8_Toscano02.mid"
GAP = 1.0  # seconds of silence between two copies
# The same pieces before attend streamed (d9971e8: every NOTE_ON row's top-64 keys per layer and head kept to
# the end, about 37 KB a note with the bundled model, and every arc built as a Python dict), measured once by
# hand on this machine with this script's piece and a watchdog that killed the run at 12 GB.
BEFORE = {"commit": "d9971e8", "date": "2026-12-03",
          "runs": [{"minutes": 5, "notes": 6609, "arcs": 1515984, "wall_s": 55.0, "peak_rss_mb": 3790,
                    "arcs_json_bytes": 95251567, "html_bytes": 25429189},
                   {"minutes": 10, "notes": 13089, "arcs": 2998279, "wall_s": 94.1, "cpu_s": 119.2,
                    "peak_rss_mb": 6725, "arcs_json_bytes": 190329226, "html_bytes": 51229104},
                   {"minutes": 60, "notes": 78163, "wall_s": 191.4, "cpu_s": 358.0, "peak_rss_mb": 12297,
                    "outcome": "killed at the 12 GB cap while teacher forcing (no progress shown, nothing written); "
                               "growing about 0.6 GB a minute of music, it would have needed some 35 GB"}]}


def long_piece(minutes: float, path: Path, source: Path = SOURCE) -> Notes:
    """Write a piece of `minutes` minutes made of `source` repeated (each copy after the last plus GAP s)."""
    notes = read_midi(source)
    first = float(notes.start.min())
    start, end = notes.start - first, notes.end - first
    period = float(end.max()) + GAP
    copies = max(1, int(np.ceil(minutes * 60 / period)))
    shift = np.repeat(np.arange(copies) * period, len(notes))
    piece = Notes(np.tile(start, copies) + shift, np.tile(end, copies) + shift, np.tile(notes.pitch, copies),
                  np.tile(notes.velocity, copies))
    piece = piece[piece.start < minutes * 60]
    write_midi(piece, path)
    return piece


def _rss(pid: int) -> int:
    """Resident bytes of a process now (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def run_measured(cmd: list[str], log: Path) -> dict:
    """Run `cmd` (output to `log`); its wall and CPU seconds, peak RSS and an RSS timeline."""
    import subprocess

    timeline, ended = [], {}
    t0 = time.perf_counter()

    def run(tmp: Path) -> None:  # the log appears under its name once the child is done
        with open(tmp, "wb") as out:
            child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)
                if pid:
                    ended.update(status=status, usage=usage)
                    return
                timeline.append((round(time.perf_counter() - t0, 1), round(_rss(child.pid) / 2**20)))
                time.sleep(0.2)

    atomic_write(log, run)
    status, usage = ended["status"], ended["usage"]
    wall = time.perf_counter() - t0
    step = max(1, len(timeline) // 60)  # at most about 60 points in the file
    return {"exit_code": os.waitstatus_to_exitcode(status), "wall_s": round(wall, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "rss_mb_timeline": [list(x) for x in timeline[::step]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the piece (default 60)")
    parser.add_argument("--quick", action="store_const", const=2.0, dest="minutes", help="a 2-minute piece")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attend_memory.json")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the piece and attend's outputs in DIR")
    args = parser.parse_args(argv)
    result = {"benchmark": "attend_memory", "caveat": CAVEAT, "gpu": NO_GPU, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="attend_memory.") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"chopin_{args.minutes:g}min.mid"
        piece = long_piece(args.minutes, path)
        from musicgpt.tokens.performance import PerformanceTokenizer

        tokens = len(PerformanceTokenizer().encode(piece).ids) + 1  # with BOS
        result["piece"] = {"source": str(SOURCE.relative_to(ROOT)), "minutes": args.minutes,
                           "seconds": round(float(piece.end.max()), 1), "notes": len(piece), "tokens": tokens,
                           "midi_bytes": path.stat().st_size}
        cmd = [sys.executable, "-m", "musicgpt", "attend", str(path), "--out", str(folder), "--quiet"]
        print(f"attend on {len(piece)} notes, {tokens} tokens ({args.minutes:g} min) ...", flush=True)
        run = run_measured(cmd, folder / "attend.log")
        lines = (folder / "attend.log").read_text(encoding="utf-8", errors="replace").splitlines()
        arcs_json, html = folder / f"{path.stem}.arcs.json", folder / f"{path.stem}.html"
        summary = next((line for line in lines if line.startswith("wrote ")), "")
        arcs = int(summary.split(" notes, ")[1].split(" arcs")[0]) if " notes, " in summary else None
        result["attend"] = {"command": "musicgpt attend PIECE.mid --quiet (bundled model, default settings)", **run,
                            "tokens_per_s": round(tokens / run["wall_s"], 1), "arcs": arcs,
                            "arcs_per_note": round(arcs / len(piece), 1) if arcs else None,
                            "output": lines[-5:]}
        result["outputs"] = {"arcs_json_bytes": arcs_json.stat().st_size if arcs_json.exists() else None,
                             "html_bytes": html.stat().st_size if html.exists() else None}
    result["before_streaming"] = BEFORE
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(f"wrote {args.out}: peak RSS {run['peak_rss_mb']} MB, {run['wall_s']} s wall, {run['cpu_s']} s CPU, "
          f"{arcs} arcs, arcs.json {result['outputs']['arcs_json_bytes']} bytes")
    return 0 if run["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
