"""A scripted human plays phrases of real performances against the duet, in real time: how fast and how evenly the
model answers. Writes bench/results/duet_latency.json.

    python -m bench.duet_latency                       # ASAP test pieces, both paths: about 4 minutes
    python -m bench.duet_latency --phrases 4 --data examples    # a quick run on the bundled examples

Bundled model (or --checkpoint), CPU, one thread for the model. The human replays phrases (4 s
taken at several points of held-out performances: the ASAP test split by piece) as MIDI messages at their
times; after each phrase they stay silent until the model has answered for a moment, then play the next
phrase into its answer (a barge-in); one phrase is replayed sped up to FLOOD_RATE notes a second. Two paths,
each a front end the project ships, in one process:

- `engine`: the engine with the studio's pump (`musicgpt.studio.duet_pump.DuetPump`), no network: what the
  page and `musicgpt live` get before any I/O;
- `websocket`: the studio's `GET /api/duet` on a real uvicorn server, a `websockets` client on a socket.

Measured per path, from the client's side (receipt times on its monotonic clock; the session clock mapped to
it by the session's start, or over the socket by the `ready` message's time, a socket's latency late):

- takeover: from the moment the human has been silent `wait` seconds to the model's first note-on
  sounding (sounding = the later of its due time and its receipt: a client plays an early message on time);
- human note in the cache: from sending a note-on to the end of the prefill that put its NOTE_ON in the KV
  cache (`DuetSession._sync` timed in this process, for both paths), during the flood phrase and over all
  phrases;
- barge-in: from sending the human's note-on into the model's answer to receiving the last note-off of the
  model's sounding notes (a barge-in with no model note sounding is not counted);
- jitter: how late each model note-on message arrives after its due time (0 when early: a client plays it
  on time); note-offs are reported apart (`note_off_late`): those that silence a barge-in are dated at the
  player's note, so they are late by the barge-in's latency by construction;
- dropped: human messages the pump dropped (its `error` events) and note-ons never echoed.

The machine's speed drifts 2-4x within minutes and other jobs share its 2 cores: the JSON records the load;
compare runs made one after the other in one process, not across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.machine import CAVEAT, NO_GPU, machine_info
from musicgpt._io import atomic_write_text
from musicgpt.corpus.recipes import held_out_pieces

ROOT = Path(__file__).resolve().parents[1]
ASAP = ROOT.parent / "shared" / "corpora" / "asap"
FLOOD_RATE = 20.0  # note-ons a second in the flood phrase
LISTEN_S = (0.4, 1.2)  # the human lets the model play this long (uniform) before barging in
TARGETS = {"takeover_median_ms": 50, "takeover_p95_ms": 100, "cache_p95_ms": 20, "barge_in_ms": 30,
           "jitter_p95_ms": 5, "dropped": 0}

Timed = list[tuple[float, list[int]]]  # (seconds from the phrase's start, MIDI message)


@dataclass(frozen=True)
class Script:
    """The scripted human and the duet's settings."""

    phrase_s: float = 4.0  # seconds of a performance per phrase
    wait: float = 1.0  # the duet's `wait` and `answer`
    answer: float = 4.0
    seed: int = 0


# ---- the human's part -------------------------------------------------------------------------------------------
def phrases(files: list[Path], count: int, script: Script) -> list[Timed]:
    """`count` phrases of `phrase_s` seconds with at least 6 notes, at spread-out points of the performances."""
    from musicgpt.music.midi import read_midi

    rng, length_s = np.random.default_rng(script.seed), script.phrase_s
    out: list[Timed] = []
    for path in rng.permutation(np.array(files, dtype=object)).tolist():
        notes = read_midi(path)
        length = float(notes.end.max()) if len(notes) else 0.0
        for start in rng.uniform(0, max(length - length_s, 0), 2):
            keep = (notes.start >= start) & (notes.start < start + length_s)
            if keep.sum() < 6:
                continue
            on, off = notes.start[keep] - start, np.minimum(notes.end[keep], start + length_s + 0.5) - start
            events = [(float(t), [0x90, int(p), max(1, int(v))]) for t, p, v in
                      zip(on, notes.pitch[keep], notes.velocity[keep])]
            events += [(float(t), [0x80, int(p), 0]) for t, p in zip(off, notes.pitch[keep])]
            out.append(sorted(events, key=lambda e: (e[0], e[1][0] == 0x90)))
            if len(out) == count:
                return out
    if not out:
        raise SystemExit(f"no phrase of {length_s:g} s with 6 notes in {len(files)} files")
    return out


def flood(phrase: Timed) -> Timed:
    """The phrase sped up to FLOOD_RATE note-ons a second (its rhythm kept)."""
    ons = [t for t, m in phrase if m[0] == 0x90]
    scale = (len(ons) / FLOOD_RATE) / max(ons[-1] - ons[0], 1e-3)
    return [(t * scale, m) for t, m in phrase]


# ---- a client of either path ------------------------------------------------------------------------------------
class Client:
    """Sends the human's messages and records every message received, with receipt times (time.monotonic)."""

    def __init__(self, send: Callable[[list[int]], None]):
        self.send_midi = send
        self.received: list[tuple[float, dict]] = []
        self.fed: list[tuple[float, int]] = []  # (when a prefill returned, tokens in the cache after it)
        self.sent: list[tuple[float, list[int], int]] = []  # (time, message, phrase)
        self.changed = threading.Condition()

    def receive(self, messages: list[dict] | None) -> None:
        now = time.monotonic()
        with self.changed:
            self.received += [(now, m) for m in messages or []]
            self.changed.notify_all()

    def play(self, phrase: Timed, index: int) -> None:
        t0 = time.monotonic()
        for t, message in phrase:
            delay = t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sent.append((time.monotonic(), message, index))
            self.send_midi(message)

    def wait_for(self, test: Callable[[dict], bool], after: float, timeout: float) -> float | None:
        """The receipt time of the first message received after `after` that passes `test`."""
        end = time.monotonic() + timeout
        with self.changed:
            while True:
                for t, m in self.received:
                    if t >= after and test(m):
                        return t
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)


@contextmanager
def timing_prefills(client: Client):
    """Record when each `DuetSession._sync` returns and how many tokens the cache then holds."""
    from musicgpt.duet.engine import DuetSession

    original = DuetSession._sync

    def timed(session):
        original(session)
        client.fed.append((time.monotonic(), session.fed))

    DuetSession._sync = timed
    try:
        yield
    finally:
        DuetSession._sync = original


def perform(client: Client, phrases_: list[Timed], script: Script) -> None:
    """Play each phrase; listen to the model's answer a moment; barge in with the next phrase."""
    rng = np.random.default_rng(script.seed)
    for i, phrase in enumerate(phrases_):
        client.play(phrase, i)
        ended = time.monotonic()
        first = client.wait_for(lambda m: m.get("event") == "midi" and m["midi"][0] == 0x90, ended,
                                script.wait + 3.0)
        if first is not None and i + 1 < len(phrases_):
            time.sleep(float(rng.uniform(*LISTEN_S)))
    time.sleep(script.wait + 0.5)


def engine_path(model, phrases_: list[Timed], script: Script) -> Client:
    """The engine and the studio's pump in this process."""
    from musicgpt.duet import DuetConfig, DuetSession
    from musicgpt.generation.setup import GenerationRequest
    from musicgpt.studio.duet_pump import DuetPump

    session = DuetSession(model, DuetConfig(wait=script.wait, answer=script.answer),
                          GenerationRequest(seed=script.seed))
    pump = DuetPump(session, lambda messages: client.receive(messages))
    client = Client(pump.put)
    client.origin = session.clock.start  # the session clock's zero on time.monotonic
    pump.start()
    try:
        with timing_prefills(client):
            perform(client, phrases_, script)
    finally:
        pump.stop()
    return client


def websocket_path(model, phrases_: list[Timed], script: Script) -> Client:
    """The studio's /api/duet on a real server and socket."""
    from websockets.sync.client import connect

    from musicgpt.studio import StudioServer, create_app

    server = StudioServer(create_app(model), port=0).start()
    try:
        query = f"wait={script.wait:g}&answer={script.answer:g}&seed={script.seed}"
        with connect(f"ws://127.0.0.1:{server.port}/api/duet?{query}", max_size=2**24) as ws:
            client = Client(lambda m: ws.send(json.dumps({"midi": m})))
            ready = json.loads(ws.recv(timeout=60))
            if ready.get("event") != "ready":
                raise SystemExit(f"the duet answered {ready}")
            client.origin = time.monotonic() - ready["time"]  # the session clock's zero, a socket's latency late

            def read():
                try:
                    for text in ws:
                        client.receive([json.loads(text)])
                except Exception:  # closed
                    pass

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            with timing_prefills(client):
                perform(client, phrases_, script)
    finally:
        server.stop()
    return client


# ---- figures ----------------------------------------------------------------------------------------------------
def percentiles(values: list[float]) -> dict[str, Any]:
    """n, median, p95 and max in milliseconds."""
    if not values:
        return {"n": 0}
    ms = np.asarray(values) * 1e3
    return {"n": len(ms), "median_ms": round(float(np.median(ms)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "max_ms": round(float(ms.max()), 2)}


def figures(client: Client, flood_index: int, script: Script) -> dict[str, Any]:
    """The measures above from what one client sent and received."""
    received = client.received
    echoes = {}  # (pitch, n-th strike of that pitch) -> (echo receipt, its NOTE_ON's position)
    count: dict[int, int] = {}
    for t, m in received:
        if m.get("event") == "note" and m.get("who") == "human" and m.get("end") is None:
            k = count.get(m["pitch"], 0)
            count[m["pitch"]] = k + 1
            echoes[(m["pitch"], k)] = (t, m["id"])
    fed_t = np.array([t for t, _ in client.fed])
    fed_n = np.array([n for _, n in client.fed])

    def in_cache(sent: float, position: int) -> float | None:
        """When the first prefill after `sent` returned with the NOTE_ON at `position` in the cache."""
        hit = np.flatnonzero((fed_t >= sent) & (fed_n > position))
        return float(fed_t[hit[0]]) if len(hit) else None

    cache, flood_cache, missing = [], [], 0
    count = {}
    for t, message, index in client.sent:
        if message[0] != 0x90:
            continue
        k = count.get(message[1], 0)
        count[message[1]] = k + 1
        echo = echoes.get((message[1], k))
        fed = None if echo is None else in_cache(t, echo[1])
        if fed is None:
            missing += 1
            continue
        cache.append(fed - t)
        if index == flood_index:
            flood_cache.append(fed - t)
    origin = client.origin  # server time s -> client time s + origin
    midi = [(t, m) for t, m in received if m.get("event") == "midi"]
    # a note-on sounds at its time unless its message comes later; note-offs that silence (a barge-in, the end)
    # are reactions, dated when the player played, so only the strikes measure the timing
    jitter = [max(0.0, t - (m["time"] + origin)) for t, m in midi if m["midi"][0] == 0x90]
    off_late = [max(0.0, t - (m["time"] + origin)) for t, m in midi if m["midi"][0] != 0x90]
    takeovers, barge_ins = [], []
    sends = [(t, i) for t, m, i in client.sent if m[0] == 0x90]
    for i in sorted({i for _, _, i in client.sent}):
        last = max(t for t, _, j in client.sent if j == i)
        nxt = [t for t, j in sends if j == i + 1]
        ons = [(t, m) for t, m in midi if m["midi"][0] == 0x90 and t > last and (not nxt or t < nxt[0])]
        if ons:
            sound = max(ons[0][0], ons[0][1]["time"] + origin)
            takeovers.append(sound - (last + script.wait))
        if nxt:  # the next phrase's first note barges into the answer: the model's sounding notes end
            t_in = nxt[0]
            struck = {m["midi"][1] for t, m in midi if m["midi"][0] == 0x90 and t < t_in}
            sounding = set()
            for t, m in midi:
                if t >= t_in:
                    break
                (sounding.add if m["midi"][0] == 0x90 else sounding.discard)(m["midi"][1])
            offs = [t for t, m in midi if t >= t_in and m["midi"][0] == 0x80 and m["midi"][1] in sounding]
            if sounding and struck and offs:
                barge_ins.append(max(offs[: len(sounding)]) - t_in)
    dropped = max([m.get("dropped", 0) for _, m in received if m.get("event") == "error"], default=0)
    errors = [m.get("message") for _, m in received if m.get("event") == "error"]
    return {"takeover": percentiles(takeovers), "cache": percentiles(cache), "cache_flood": percentiles(flood_cache),
            "barge_in": percentiles(barge_ins), "jitter": percentiles(jitter), "note_off_late": percentiles(off_late),
            "dropped": int(dropped),
            "not_echoed": missing, "human_note_ons": len(sends), "model_messages": len(midi), "errors": errors[:5]}


def verdict(f: dict[str, Any]) -> dict[str, bool | None]:
    """Each target met or not (None: nothing measured)."""
    def get(name, key):
        return f[name].get(key)
    checks = {"takeover_median_ms": get("takeover", "median_ms"), "takeover_p95_ms": get("takeover", "p95_ms"),
              "cache_p95_ms": get("cache_flood", "p95_ms"), "barge_in_ms": get("barge_in", "p95_ms"),
              "jitter_p95_ms": get("jitter", "p95_ms"), "dropped": f["dropped"] + f["not_echoed"]}
    return {k: None if v is None else bool(v <= TARGETS[k]) for k, v in checks.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--data", type=Path, default=ASAP, help=f"corpus folder (default {ASAP})")
    parser.add_argument("--split", default="test", help="the held-out split whose pieces are replayed")
    parser.add_argument("--phrases", type=int, default=12, help="phrases per path (default 12)")
    parser.add_argument("--paths", default="engine,websocket", help="which paths, comma-separated")
    parser.add_argument("--phrase-seconds", type=float, default=Script.phrase_s, help="seconds per phrase")
    parser.add_argument("--wait", type=float, default=Script.wait, help="the duet's wait (s)")
    parser.add_argument("--answer", type=float, default=Script.answer, help="the duet's answer (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "duet_latency.json")
    args = parser.parse_args(argv)
    import torch

    from musicgpt.generation.setup import load_model_and_tokenizer

    torch.set_num_threads(1)
    model, _ = load_model_and_tokenizer(args.checkpoint)
    script = Script(args.phrase_seconds, args.wait, args.answer, args.seed)
    played = phrases(held_out_pieces(args.data, args.split), args.phrases, script)
    flood_index = len(played) // 2
    played[flood_index] = flood(played[flood_index])
    result = {"benchmark": "duet_latency", "caveat": CAVEAT, "gpu": NO_GPU,
              "machine_start": machine_info(torch_details=True), "model": args.checkpoint or "bundled",
              "data": str(args.data), "split": args.split, "phrases": len(played), **asdict(script),
              "flood_rate": FLOOD_RATE, "threads": 1, "targets": TARGETS, "paths": {}}
    for path in args.paths.split(","):
        run = {"engine": engine_path, "websocket": websocket_path}[path]
        t0 = time.monotonic()
        client = run(model, played, script)
        f = figures(client, flood_index, script)
        f["seconds"] = round(time.monotonic() - t0, 1)
        f["meets"] = verdict(f)
        result["paths"][path] = f
        print(f"{path}: takeover {f['takeover']}, cache (flood) {f['cache_flood']}, barge-in {f['barge_in']}, "
              f"jitter {f['jitter']}, dropped {f['dropped']}, not echoed {f['not_echoed']}", flush=True)
    result["machine_end"] = machine_info()
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
