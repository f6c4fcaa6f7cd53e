"""A long studio session against a live server: many short takes, some cancelled or dropped mid-take; the
server's memory, its take store and its answers to /api/health throughout. Writes bench/results/studio_soak.json.

    python -m bench.studio_soak                        # 200 takes + 20 cancelled/disconnected: ~15 min on 2 cores
    python -m bench.studio_soak --takes 40 --broken 6  # a quick run

The server is `musicgpt studio` in a subprocess (uvicorn, its own process: its RSS is read from /proc), on the
bundled model by default, with a takes folder of its own under a small cap (--limit-mb) so that the cap is
reached and held. Each take continues one of the checkout's examples (by name, or uploaded as a file every
third take) for --max-new-tokens tokens, 1 or 2 samples; every --every-th take of the run is instead stopped
with /api/cancel or dropped (the connection closed) after its first new note. A thread asks /api/health
every 0.25 s the whole time. Measured:

- RSS growth: the server's RSS after the whole run minus its RSS after the warm-up takes (target <= 50 MB),
  and its least-squares slope over the counted takes (a leak is a steady slope: before the RowTee fix, +36 MB
  a take);
- the take store: the takes folder's size after every take, against the cap (the newest take may exceed it);
- /api/health latency: every answer's seconds during the takes (target: max < 100 ms), and as a control the
  same for --idle seconds before the first take (what the machine alone costs);
- errors: error events, failed requests, non-200 answers, takes listed wrongly (target 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.machine import CAVEAT, NO_GPU, machine_info
from bench.studio_latency import multipart
from musicgpt._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["pop909_001", "pop909_003", "bach_prelude_bwv846_shi", "chopin_etude_op25_no4_taverna"]
TARGETS = {"rss_growth_mb": 50.0, "health_max_s": 0.1, "errors": 0}


def rss_mb(pid: int) -> float:
    """A process's resident set size (MB), from /proc."""
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def folder_mb(folder: Path) -> float:
    """MB of the files under a folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


class Server:
    """`musicgpt studio` in a subprocess on a free port."""

    def __init__(self, checkpoint: str | None, takes: Path, limit_mb: float, tmp: Path):
        command = [sys.executable, "-m", "musicgpt", "studio", *([checkpoint] if checkpoint else []), "--port", "0",
                   "--no-browser", "--takes", str(takes), "--takes-limit-mb", f"{limit_mb:g}"]
        self.tmp = tmp  # its temporary folder (uploads) lies here: what it leaves behind is counted
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp)})
        line = self.process.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not found:
            self.process.kill()
            raise RuntimeError(f"studio did not start: {line!r} {self.process.stderr.read()[-2000:]}")
        self.port = int(found.group(1))
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        """Ctrl-C, as a user stops it."""
        self.process.send_signal(2)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 600):
    """(status, the open connection, the response) of one request."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=body or None, headers=headers or {})
    return conn, conn.getresponse()


def take(port: int, fields: dict[str, str], upload: Path | None, stop: str | None) -> dict:
    """One take; `stop`: None (to its end), "cancel" or "drop" after its first new note. Its outcome."""
    if upload is not None:
        body, kind = multipart(fields, upload)
    else:
        body, kind = "&".join(f"{k}={v}" for k, v in fields.items()).encode(), "application/x-www-form-urlencoded"
    conn, response = request(port, "POST", "/api/generate", body, {"Content-Type": kind})
    out = {"status": response.status, "error": None, "done": None, "notes": 0}
    job, name = response.headers.get("X-Job-Id"), None
    while response.status == 200:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            name = line[7:].strip().decode()
        elif line.startswith(b"data: "):
            data = json.loads(line[6:])
            if name == "error":
                out["error"] = data["message"]
            elif name == "done":
                out["done"] = data
            elif name == "note" and not data.get("primer", True):
                out["notes"] += 1
                if stop == "drop" and out["notes"] == 1:
                    break
                if stop == "cancel" and out["notes"] == 1:
                    c, r = request(port, "POST", f"/api/cancel?job={job}", timeout=30)
                    out["cancel_status"] = r.status
                    r.read()
                    c.close()
    conn.close()
    return out


def ping(port: int, latencies: list[float], failures: list[str], stop: threading.Event, slow: list) -> None:
    """Ask /api/health every 0.25 s until stopped; `slow` gets (seconds since the start, latency) of answers at or
    over the target, with the load average then (a shared machine's scheduling shows here)."""
    begun = time.perf_counter()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            conn, response = request(port, "GET", "/api/health", timeout=30)
            response.read()
            conn.close()
            if response.status != 200:
                failures.append(f"health: HTTP {response.status}")
        except OSError as exc:
            failures.append(f"health: {exc}")
        latencies.append(time.perf_counter() - t0)
        if latencies[-1] >= TARGETS["health_max_s"]:
            slow.append([round(t0 - begun, 2), round(latencies[-1], 4), os.getloadavg()[0]])
        stop.wait(0.25)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--takes", type=int, default=200, help="takes run to their end (default 200)")
    parser.add_argument("--broken", type=int, default=20, help="takes cancelled or dropped mid-take (default 20)")
    parser.add_argument("--warmup", type=int, default=40,
                        help="takes before the RSS baseline, every kind among them (default 40)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="seconds /api/health is asked with no take running, first: the control (default 30)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens per take (default 48)")
    parser.add_argument("--limit-mb", type=float, default=20.0, help="the takes folder's cap (default 20)")
    parser.add_argument("--checkpoint", help="model (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "studio_soak.json")
    args = parser.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="studio-soak-"))
    folder, tmp = scratch / "takes", scratch / "tmp"
    tmp.mkdir()
    server = Server(args.checkpoint, folder, args.limit_mb, tmp)
    latencies: list[float] = []
    failures: list[str] = []
    done_pinging = threading.Event()
    slow: list = []
    pinger = threading.Thread(target=ping, args=(server.port, latencies, failures, done_pinging, slow), daemon=True)
    result = {"benchmark": "studio_soak", "caveat": CAVEAT, "gpu": NO_GPU, "machine_start": machine_info(),
              "model": args.checkpoint or "bundled", "takes": args.takes, "broken": args.broken,
              "warmup": args.warmup, "max_new_tokens": args.max_new_tokens, "limit_mb": args.limit_mb,
              "targets": TARGETS}
    started = time.perf_counter()
    rss, store, outcomes = [], [], {"done": 0, "stopped": 0, "dropped": 0}
    total = args.warmup + args.takes + args.broken
    every = max(1, (args.takes + args.broken) // max(args.broken, 1))
    broken = 0
    try:
        pinger.start()
        time.sleep(args.idle)  # the control: the same pings with the server idle
        idle = sorted(latencies)
        for i in range(total):
            counted = i >= args.warmup
            stop = None
            if not counted and i % 10 == 7:  # the warm-up has every kind of take: cancelled and dropped too
                stop = "cancel" if i % 20 == 7 else "drop"
            elif counted and broken < args.broken and (i - args.warmup) % every == every - 1:
                stop = "cancel" if broken % 2 == 0 else "drop"
                broken += 1
            example = EXAMPLES[i % len(EXAMPLES)]
            fields = {"max_new_tokens": str(args.max_new_tokens), "seed": str(i), "primer_seconds": "8",
                      "num_samples": "2" if i % 5 == 4 else "1"}
            upload = ROOT / "examples" / f"{example}.mid" if i % 3 == 2 else None
            if upload is None:
                fields["example"] = example
            if stop is not None:
                fields.update(max_new_tokens="50000", ignore_eos="true")
            out = take(server.port, fields, upload, stop)
            if out["status"] != 200 or out["error"]:
                failures.append(f"take {i}: HTTP {out['status']} {out['error']}")
            elif stop is None and out["done"] is None:
                failures.append(f"take {i}: no done event")
            elif stop == "cancel" and (out.get("cancel_status") != 200 or not (out["done"] or {}).get("stopped")):
                failures.append(f"take {i}: the cancel was not honoured ({out.get('cancel_status')})")
            if counted:
                outcomes["done" if stop is None else "stopped" if stop == "cancel" else "dropped"] += 1
            if i == args.warmup - 1 or i % 10 == 9 or i == total - 1:
                time.sleep(1.0)  # the file writer finishes the last take's files
                rss.append({"take": i + 1, "rss_mb": round(rss_mb(server.process.pid), 1)})
            store.append(round(folder_mb(folder), 3))
            if i % 25 == 24:
                print(f"take {i + 1}/{total}: RSS {rss[-1]['rss_mb']} MB, store {store[-1]:.1f} MB, "
                      f"health max {max(latencies) * 1000:.0f} ms", flush=True)
        conn, response = request(server.port, "GET", "/api/takes", timeout=30)
        listing = json.loads(response.read())
        conn.close()
        on_disk = sorted(int(p.name[5:]) for p in folder.iterdir() if p.is_dir())
        listed = sorted(t["take"] for t in listing["takes"])
        if listed != on_disk:
            failures.append(f"takes listed {listed[:5]}... but on disk {on_disk[:5]}...")
        uploads_left = len(list(tmp.glob("*/upload-*")))  # every upload is read once, or dropped with its take
        if uploads_left:
            failures.append(f"{uploads_left} uploaded primers left in the server's folder")
    finally:
        done_pinging.set()
        pinger.join(5)
        server.stop()
    errors_in_log = [line for line in server.log if "Traceback" in line or "ERROR" in line]
    failures += [f"server log: {line.strip()}" for line in errors_in_log]
    baseline = next(r["rss_mb"] for r in rss if r["take"] == args.warmup)
    growth = rss[-1]["rss_mb"] - baseline
    health = sorted(latencies[len(idle):])
    result.update({
        "wall_s": round(time.perf_counter() - started, 1), "outcomes": outcomes, "rss": rss,
        "rss_after_warmup_mb": baseline, "rss_end_mb": rss[-1]["rss_mb"], "rss_growth_mb": round(growth, 1),
        "rss_max_after_warmup_mb": max(r["rss_mb"] for r in rss if r["take"] >= args.warmup),
        "rss_slope_mb_per_100_takes": _slope([r for r in rss if r["take"] >= args.warmup]),
        "store_mb": {"max": max(store), "end": store[-1], "limit": args.limit_mb,
                     "takes_kept": len(on_disk), "takes_listed": len(listed)},
        "health_s": {"n": len(health), "median": round(statistics.median(health), 4),
                     "p99": round(health[int(0.99 * (len(health) - 1))], 4), "max": round(health[-1], 4),
                     "over_target": sum(x >= TARGETS["health_max_s"] for x in health),
                     "slow": slow[:50]},  # [seconds into the run, latency, 1-minute load average]
        "health_idle_s": {"n": len(idle), "median": round(statistics.median(idle), 4), "max": round(idle[-1], 4),
                          "over_target": sum(x >= TARGETS["health_max_s"] for x in idle)},
        "uploads_left": uploads_left, "errors": len(failures), "failures": failures[:20],
        "meets_targets": {"rss_growth": growth <= TARGETS["rss_growth_mb"],
                          "health": health[-1] < TARGETS["health_max_s"], "errors": not failures,
                          "store_within_cap": max(store) <= args.limit_mb + _newest_allowance(store, args.limit_mb)},
        "machine_end": machine_info(),
    })
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(json.dumps({k: result[k] for k in ("wall_s", "outcomes", "rss_growth_mb", "rss_slope_mb_per_100_takes",
                                             "store_mb", "health_s", "errors", "meets_targets")}, indent=1))
    print(f"wrote {args.out}")
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _slope(points: list[dict]) -> float | None:
    """The least-squares slope of RSS over takes, MB per 100 takes (a leak shows as a steady slope; the
    allocator's ups and downs do not)."""
    if len(points) < 3:
        return None
    x = [p["take"] for p in points]
    y = [p["rss_mb"] for p in points]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return round(100 * sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x), 2)


def _newest_allowance(store: list[float], limit: float) -> float:
    """The cap holds for all takes but the newest, which is always kept: allow one take's size over it."""
    steps = [b - a for a, b in zip(store, store[1:]) if b > a]
    return max(steps, default=0.0)


if __name__ == "__main__":
    sys.exit(main())
