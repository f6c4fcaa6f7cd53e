"""Generation speed on CPU: tokens/s by length, vs HF transformers (batch 1 and 8), real-time factor, vs full
recompute, the cost of capturing attention arcs, and the decode-step layouts measured against each other.
Writes bench/results/generate.json.

    python -m bench.generate            # about 6 minutes on 2 cores
    python -m bench.generate --quick    # shorter runs, for a smoke test

Every comparison interleaves its contenders round by round in this one process (alternating which
goes first) and reports the median of the per-round ratios: the machine's speed drifts 2-4x within
minutes (other jobs share the cores), so absolute tokens/s from different moments do not compare,
ratios from one run do. Each run is timed twice: wall clock (what a user waits) and the process's
CPU time (what it costs; less disturbed by other jobs taking the cores, not by their sharing the
memory bus). The model is the `small` preset, randomly initialised (speed does not depend on the
weights' values), fp32, one intra-op thread. `musicgpt.generate` is timed end to end: prefill,
grammar masks, sampling.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import musicgpt
from bench.machine import machine_info
from musicgpt._io import atomic_write_text
from musicgpt.generation.sampling import SamplingConfig, make_generator, sample
from musicgpt.model.gpt import GPTConfig, MusicGPT
from musicgpt.tokens.performance import PerformanceTokenizer

ROOT = Path(__file__).resolve().parents[1]

CAVEAT = ("CPU only (GPU figures: bench/gpu.py). The machine's speed drifts 2-4x within minutes (other jobs "
          "share its 2 cores and its memory bandwidth): compare ratios of runs interleaved in this process, not "
          "absolute numbers across runs or machines (the load averages at start and end say how busy it was).")


def timed(fn, *args, **kwargs) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kwargs)
    return time.perf_counter() - wall, time.process_time() - cpu


def ours(model, n: int, arcs: bool = False, batch: int = 1) -> None:
    """musicgpt.generate writing n tokens after BOS per sample (EOS masked so the length is exact)."""
    samples = musicgpt.generate(model, max_new_tokens=n, seed=0, stop_at_eos=False, arcs=arcs, threads=1,
                                num_samples=batch)
    assert all(s.n_generated == n for s in samples)


def hf_model(cfg: GPTConfig):
    """GPT2LMHeadModel of the same size: layers, heads, width, MLP width, vocabulary, context."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()  # its padding advice does not apply: one unpadded BOS per row
    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, n_inner=cfg.d_ff, activation_function="gelu_new", bos_token_id=1,
                        eos_token_id=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return GPT2LMHeadModel(hf_cfg).eval()


def hf(model, n: int, batch: int = 1) -> None:
    """HF GPT2LMHeadModel.generate sampling n tokens after BOS per row (KV cache on, top_k off, EOS never stops it)."""
    x = torch.ones((batch, 1), dtype=torch.long)
    torch.set_num_threads(1)
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=n,
                             min_new_tokens=n, top_k=0, top_p=1.0, temperature=1.0, use_cache=True)
    assert out.shape == (batch, n + 1)


def interleaved(a, b, rounds: int) -> dict:
    """Run a() and b() alternately (each goes first in every other round); times and median per-round ratios b/a."""
    ta, tb = [], []
    for r in range(rounds):
        if r % 2:
            tb.append(timed(b))
            ta.append(timed(a))
        else:
            ta.append(timed(a))
            tb.append(timed(b))
    return {"a": ta, "b": tb,
            "ratio_wall": statistics.median(y[0] / x[0] for x, y in zip(ta, tb)),
            "ratio_cpu": statistics.median(y[1] / x[1] for x, y in zip(ta, tb))}


def full_recompute_step(model, ids: torch.Tensor, gen: torch.Generator) -> float:
    """Seconds for one step of a sampler without a cache: the whole context (last n_ctx tokens) again."""
    t = time.perf_counter()
    with torch.no_grad():
        logits = model(ids[:, -model.config.n_ctx :]).logits[:, -1]
        sample(logits, SamplingConfig(), gen)
    return time.perf_counter() - t


def cached_steps(model, ids: torch.Tensor, steps: int) -> float:
    """Seconds per step of our decoder after prefilling `ids` (same contexts as the full recompute)."""
    from musicgpt.model.decode_step import Decoder

    with torch.no_grad():
        cache = model.new_cache()
        model(ids, cache=cache)
        decoder = Decoder(model)
        tok = ids[:, -1]
        t = time.perf_counter()
        for _ in range(steps):
            logits, _ = decoder.step(tok, cache)
            tok = logits.argmax(-1)
    return (time.perf_counter() - t) / steps


def seconds_per_token() -> dict:
    """Seconds of music per token of real piano: the test fixtures, and the shared corpora when present."""
    tok = PerformanceTokenizer()
    out = {}
    sets = {"fixtures": sorted(glob.glob(str(ROOT / "tests/fixtures/*.mid"))),
            "asap (first 60 files)": sorted(glob.glob(str(ROOT / "../shared/corpora/asap/**/*.mid"), recursive=True))[:60],
            "pop909 (first 60 files)": sorted(glob.glob(str(ROOT / "../shared/corpora/pop909/POP909/*/*.mid")))[:60]}
    for name, files in sets.items():
        if not files:
            continue
        tokens = seconds = 0.0
        for f in files:
            enc = tok.encode(f)
            tokens += len(enc.ids)
            seconds += enc.notes.end_time
        out[name] = {"files": len(files), "tokens": int(tokens), "seconds": round(seconds, 1),
                     "seconds_per_token": seconds / tokens}
    return out


def layouts(cfg: GPTConfig, n: int, rounds: int) -> dict:
    """Per-layer attention of one decode query at n keys, every layer's operands cycled (as in a step, where
    the weights stream through the caches in between): the cache layouts and fusions that were weighed."""
    h, d, layers = cfg.n_head, cfg.head_dim, cfg.n_layer
    cap = n + n // 2
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    keys = [rand(h, cap, d) for _ in range(layers)]  # (H, slots, D): keys as the model makes them
    keys_t = [k.transpose(1, 2).contiguous() for k in keys]  # (H, D, slots): transposed, as KVCache stores them
    values = [rand(h, cap, d) for _ in range(layers)]
    emb = [rand(h, n, d) for _ in range(layers)]
    emb_t = [e.transpose(1, 2).contiguous() for e in emb]
    q = rand(h, 1, d)
    start = n // 4

    def untransposed(i):
        s = torch.bmm(q, keys[i][:, start : start + n].transpose(1, 2))
        s.baddbmm_(q, emb[i].transpose(1, 2))
        return torch.bmm(torch.softmax(s, -1), values[i][:, start : start + n])

    def transposed(i):
        s = torch.bmm(q, keys_t[i][:, :, start : start + n])
        s.baddbmm_(q, emb_t[i])
        return torch.bmm(torch.softmax(s, -1), values[i][:, start : start + n])

    def sdpa(i):  # fused attention with the relative logits as an additive mask: fewer ops, slower kernel
        rel = torch.bmm(q, emb_t[i])
        return torch.nn.functional.scaled_dot_product_attention(
            q[None], keys[i][None, :, start : start + n], values[i][None, :, start : start + n],
            attn_mask=rel[None], scale=1.0)

    variants = {"keys (n, D), q @ K^T": untransposed, "keys transposed (D, n), q @ K_t [kept]": transposed,
                "SDPA with relative logits as a float mask": sdpa}
    best = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t = time.process_time()
            for _ in range(20):
                for i in range(layers):
                    fn(i)
            best[name].append((time.process_time() - t) / (20 * layers))
    ref = transposed(0).view(h, 1, d)
    return {"keys": n, "heads": h, "head_dim": d,
            "us_per_layer_cpu": {name: round(1e6 * min(v), 1) for name, v in best.items()},
            "max_abs_difference": {name: float((fn(0).view(h, 1, d) - ref).abs().max())
                                   for name, fn in variants.items()},
            "note": "min over rounds of CPU time per layer (scores, relative term, softmax, values); not part "
                    "of the end-to-end numbers above"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter sequences")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/generate.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rounds = 2 if args.quick else 3
    lengths = [128, 256, 512, 1024] if args.quick else [512, 1024, 2048, 4096]
    cfg = GPTConfig.preset("small", dropout=0.0)
    torch.manual_seed(0)
    model = MusicGPT(cfg).eval()
    result = {"caveat": CAVEAT, "device": "cpu", "gpu": "not used (GPU figures: bench/gpu.py)",
              "machine": machine_info(torch_details=True), "threads": 1,
              "model": {"preset": "small", **cfg.to_dict(), "parameters": model.num_parameters()},
              "rounds": rounds, "load_average_1_5_15_min": {"start": [round(x, 2) for x in os.getloadavg()]}}
    ours(model, 64)  # warm-up

    # 1. tokens/s by length: time per token should stay flat once the window (n_ctx) is full.
    times = {n: [] for n in lengths}
    for r in range(rounds):
        for n in (lengths if r % 2 == 0 else lengths[::-1]):
            times[n].append(timed(ours, model, n))
        print(f"round {r}: " + ", ".join(f"{n}: {n / times[n][-1][0]:.0f} tok/s" for n in lengths), flush=True)
    by_length = {}
    for n in lengths:
        wall, cpu = statistics.median(t[0] for t in times[n]), statistics.median(t[1] for t in times[n])
        by_length[str(n)] = {"tokens_per_s": round(n / wall, 1), "ms_per_token": round(1e3 * wall / n, 3),
                             "tokens_per_cpu_s": round(n / cpu, 1), "runs_wall_s": [round(t[0], 3) for t in times[n]],
                             "runs_cpu_s": [round(t[1], 3) for t in times[n]]}
    result["tokens_per_s_by_length"] = by_length
    per_round, per_round_cpu = ([times[lengths[-1]][r][i] / lengths[-1] / (times[lengths[0]][r][i] / lengths[0])
                                 for r in range(rounds)] for i in (0, 1))
    full = [n for n in lengths if n >= cfg.n_ctx]  # from n_ctx tokens on, every step sees a full window
    beyond = {}
    if len(full) >= 3:  # tokens c-b against tokens b-a: both full-window stretches, so the ratio should be 1
        a, b, c = full[-3:]
        beyond = {f"ms_per_token_{b}_to_{c}_over_{a}_to_{b}{suffix}": round(statistics.median(
            ((times[c][r][i] - times[b][r][i]) / (c - b)) / ((times[b][r][i] - times[a][r][i]) / (b - a))
            for r in range(rounds)), 3) for i, suffix in ((0, ""), (1, "_cpu"))}
    result["flatness"] = {
        "ms_per_token_longest_over_shortest": round(statistics.median(per_round), 3),
        "cpu_ms_per_token_longest_over_shortest": round(statistics.median(per_round_cpu), 3),
        "lengths": [lengths[0], lengths[-1]], **beyond,
        "note": f"median of per-round ratios; window = n_ctx = {cfg.n_ctx}: attention reads grow until the window "
                "is full, then every step costs the same (no step copies more than its own key and value; the "
                "window moves to the front of the buffers once per half window)"}

    # 2. vs HF transformers GPT2LMHeadModel.generate, same size, same length, interleaved; batch 1 and 8.
    try:
        import transformers

        hf_m = hf_model(cfg)
        hf(hf_m, 16)
        comparisons = {}
        for batch, n_hf in ((1, min(1023, cfg.n_ctx - 1)), (8, 512)):
            if args.quick:
                n_hf = 128
            res = interleaved(lambda: ours(model, n_hf, batch=batch), lambda: hf(hf_m, n_hf, batch=batch), rounds)
            tokens = n_hf * batch
            comparisons[f"batch_{batch}"] = {
                "tokens_per_sample": n_hf, "batch": batch,
                "ours_tokens_per_s": round(tokens / statistics.median(t[0] for t in res["a"]), 1),
                "hf_tokens_per_s": round(tokens / statistics.median(t[0] for t in res["b"]), 1),
                "speedup": round(res["ratio_wall"], 2), "speedup_cpu_time": round(res["ratio_cpu"], 2),
                **{f"per_round_{kind}_s": {"ours": [round(t[i], 3) for t in res["a"]],
                                           "hf": [round(t[i], 3) for t in res["b"]]}
                   for i, kind in ((0, "wall"), (1, "cpu"))}}
            print(f"vs HF, batch {batch}: {res['ratio_wall']:.2f}x wall, {res['ratio_cpu']:.2f}x CPU", flush=True)
        result["vs_hf_transformers"] = {  # batch 1 (the target) at the top level, as bench/report.py reads it
            "transformers": transformers.__version__, "hf_parameters": sum(p.numel() for p in hf_m.parameters()),
            "tokens": comparisons["batch_1"]["tokens_per_sample"], **comparisons.pop("batch_1"), "target": 2.0,
            **comparisons,
            "note": "speedup = median over interleaved rounds of HF time / our time. HF: GPT2LMHeadModel "
                    "(absolute positions, SDPA attention, DynamicCache, gelu_new) with generate(do_sample=True, "
                    "top_k=0, top_p=1, temperature=1, use_cache=True); ours: relative attention (one more GEMV per "
                    "head and layer, a relative table read as large as the keys), grammar masks and sampling "
                    "included. Same layers, heads, width, MLP width, vocabulary; one thread each."}
    except ImportError:
        result["vs_hf_transformers"] = {"skipped": "transformers not installed (pip install -e '.[bench]')"}

    # 3. real-time factor: tokens/s once the window is full x seconds of music per token of real piano.
    spt = seconds_per_token()
    steady = by_length[str(lengths[-1])]
    result["real_time_factor"] = {
        "tokens_per_s": steady["tokens_per_s"], "tokens_per_cpu_s": steady["tokens_per_cpu_s"],
        "at_length": lengths[-1], "target": 10.0, "target_data": "fixtures",
        "by_data": {name: {**v, "real_time_factor": round(steady["tokens_per_s"] * v["seconds_per_token"], 2),
                           "real_time_factor_cpu_time": round(steady["tokens_per_cpu_s"] * v["seconds_per_token"], 2)}
                    for name, v in spt.items()},
        "note": "a random model's music seconds per token depend on what it happens to sample, so the factor is "
                "tokens/s (measured, generating lengths[-1] tokens from BOS, so mostly with a full window) x seconds "
                "per token of real performances (measured on the listed files); real_time_factor uses wall time on "
                "this shared machine, real_time_factor_cpu_time the process's CPU time"}

    # 4. vs a full-recompute sampler at 2048 tokens: per-step times at several contexts, interleaved.
    n_full = 2048 if not args.quick else 512
    contexts = sorted({min(c, cfg.n_ctx) for c in (32, 128, 256, 512, 768, 1024, n_full)})
    gen = make_generator(0)
    full_t, ours_t = {c: [] for c in contexts}, {c: [] for c in contexts}
    for r in range(rounds):
        for c in contexts:
            ids = torch.randint(3, 259, (1, c), generator=gen)
            full_t[c].append(min(full_recompute_step(model, ids, gen) for _ in range(2)))
            ours_t[c].append(cached_steps(model, ids, 16))
        print(f"round {r}: full recompute at {contexts[-1]}: {full_t[contexts[-1]][-1] * 1e3:.0f} ms/step", flush=True)
    f_med = np.array([statistics.median(full_t[c]) for c in contexts])
    o_med = np.array([statistics.median(ours_t[c]) for c in contexts])
    steps = np.minimum(np.arange(1, n_full + 1), cfg.n_ctx)  # context of each of the n_full steps
    total_full = float(np.interp(steps, contexts, f_med).sum())
    total_ours = float(np.interp(steps, contexts, o_med).sum())
    result["vs_full_recompute"] = {
        "tokens": n_full, "target": 20.0,
        "ms_per_step": {str(c): {"full_recompute": round(f * 1e3, 3), "ours": round(o * 1e3, 3),
                                 "ratio": round(f / o, 1)} for c, f, o in zip(contexts, f_med, o_med)},
        "steady_state_ratio": round(float(f_med[-1] / o_med[-1]), 1),
        "total_ratio": round(total_full / total_ours, 1),
        "total_seconds": {"full_recompute": round(total_full, 1), "ours": round(total_ours, 1)},
        "note": f"per-step times measured at the listed contexts (median of {rounds} rounds); the totals for "
                f"{n_full} tokens add them up over every step's context (linear between measured contexts), "
                "since running the full-recompute sampler for all steps would take many minutes"}

    # 5. the cost of capturing attention arcs (end to end: capture, aggregation, arcs.json dict).
    n_arcs = 1024 if not args.quick else 256
    res = interleaved(lambda: ours(model, n_arcs), lambda: ours(model, n_arcs, arcs=True), rounds)
    result["arcs_overhead"] = {"tokens": n_arcs, "off_s": round(statistics.median(t[0] for t in res["a"]), 3),
                               "on_s": round(statistics.median(t[0] for t in res["b"]), 3),
                               "ratio": round(res["ratio_wall"], 3), "ratio_cpu_time": round(res["ratio_cpu"], 3),
                               "target": 1.5,
                               "note": "median of per-round ratios; default ArcsConfig (top 64 keys per token row, "
                                       "top 6 notes per head)"}
    print(f"arcs: {res['ratio_wall']:.2f}x wall, {res['ratio_cpu']:.2f}x CPU", flush=True)

    # 6. the decode-step attention layouts that were weighed against each other.
    result["attention_layouts"] = layouts(cfg, cfg.n_ctx, 3 if not args.quick else 2)

    result["load_average_1_5_15_min"]["end"] = [round(x, 2) for x in os.getloadavg()]
    result["load_average_1_5_15_min"]["note"] = (f"on {os.cpu_count()} CPUs: a load above that means other jobs "
                                                 "took turns with this one, so wall-clock tokens/s understate it")
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n", make_parents=True)
    print(json.dumps({k: result[k] for k in ("flatness", "arcs_overhead", "attention_layouts")}, indent=1))
    print(f"RTF: {json.dumps(result['real_time_factor']['by_data'])}")
    print(f"full recompute: steady {result['vs_full_recompute']['steady_state_ratio']}x, "
          f"total {result['vs_full_recompute']['total_ratio']}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
