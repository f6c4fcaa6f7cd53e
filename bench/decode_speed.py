"""CPU decode speed at batch 1 against its memory-bandwidth bound, per weight precision (float32, bfloat16, int8).
Writes bench/results/decode_speed.json.

    python -m bench.decode_speed --data data/asap              # bundled model: about 6 minutes on 2 cores
    python -m bench.decode_speed --rounds 1 --tokens 16 --contexts 16 --nll-docs 0 --checkpoint CKPT  # a smoke run

At batch 1 a decode step reads every weight once, plus the cached keys and values and the relative
embeddings of the n tokens it sees, so tokens/s <= bandwidth / bytes per token. Measured, per precision
(`musicgpt.model.precision.for_cpu_decoding`) and context n, with one thread (the duet's setting) and all cores:

- step: tokens/s of the KV-cached decode step alone (`decoder_for(model).step`, what generation runs), the
  cache prefilled with n tokens of a real piece, fed the piece's next tokens;
- loop: tokens/s of generation's own loop (`Generation.step`: the step plus grammar masks and sampling);
- read bound: 1 / the seconds to read a float32 buffer of exactly that step's bytes once (`Tensor.sum`,
  the buffer re-read as the step re-reads its weights, so it sits in the caches as far as they hold it);
  DRAM bound: bandwidth of reading a 512 MB buffer / the bytes. achieved / bound is the step's share.

Everything of one round runs back to back in one process, precisions in a rotating order, and ratios are
taken within a round (the machine's speed drifts 2-4x within minutes); medians and ranges over rounds.
Also: a read-bandwidth sweep over buffer sizes, the layer matmuls alone per precision (is bf16 better as
bf16 activations or as weights upcast to float32?), and the test NLL of each precision through the decode
step itself (and the float32 forward pass on the same windows, as a check of the scoring).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.format import fmt, rx, table
from bench.machine import CAVEAT, NO_GPU, machine_info
from musicgpt._io import atomic_write_text
from musicgpt.device import cpu_flags
from musicgpt.generation.loop import Generation
from musicgpt.generation.setup import GenerationRequest, prepare
from musicgpt.model.gpt import load_checkpoint
from musicgpt.model.precision import PRECISIONS, context_bytes, decoder_for, for_cpu_decoding, weight_bytes
from musicgpt.model.prefill import teacher_force

ROOT = Path(__file__).resolve().parents[1]
PIECE = ROOT / "examples" / "bach_prelude_bwv846_shi.mid"
SWEEP_MB = (1, 2, 4, 8, 16, 32, 48, 64, 128, 512)
DRAM_MB = 512
PAYS = {"speedup": 1.5, "nll_delta": 0.01}
FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx2", "fma")


def cache_sizes() -> dict[str, str]:
    """The CPU's cache sizes as the OS lists them for cpu0 ('L1d': '48K', 'L2': '1280K', 'L3': '49152K')."""
    out = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        out[f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")] = size
    return out


def read_seconds(buf: torch.Tensor, passes: int) -> float:
    """Seconds per full read of `buf` (a float32 sum), averaged over `passes` reads after one warm-up read."""
    buf.sum()
    t0 = time.perf_counter()
    for _ in range(passes):
        buf.sum()
    return (time.perf_counter() - t0) / passes


def bandwidth_sweep(sizes_mb: tuple[int, ...], reps: int = 5) -> list[dict]:
    """Read bandwidth (GB/s, 1e9 bytes) of float32 buffers of each size: median and best of `reps`."""
    rows = []
    for mb in sizes_mb:
        buf = torch.ones(mb * 2**20 // 4)
        passes = max(2, 256 // mb)
        rates = [buf.numel() * 4 / read_seconds(buf, passes) / 1e9 for _ in range(reps)]
        rows.append({"mb": mb, "gb_s_median": statistics.median(rates), "gb_s_max": max(rates)})
    return rows


def piece_ids(tokenizer, n: int) -> np.ndarray:
    """At least n token ids of a real piece (examples/, repeated when shorter)."""
    ids = tokenizer.encode(PIECE).ids
    return np.resize(ids, max(n, len(ids)))


def time_step(model, ids: np.ndarray, n: int, tokens: int) -> float:
    """Tokens/s of `tokens` decode steps on a cache prefilled with ids[:n], fed ids[n:]."""
    cache, decoder = model.new_cache(), decoder_for(model)
    with torch.no_grad():
        teacher_force(model, torch.from_numpy(ids[None, :n]), cache)
        feed = torch.from_numpy(ids[n : n + tokens].copy())
        t0 = time.perf_counter()
        for i in range(tokens):
            decoder.step(feed[i : i + 1], cache)
        return tokens / (time.perf_counter() - t0)


def time_loop(model, tokenizer, ids: np.ndarray, n: int, tokens: int, seed: int) -> float:
    """Tokens/s of generation's loop (`Generation.step`) after a prompt of ids[:n - 1] ([BOS] makes it n)."""
    plan = prepare(model, tokenizer, GenerationRequest(primer=ids[: n - 1], max_new_tokens=tokens, seed=seed,
                                                       stop_at_eos=False, max_note_seconds=0.0))
    generation = Generation.from_plan(model, tokenizer, plan)
    generation.decoder = decoder_for(model)  # the loop builds a float32-layout Decoder; int8 has its own step
    t0 = time.perf_counter()
    while not generation.done:
        generation.step()
    return generation.n_steps / (time.perf_counter() - t0)


def matmul_round(model, reps: int) -> dict[str, float]:
    """Seconds of one token's layer matmuls (every layer's qkv, proj, fc, proj at batch 1) per way of computing them."""
    shapes = [(b.attn.qkv.weight, b.attn.proj.weight, b.mlp.fc.weight, b.mlp.proj.weight) for b in model.blocks]
    weights = [w.detach().t().contiguous() for layer in shapes for w in layer]  # (in, out) as Decoder lays them out
    bf16 = [w.to(torch.bfloat16) for w in weights]
    int8 = [layer for m in (for_cpu_decoding(model, "int8"),) for b in m.blocks
            for layer in (b.attn.qkv.packed, b.attn.proj.packed, b.mlp.fc.packed, b.mlp.proj.packed)]
    xs = [torch.randn(1, w.shape[0]) for w in weights]
    linear = torch.ops.quantized.linear_dynamic
    ways = {"float32": lambda: [torch.mm(x, w) for x, w in zip(xs, weights)],
            "bfloat16": lambda: [torch.mm(x.to(torch.bfloat16), w) for x, w in zip(xs, bf16)],
            "bfloat16_upcast": lambda: [torch.mm(x, w.float()) for x, w in zip(xs, bf16)],
            "int8": lambda: [linear(x, p, False) for x, p in zip(xs, int8)]}
    out = {}
    for name, run in ways.items():
        run()
        t0 = time.perf_counter()
        for _ in range(reps):
            run()
        out[name] = (time.perf_counter() - t0) / reps
    return out


def decode_rounds(models: dict, tokenizer, contexts: list[int], tokens: int, rounds: int, threads: int,
                  dram_mb: int = DRAM_MB) -> dict:
    """Per context and precision, per round: step and loop tokens/s and the read and DRAM bounds (interleaved)."""
    torch.set_num_threads(threads)
    ids = piece_ids(tokenizer, max(contexts) + tokens + 1)
    out = {str(n): {p: {"step": [], "loop": [], "read_bound": [], "dram_bound": []} for p in models} for n in contexts}
    dram = torch.ones(dram_mb * 2**20 // 4)
    for r in range(rounds):
        order = list(models)[r % len(models):] + list(models)[: r % len(models)]
        for n in contexts:
            for p in order:
                model, cell = models[p], out[str(n)][p]
                nbytes = weight_bytes(model) + context_bytes(model, min(n + tokens // 2, model.config.n_ctx))
                buf = torch.ones(nbytes // 4)
                cell["step"].append(time_step(model, ids, n, tokens))
                cell["read_bound"].append(1 / read_seconds(buf, 20))
                cell["dram_bound"].append(dram.numel() * 4 / read_seconds(dram, 2) / nbytes)
                cell["loop"].append(time_loop(model, tokenizer, ids, n, tokens, seed=r))
                del buf
        print(f"threads {threads} round {r + 1}/{rounds}: step tokens/s at n={contexts[-1]} "
              + ", ".join(f"{p} {out[str(contexts[-1])][p]['step'][-1]:.0f}" for p in models), file=sys.stderr)
    return out


def summarize(runs: dict, models: dict, tokens: int) -> dict:
    """Medians, ranges and within-round ratios (to float32, to the bounds) of decode_rounds' figures."""
    out = {}
    for n, cells in runs.items():
        base = cells["float32"]
        out[n] = {}
        for p, cell in cells.items():
            model = models[p]
            step_ratio = [a / b for a, b in zip(cell["step"], base["step"])]
            loop_ratio = [a / b for a, b in zip(cell["loop"], base["loop"])]
            out[n][p] = {
                "bytes_per_token": weight_bytes(model) + context_bytes(model, min(int(n) + tokens // 2,
                                                                                  model.config.n_ctx)),
                **{f"{k}_tokens_per_s": {"median": statistics.median(v), "min": min(v), "max": max(v)}
                   for k, v in cell.items()},
                "step_vs_float32": statistics.median(step_ratio), "loop_vs_float32": statistics.median(loop_ratio),
                "step_vs_float32_range": [min(step_ratio), max(step_ratio)],
                "step_over_read_bound": statistics.median(a / b for a, b in zip(cell["step"], cell["read_bound"])),
                "step_over_dram_bound": statistics.median(a / b for a, b in zip(cell["step"], cell["dram_bound"]))}
    return out


def nll_windows(data: Path, tokenizer, docs: int, context: int) -> tuple[list[tuple[np.ndarray, int]], dict]:
    """The first evaluation window of `docs` test documents spread over pieces, read as `musicgpt evaluate` reads
    them (each document's composer header, then [BOS] + the document)."""
    from bench.bundled_evaluation import pieces_of, spread_docs, subset_split
    from musicgpt.corpus.shards import open_split, read_manifest
    from musicgpt.training.conditioning import doc_composers
    from musicgpt.training.data import Specials, windows

    chosen = spread_docs(pieces_of(data, "test"), docs)
    split = open_split(data, "test")
    composers = doc_composers(read_manifest(data), "test")
    known = "composer" in (getattr(tokenizer, "controls", None) or {})
    specials = Specials(tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id)
    first = []
    for d in chosen:
        header = tokenizer.header({"composer": composers[d]}) if known and composers[d] else np.zeros(0, np.int64)
        first.append(next(windows(subset_split(split, [d]), context, context, specials, [header])))
    return first, {"data": str(data), "split": "test", "docs": chosen, "context": context,
                   "scored_tokens": sum(s for _, s in first)}


def decode_nll(model, items: list[tuple[np.ndarray, int]]) -> float:
    """Mean NLL (nats) of the scored targets, every token fed through the decode step one at a time."""
    decoder, total, count = decoder_for(model), 0.0, 0
    with torch.no_grad():
        for window, n_scored in items:
            cache, x = model.new_cache(), torch.from_numpy(window.astype(np.int64))
            targets = len(window) - 1
            for t in range(targets):
                logits, _ = decoder.step(x[t : t + 1], cache)
                if t >= targets - n_scored:
                    total -= float(torch.log_softmax(logits[0].float(), -1)[x[t + 1]])
                    count += 1
    return total / count


def forward_nll(model, items: list[tuple[np.ndarray, int]]) -> float:
    """The same mean NLL from one full forward pass per window (`MusicGPT.forward`, as `musicgpt evaluate`)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for window, n_scored in items:
            x = torch.from_numpy(window.astype(np.int64))[None]
            logp = torch.log_softmax(model(x[:, :-1]).logits[0].float(), -1)  # (L, V)
            rows = torch.arange(len(window) - 1 - n_scored, len(window) - 1)
            total -= float(logp[rows, x[0, rows + 1]].double().sum())
            count += n_scored
    return total / count


def verdict(summary: dict, nll: dict | None) -> dict:
    """Per precision: pays when its loop speedup at one thread is >= 1.5x at every context and its test NLL
    is within 0.01 of float32's (both measured here)."""
    one = summary.get("1") or next(iter(summary.values()))
    out = {}
    for p in PRECISIONS[1:]:
        speedups = [cells[p]["loop_vs_float32"] for cells in one.values() if p in cells]
        delta = None if not nll or p not in nll["decode"] else nll["decode"][p] - nll["decode"]["float32"]
        fast = bool(speedups) and min(speedups) >= PAYS["speedup"]
        close = delta is not None and abs(delta) <= PAYS["nll_delta"]
        out[p] = {"min_loop_speedup_1_thread": min(speedups) if speedups else None, "nll_delta": delta,
                  "pays": fast and close,
                  "why": ("pays" if fast and close else
                          "; ".join(([] if fast else [f"loop speedup {min(speedups or [0]):.2f}x < 1.5x"])
                                    + ([] if close else ["NLL not measured" if delta is None
                                                         else f"NLL {delta:+.4f} outside 0.01"])))}
    return out


def section_decode_speed(d: dict, img: Path) -> tuple[list[str], str]:
    """The report's section (lines, headline) for decode_speed.json (bench/report.py's renderer signature)."""
    m = d["model"]
    lines = [f"`{d['command']}`. At batch 1 a decode step reads every weight once, plus the cached keys and values "
             "and the relative embeddings of the tokens it sees, so tokens/s <= bandwidth / bytes per token. *step*: "
             "the KV-cached decode step alone (`Decoder.step`, `Int8Decoder.step`); *loop*: generation's own loop "
             "(`Generation.step`: the step plus grammar masks and sampling). *read bound*: 1 / the seconds to read "
             "a buffer of the step's bytes once (re-read as the step re-reads its weights, so it sits in the CPU "
             "caches as far as they hold it); *DRAM bound*: the bandwidth of reading a "
             f"{d['bandwidth'].get('dram_mb', DRAM_MB)} MB buffer / the bytes. Precisions from "
             "`musicgpt.model.precision.for_cpu_decoding` (bfloat16: weights, activations and cache in bf16; int8: "
             "the projections and the output head as int8 weights with per-row scales through fbgemm's dynamic "
             "quantization, the rest float32). A precision is offered to users only if generation's loop runs "
             f">= {PAYS['speedup']}x faster than float32 at one thread at every context with test NLL within "
             f"{PAYS['nll_delta']} of float32's. Absolute tokens/s depend on what else ran (the load average); the "
             "ratios come from interleaved rounds.", "",
             f"Model {m['checkpoint']} ({m['parameters']:,} parameters, {m['n_layer']} layers, d_model "
             f"{m['d_model']}); CPU caches {', '.join(f'{k} {v}' for k, v in d['cpu']['caches'].items())}; "
             f"flags: {', '.join(f'{k} {fmt(v)}' for k, v in d['cpu']['flags'].items())}. {d['settings']['rounds']} "
             f"interleaved rounds of {d['settings']['tokens']} tokens per cell.", ""]
    for threads, cells in d["summary"].items():
        lines += [f"**{threads} thread(s)**", ""]
        rows = [[n, p, c["bytes_per_token"] / 1e6, c["step_tokens_per_s"]["median"],
                 f"{fmt(c['step_tokens_per_s']['min'])} - {fmt(c['step_tokens_per_s']['max'])}",
                 c["read_bound_tokens_per_s"]["median"], rx(c["step_over_read_bound"]),
                 c["dram_bound_tokens_per_s"]["median"], rx(c["step_over_dram_bound"]),
                 rx(c["step_vs_float32"]), c["loop_tokens_per_s"]["median"], rx(c["loop_vs_float32"])]
                for n, per in cells.items() for p, c in per.items()]
        lines += table(["context", "precision", "MB/token", "step tok/s", "range", "read bound", "step / bound",
                        "DRAM bound", "step / DRAM bound", "step vs fp32", "loop tok/s", "loop vs fp32"], rows)
    sweep = d["bandwidth"]["sweep"]
    lines += [f"Read bandwidth ({d['bandwidth']['method']}):", ""]
    lines += table(["threads"] + [f"{r['mb']} MB" for r in next(iter(sweep.values()))],
                   [[t] + [f"{r['gb_s_median']:.1f}" for r in rows] for t, rows in sweep.items()])
    mm = d["matmuls"]
    lines += [f"One token's layer matmuls alone, 1 thread (median of {mm['rounds']} rounds, ms): "
              + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in mm["median_s"].items()) + ".", ""]
    nll = d.get("nll")
    if nll:
        lines += [f"Test NLL through the decode step, {nll['windows']['scored_tokens']:,} tokens (first window of "
                  f"{len(nll['windows']['docs'])} ASAP test documents, context {nll['windows']['context']}): "
                  + ", ".join(f"{p} {v:.4f}" for p, v in nll["decode"].items())
                  + f"; float32 forward pass on the same windows {nll['forward_float32']:.4f}.", ""]
    lines += [f"- {p}: {v['why']}" for p, v in d["verdict"].items()] + [""]
    paying = [p for p, v in d["verdict"].items() if v["pays"]]
    best = max(d["verdict"].items(), key=lambda kv: kv[1]["min_loop_speedup_1_thread"] or 0)
    headline = (f"{', '.join(paying)} pays" if paying else
                f"no precision pays (best {best[0]} {rx(best[1]['min_loop_speedup_1_thread'])} of float32)")
    return lines, headline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the bundled model)")
    parser.add_argument("--threads", default="1,all", help="thread counts, comma separated ('all': every core)")
    parser.add_argument("--tokens", type=int, default=128, help="decode steps per timed cell (default 128)")
    parser.add_argument("--contexts", default="64,512,896", help="tokens in the cache before the timed steps")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="float32 first, then any of the others")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "asap",
                        help="prepared ASAP (musicgpt prepare) for the test NLL; missing: no NLL")
    parser.add_argument("--nll-docs", type=int, default=8, help="test documents scored (0: no NLL)")
    parser.add_argument("--dram-mb", type=int, default=DRAM_MB,
                        help=f"buffer read for the DRAM bound, MB (default {DRAM_MB}: far past the caches)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decode_speed.json")
    args = parser.parse_args(argv)
    torch.backends.quantized.engine = "fbgemm"
    start = machine_info(torch_details=True)
    base, tokenizer = load_checkpoint(args.checkpoint)
    precisions = args.precisions.split(",")
    if precisions[0] != "float32" or not set(precisions) <= set(PRECISIONS):
        parser.error(f"--precisions: float32 first, then any of {', '.join(PRECISIONS)}")
    models = {p: for_cpu_decoding(base, p) for p in precisions}
    contexts = [int(c) for c in args.contexts.split(",")]
    threads = [torch.get_num_threads() if t == "all" else int(t) for t in args.threads.split(",")]
    torch.set_num_threads(1)
    mm_rounds = [matmul_round(base, 20) for _ in range(max(3, args.rounds))]
    nll = None
    if args.nll_docs > 0 and (args.data / "manifest.json").is_file():
        items, info = nll_windows(args.data, tokenizer, args.nll_docs, base.config.n_ctx)
        nll = {"windows": info, "decode": {p: decode_nll(m, items) for p, m in models.items()},
               "forward_float32": forward_nll(base, items),
               "forward": {p: forward_nll(m, items) for p, m in models.items()}}
        print(f"NLL {nll['decode']}", file=sys.stderr)
    result = {
        "benchmark": "decode_speed", "command": "python -m bench.decode_speed " + " ".join(argv or sys.argv[1:]),
        "machine_start": start,
        "cpu": {"caches": cache_sizes(), "flags": {f: f in cpu_flags().split() for f in FLAGS}},
        "model": {"checkpoint": args.checkpoint or "bundled", "parameters": base.num_parameters(),
                  "n_layer": base.config.n_layer, "d_model": base.config.d_model,
                  "weight_bytes": {p: weight_bytes(m) for p, m in models.items()}},
        "settings": {"tokens": args.tokens, "contexts": contexts, "rounds": args.rounds, "threads": threads},
        "bandwidth": {"method": "float32 Tensor.sum over one buffer re-read many times, median of 5 timings "
                                "(GB/s = 1e9 bytes)", "sweep": {}, "dram_mb": args.dram_mb},
        "runs": {}, "summary": {},
        "matmuls": {"rounds": len(mm_rounds), "median_s": {k: statistics.median(r[k] for r in mm_rounds)
                                                           for k in mm_rounds[0]}},
        "nll": nll, "no_nll_reason": None if nll else f"no prepared data at {args.data} or --nll-docs 0",
        "targets": PAYS,
        "caveat": f"{CAVEAT} Bounds assume one read of every byte per token; the read bound re-reads a buffer "
                  f"of the step's size, so it includes what the CPU caches hold, as the step does. {NO_GPU}.",
    }
    for t in dict.fromkeys(threads):  # the file is written after each thread count: a long run keeps what it did
        torch.set_num_threads(t)
        sweep = result["bandwidth"]["sweep"][str(t)] = bandwidth_sweep(tuple(mb for mb in SWEEP_MB
                                                                             if mb <= args.dram_mb))
        print(f"threads {t}: bandwidth {[round(r['gb_s_median'], 1) for r in sweep]} GB/s", file=sys.stderr)
        runs = result["runs"][str(t)] = decode_rounds(models, tokenizer, contexts, args.tokens, args.rounds, t,
                                                      args.dram_mb)
        result["summary"][str(t)] = summarize(runs, models, args.tokens)
        result.update(machine_end=machine_info(), verdict=verdict(result["summary"], nll))
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    lines, headline = section_decode_speed(result, args.out.parent)
    print("\n".join(lines) + f"\n{headline}\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
