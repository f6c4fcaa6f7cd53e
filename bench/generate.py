"""Generation speed on CPU at batch 1: tokens/s by length, vs HF transformers, real-time factor, vs full
recompute, and the cost of capturing attention arcs. Writes bench/results/generate.json.

    python bench/generate.py            # about 5 minutes on 2 cores
    python bench/generate.py --quick    # shorter runs, for a smoke test

Every comparison interleaves its contenders round by round in this one process and reports the
ratio of medians: the machine's speed drifts 2-4x within minutes (other jobs share the cores),
so absolute tokens/s from different moments do not compare, ratios from one run do. The model
is the `small` preset, randomly initialised (speed does not depend on the weights' values), fp32,
one intra-op thread. `musicgpt.generate` is timed end to end: prefill, grammar masks, sampling.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import musicgpt  # noqa: E402
from musicgpt.model import GPTConfig, MusicGPT  # noqa: E402
from musicgpt.sampling import SamplingConfig, make_generator, sample  # noqa: E402
from musicgpt.tokenizer import PerformanceTokenizer  # noqa: E402

CAVEAT = ("CPU only: no GPU was lent to this task. The machine's speed drifts 2-4x within minutes (other jobs "
          "share its 2 cores): compare ratios of runs interleaved in this process, not absolute numbers "
          "across runs or machines.")


def ours(model, n: int, arcs: bool = False) -> float:
    """Seconds for musicgpt.generate to write n tokens after BOS (EOS masked so the length is exact)."""
    t = time.perf_counter()
    (s,) = musicgpt.generate(model, max_new_tokens=n, seed=0, stop_at_eos=False, arcs=arcs, threads=1)
    elapsed = time.perf_counter() - t
    assert s.n_generated == n
    return elapsed


def hf_model(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, n_inner=cfg.d_ff, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return GPT2LMHeadModel(hf_cfg).eval()


def hf(model, n: int) -> float:
    """Seconds for HF GPT2LMHeadModel.generate to sample n tokens after BOS (top_k off, EOS never stops it)."""
    x = torch.tensor([[1]])
    torch.set_num_threads(1)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=n,
                             min_new_tokens=n, top_k=0, temperature=1.0)
    elapsed = time.perf_counter() - t
    assert out.shape[1] == n + 1
    return elapsed


def full_recompute_step(model, ids: torch.Tensor, gen: torch.Generator) -> float:
    """Seconds for one step of a sampler without a cache: the whole context (last n_ctx tokens) again."""
    t = time.perf_counter()
    with torch.no_grad():
        logits = model(ids[:, -model.config.n_ctx :]).logits[:, -1]
        sample(logits, SamplingConfig(), gen)
    return time.perf_counter() - t


def cached_steps(model, ids: torch.Tensor, steps: int) -> float:
    """Seconds per step of our decoder after prefilling `ids` (same contexts as the full recompute)."""
    from musicgpt.decoder import Decoder

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


def median(xs):
    return statistics.median(xs)


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
    result = {"caveat": CAVEAT, "device": "cpu", "gpu": "none lent to this task",
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1,
              "model": {"preset": "small", **cfg.to_dict(), "parameters": model.num_parameters()},
              "batch": 1, "rounds": rounds}
    ours(model, 64)  # warm-up

    # 1. tokens/s by length: time per token should stay flat once the window (n_ctx) is full.
    times = {n: [] for n in lengths}
    for r in range(rounds):
        for n in lengths:
            times[n].append(ours(model, n))
            print(f"round {r}: ours {n} tokens {n / times[n][-1]:.0f} tok/s", flush=True)
    by_length = {str(n): {"tokens_per_s": round(n / median(times[n]), 1), "ms_per_token": round(1e3 * median(times[n]) / n, 3),
                          "runs_s": [round(t, 3) for t in times[n]]} for n in lengths}
    per_token = [median(times[n]) / n for n in lengths]
    result["tokens_per_s_by_length"] = by_length
    result["flatness"] = {"ms_per_token_longest_over_shortest": round(per_token[-1] / per_token[0], 3),
                          "note": f"window = n_ctx = {cfg.n_ctx}: attention reads grow until the window is full, "
                                  "then every step costs the same"}

    # 2. vs HF transformers GPT2LMHeadModel.generate, same size, same length, interleaved.
    n_hf = min(1023, cfg.n_ctx - 1) if not args.quick else 256
    try:
        hf_m = hf_model(cfg)
        a, b = [], []
        hf(hf_m, 16)
        for r in range(rounds):
            a.append(ours(model, n_hf))
            b.append(hf(hf_m, n_hf))
            print(f"round {r}: ours {n_hf / a[-1]:.0f} tok/s, HF {n_hf / b[-1]:.0f} tok/s", flush=True)
        import transformers

        result["vs_hf_transformers"] = {
            "tokens": n_hf, "transformers": transformers.__version__,
            "hf_parameters": sum(p.numel() for p in hf_m.parameters()),
            "ours_tokens_per_s": round(n_hf / median(a), 1), "hf_tokens_per_s": round(n_hf / median(b), 1),
            "speedup": round(median(b) / median(a), 2), "target": 2.0,
            "note": "HF: GPT2LMHeadModel (absolute positions, SDPA attention, DynamicCache) with do_sample, top_k=0; "
                    "ours: relative attention (one more GEMV per head and layer), grammar masks and sampling included"}
    except ImportError:
        result["vs_hf_transformers"] = {"skipped": "transformers not installed (pip install -e '.[bench]')"}

    # 3. real-time factor: tokens/s once the window is full x seconds of music per token of real piano.
    spt = seconds_per_token()
    steady = by_length[str(lengths[-1])]["tokens_per_s"]
    result["real_time_factor"] = {
        "tokens_per_s": steady, "at_length": lengths[-1], "target": 10.0,
        "by_data": {name: {**v, "real_time_factor": round(steady * v["seconds_per_token"], 2)} for name, v in spt.items()},
        "note": "a random model's music seconds per token depend on what it happens to sample, so the factor is "
                "tokens/s (measured) x seconds per token of real performances (measured on the listed files)"}

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
    f_med = np.array([median(full_t[c]) for c in contexts])
    o_med = np.array([median(ours_t[c]) for c in contexts])
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
    a, b = [], []
    for r in range(rounds):
        a.append(ours(model, n_arcs))
        b.append(ours(model, n_arcs, arcs=True))
        print(f"round {r}: arcs off {n_arcs / a[-1]:.0f} tok/s, on {n_arcs / b[-1]:.0f} tok/s", flush=True)
    result["arcs_overhead"] = {"tokens": n_arcs, "off_s": round(median(a), 3), "on_s": round(median(b), 3),
                               "ratio": round(median(b) / median(a), 3), "target": 1.5,
                               "note": "default ArcsConfig (top 64 keys per token row, top 6 notes per head)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("flatness", "vs_hf_transformers", "arcs_overhead")}, indent=1))
    print(f"RTF: {result['real_time_factor']['by_data']}")
    print(f"full recompute: steady {result['vs_full_recompute']['steady_state_ratio']}x, "
          f"total {result['vs_full_recompute']['total_ratio']}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
