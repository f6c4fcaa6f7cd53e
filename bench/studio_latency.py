"""The studio's live stream against a direct `musicgpt.generate`: time to the first streamed new note, and tokens/s.
Writes bench/results/studio_latency.json.

    python -m bench.studio_latency              # 5 rounds: about 2 minutes on 2 cores
    python -m bench.studio_latency --rounds 2   # a quick run

Bundled model, CPU, one generation thread. Each round runs both contenders with the same seed (alternating
which goes first): the studio (a real uvicorn server in this process, `POST /api/generate` with the
20-second primer of examples/bach_prelude_bwv846_shi.mid uploaded as a file, read by a plain HTTP client
in the main thread) and `musicgpt.generate` with the same arguments and `arcs=True` (the studio always
captures arcs). Both write the same tokens (checked). Measured:

- first note: seconds from sending the POST to receiving the first `note` event of a generated note
  (the upload, form, primer, prefill, the primer's notes and arcs, then sampling until a NOTE_ON; how many
  tokens come before that NOTE_ON is the music's choice, recorded as `tokens_before_first_note`);
- running: seconds from the POST to the `progress` event that opens the take (after the prefill);
- tokens/s: new tokens / seconds from the POST to the `done` event (the studio), and / seconds of the
  `generate` call (direct); their ratio per round, and its median, is the streaming overhead.

The machine's speed drifts 2-4x within minutes (other jobs share its 2 cores): read the ratios of one run,
not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

from bench.machine import CAVEAT, NO_GPU, machine_info
from musicgpt._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
PRIMER = ROOT / "examples" / "bach_prelude_bwv846_shi.mid"
TARGETS = {"first_note_s": 0.5, "overhead": 0.10}


def multipart(fields: dict[str, str], file: Path) -> tuple[bytes, str]:
    """A multipart/form-data body with text fields and the primer file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="primer"; filename="{file.name}"\r\n'
                 f"Content-Type: audio/midi\r\n\r\n".encode() + file.read_bytes() + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def stream_take(port: int, fields: dict[str, str]) -> dict:
    """POST a take and read its events as a light client would; times from sending the request."""
    body, content_type = multipart(fields, PRIMER)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0, cpu0 = time.perf_counter(), time.process_time()
    conn.request("POST", "/api/generate", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    first_note = running = done = first_id = prompt_length = None
    events = 0
    name = None
    while True:
        line = response.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            name = line[7:].strip()
            events += 1
        elif line.startswith(b"data: "):
            if name == b"note" and first_note is None and b'"primer":false' in line:
                first_note = time.perf_counter() - t0
                first_id = json.loads(line[6:])["id"]
            elif name == b"progress" and running is None and b'"state":"running"' in line:
                running = time.perf_counter() - t0
                prompt_length = json.loads(line[6:])["primer_tokens"] + 1
            elif name in (b"done", b"error"):
                done = time.perf_counter() - t0
                data = json.loads(line[6:])
                if name == b"error":
                    raise RuntimeError(f"studio error: {data['message']}")
    conn.close()
    # tokens sampled before the first NOTE_ON (TIME_SHIFTs, NOTE_OFFs, a VELOCITY): the music decides how many
    before = None if first_id is None or prompt_length is None else first_id - prompt_length
    return {"first_note_s": first_note, "running_s": running, "done_s": done, "events": events,
            "tokens_before_first_note": before,
            "cpu_s": round(time.process_time() - cpu0, 3),
            "tokens": max(s["tokens"] for s in data["samples"]), "new_notes": data["samples"][0]["new_notes"]}


def direct_take(model, fields: dict[str, str]) -> dict:
    """musicgpt.generate with the same arguments, timed."""
    import musicgpt

    t0, cpu0 = time.perf_counter(), time.process_time()
    samples = musicgpt.generate(model, PRIMER, primer_seconds=float(fields["primer_seconds"]),
                                seconds=float(fields["seconds"]), top_p=float(fields["top_p"]),
                                seed=int(fields["seed"]), arcs=True, threads=1)
    seconds = time.perf_counter() - t0
    return {"done_s": seconds, "cpu_s": round(time.process_time() - cpu0, 3), "tokens": samples[0].n_generated,
            "new_notes": int((~samples[0].primer_notes).sum())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of both contenders (default 5)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of new music per take (default 30)")
    parser.add_argument("--primer-seconds", type=float, default=20.0, help="primer length (default 20)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "studio_latency.json")
    args = parser.parse_args(argv)
    from musicgpt.generation.setup import load_model_and_tokenizer
    from musicgpt.studio import StudioServer, create_app

    result = {"benchmark": "studio_latency", "caveat": CAVEAT, "gpu": NO_GPU,
              "machine_start": machine_info(torch_details=True),
              "model": "bundled", "primer": str(PRIMER.relative_to(ROOT)), "primer_seconds": args.primer_seconds,
              "seconds": args.seconds, "threads": 1, "targets": TARGETS}
    model, tokenizer = load_model_and_tokenizer(None)
    server = StudioServer(create_app(model, tokenizer), port=0).start()
    rounds = []
    try:
        base = {"primer_seconds": f"{args.primer_seconds:g}", "seconds": f"{args.seconds:g}", "top_p": "1"}
        stream_take(server.port, {**base, "seed": "0"})  # warm-up: kernels, allocator, both paths
        direct_take(model, {**base, "seed": "0"})
        for r in range(args.rounds):
            fields = {**base, "seed": str(r + 1)}
            order = ["studio", "direct"] if r % 2 == 0 else ["direct", "studio"]
            runs = {}
            for who in order:
                runs[who] = stream_take(server.port, fields) if who == "studio" else direct_take(model, fields)
            studio, direct = runs["studio"], runs["direct"]
            if studio["tokens"] != direct["tokens"]:
                raise RuntimeError(f"round {r}: the studio wrote {studio['tokens']} tokens, generate {direct['tokens']}")
            ratio = (studio["tokens"] / studio["done_s"]) / (direct["tokens"] / direct["done_s"])
            rounds.append({"seed": r + 1, "order": order, "studio": studio, "direct": direct,
                           "cpu_ratio": round(studio["cpu_s"] / direct["cpu_s"], 4),
                           "studio_tokens_per_s": round(studio["tokens"] / studio["done_s"], 1),
                           "direct_tokens_per_s": round(direct["tokens"] / direct["done_s"], 1),
                           "tokens_per_s_ratio": round(ratio, 4)})
            print(f"round {r + 1}: first note {studio['first_note_s']:.3f} s, studio {rounds[-1]['studio_tokens_per_s']} "
                  f"tok/s, direct {rounds[-1]['direct_tokens_per_s']} tok/s, ratio {ratio:.3f}, CPU seconds "
                  f"{studio['cpu_s']} vs {direct['cpu_s']}", flush=True)
    finally:
        server.stop()
    first = [r["studio"]["first_note_s"] for r in rounds]
    ratios = [r["tokens_per_s_ratio"] for r in rounds]
    median_ratio = statistics.median(ratios)
    result.update({
        "rounds": rounds,
        "first_note_s": {"median": round(statistics.median(first), 4), "min": round(min(first), 4),
                         "max": round(max(first), 4)},
        "running_s_median": round(statistics.median(r["studio"]["running_s"] for r in rounds), 4),
        "tokens_per_s_ratio": {"median": round(median_ratio, 4), "min": min(ratios), "max": max(ratios)},
        "overhead": round(1 - median_ratio, 4),
        "cpu_ratio_median": round(statistics.median(r["cpu_ratio"] for r in rounds), 4),
        "meets_targets": {"first_note": statistics.median(first) <= TARGETS["first_note_s"],
                          "overhead": 1 - median_ratio <= TARGETS["overhead"]},
        "machine_end": machine_info(torch_details=True),
    })
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(json.dumps({k: result[k] for k in ("first_note_s", "running_s_median", "tokens_per_s_ratio", "overhead",
                                             "cpu_ratio_median", "meets_targets")}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
