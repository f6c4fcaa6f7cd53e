"""GPU figures (CUDA only): relative attention's training step against PyTorch's SDPA (absolute positions)
and a naive port, peak memory, torch.compile, and KV-cached generation against HF transformers.
Writes bench/results/gpu.json.

    python -m bench.gpu           # about 3 minutes on one H100
    python -m bench.gpu --quick   # a smoke run

Model: the bundled model's shape (the `medium` preset: 6 layers, d_model 384, 8 heads, d_ff 1536),
randomly initialised (speed does not depend on the weights' values), dropout 0, relative distances
over the whole context (R = L, as in Music Transformer). Train step = forward, backward and AdamW
under bf16 autocast, the way `musicgpt train` runs on a GPU. Contenders:
  absolute   position="absolute": learned positions, F.scaled_dot_product_attention(is_causal) (flash)
  relative   position="relative": musicgpt.model.attention.biased_sdpa, Srel skewed from one (B, H, L, L+1)
             product and added as the bias of fused SDPA (memory-efficient kernel)
  naive      the same relative model with the gwinndr/MusicTransformer-Pytorch-style attention of
             bench/attention.py patched in: logits, Srel and probabilities materialized through autograd
Timings: CUDA synchronized wall clock per step, contenders interleaved round by round in this
process, median of per-round ratios. Peak memory: torch.cuda.max_memory_allocated over one step,
minus what was allocated before it (weights, gradients, optimizer state).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import musicgpt
from bench.attention import attention_impl  # the naive port
from bench.generate import hf_model  # GPT2LMHeadModel of the same size
from bench.machine import machine_info
from musicgpt._io import atomic_write_text
from musicgpt.model.gpt import GPTConfig, MusicGPT

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layer=6, n_head=8, d_model=384, d_ff=1536)  # the medium preset (musicgpt/configs/medium.toml)
DEVICE = "cuda"  # --device cpu only smoke-tests this script
CAVEAT = ("GPU figures: wall clock synchronized around each step on the lent GPU; contenders interleaved in one "
          "process, ratios are the figures to compare. Other sessions may share the machine's host CPUs.")


def sync_time(fn) -> float:
    """Seconds of fn() with the GPU synchronized before and after."""
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class TrainStep:
    """One model + AdamW + batch on the GPU; step() runs forward, backward and the update under bf16 autocast."""

    def __init__(self, name: str, length: int, batch: int, position: str, impl: str = "ours", compile: bool = False):
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=391, n_ctx=length, max_relative_distance=length, position=position,
                        dropout=0.0, **SHAPE)
        self.name, self.impl = name, impl
        self.model = MusicGPT(cfg).to(DEVICE).train()
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True)
        self.x = torch.randint(0, cfg.vocab_size, (batch, length + 1), device=DEVICE)  # (B, L+1)

    def step(self) -> None:
        with attention_impl(self.impl), torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = self.forward(self.x[:, :-1], targets=self.x[:, 1:]).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def peak_bytes(self) -> int:
        """Peak allocation of one step above the resident weights and optimizer state."""
        if DEVICE != "cuda":
            return 0
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        self.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base


def train_section(length: int, batch: int, rounds: int, naive: bool, compiled: bool) -> dict:
    """Interleaved train steps of the contenders at one length; times, ratios to absolute, peak memory."""
    specs = [("absolute", "absolute", "ours", False), ("relative", "relative", "ours", False)]
    if naive:
        specs.append(("naive", "relative", "naive", False))
    if compiled:
        specs += [("absolute_compiled", "absolute", "ours", True), ("relative_compiled", "relative", "ours", True)]
    out: dict = {"length": length, "batch": batch, "tokens_per_step": length * batch, "errors": {}}
    steps = []
    for name, position, impl, comp in specs:
        try:
            s = TrainStep(name, length, batch, position, impl, comp)
            t0 = time.perf_counter()
            for _ in range(3):  # warm-up: allocator, autotuning, compilation
                s.step()
            _sync()
            if comp:
                out.setdefault("compile_and_warmup_s", {})[name] = round(time.perf_counter() - t0, 1)
            steps.append(s)
        except Exception as exc:  # noqa: BLE001 (recorded: e.g. out of memory for the naive port)
            out["errors"][name] = f"{type(exc).__name__}: {str(exc)[:300]}"
            if DEVICE == "cuda":
                torch.cuda.empty_cache()
    times = {s.name: [] for s in steps}
    for r in range(rounds):
        order = steps if r % 2 == 0 else steps[::-1]
        for s in order:
            times[s.name].append(sync_time(s.step))
    out["seconds"] = {k: [round(x, 5) for x in v] for k, v in times.items()}
    out["median_seconds"] = {k: round(statistics.median(v), 5) for k, v in times.items()}
    out["tokens_per_s"] = {k: round(length * batch / statistics.median(v)) for k, v in times.items()}
    out["ratio_to_absolute"] = {k: round(statistics.median(a / b for a, b in zip(v, times["absolute"])), 3)
                                for k, v in times.items() if "absolute" in times}
    out["peak_bytes"] = {}
    for s in steps:
        if not s.name.endswith("_compiled"):
            try:
                out["peak_bytes"][s.name] = s.peak_bytes()
            except Exception as exc:  # noqa: BLE001 (recorded, e.g. out of memory)
                out["errors"][f"{s.name}_peak"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if out["peak_bytes"].get("absolute"):
        out["peak_ratio_to_absolute"] = {k: round(v / out["peak_bytes"]["absolute"], 3)
                                         for k, v in out["peak_bytes"].items()}
    for s in steps:
        del s.model, s.opt
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    print(f"train L={length} B={batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in
                                                      ((k, 1000 * v) for k, v in out["median_seconds"].items()))
          + " | ratio to absolute " + ", ".join(f"{k} {v}" for k, v in out["ratio_to_absolute"].items())
          + (f" | errors {out['errors']}" if out["errors"] else ""), flush=True)
    return out


def generation_section(n: int, batches: list[int], rounds: int) -> dict:
    """Tokens/s of musicgpt.generate (KV cache, grammar mask, sampling) vs HF GPT2LMHeadModel.generate, on the GPU."""
    cfg = GPTConfig(vocab_size=391, n_ctx=1024, max_relative_distance=512, position="relative", dropout=0.0, **SHAPE)
    torch.manual_seed(0)
    ours_model = MusicGPT(cfg).to(DEVICE).eval()
    hf = hf_model(cfg).to(DEVICE)

    def ours(batch: int) -> None:
        samples = musicgpt.generate(ours_model, max_new_tokens=n, seed=0, stop_at_eos=False, num_samples=batch,
                                    device=DEVICE, threads=None)
        assert all(s.n_generated == n for s in samples)

    def theirs(batch: int) -> None:
        x = torch.ones((batch, 1), dtype=torch.long, device=DEVICE)
        with torch.no_grad():
            y = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=n, min_new_tokens=n,
                            top_k=0, top_p=1.0, temperature=1.0, use_cache=True)
        assert y.shape == (batch, n + 1)

    out = {"tokens": n, "model": "relative, context 1024, R 512, fp32 (what `musicgpt generate` runs)", "batches": {}}
    for batch in batches:
        ours(batch), theirs(batch)  # warm-up
        t_ours, t_hf = [], []
        for r in range(rounds):
            pair = [(t_ours, ours), (t_hf, theirs)]
            for times, fn in (pair if r % 2 == 0 else pair[::-1]):
                times.append(sync_time(lambda: fn(batch)))
        res = {"ours_s": [round(x, 3) for x in t_ours], "hf_s": [round(x, 3) for x in t_hf],
               "ours_tokens_per_s": round(batch * n / statistics.median(t_ours)),
               "hf_tokens_per_s": round(batch * n / statistics.median(t_hf)),
               "speedup_vs_hf": round(statistics.median(b / a for a, b in zip(t_ours, t_hf)), 3)}
        out["batches"][str(batch)] = res
        print(f"generate {n} tokens, batch {batch}: ours {res['ours_tokens_per_s']} tok/s, "
              f"HF {res['hf_tokens_per_s']} tok/s, {res['speedup_vs_hf']}x", flush=True)
    return out


def main() -> int:
    """Run the sections and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short lengths and few rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 10, quick 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: a smoke test of the script
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("python -m bench.gpu: no CUDA device here", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 10)
    result = {"caveat": CAVEAT, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE, "torch": torch.__version__, "shape": SHAPE,
              "precision": "bf16 autocast (train), fp32 (generation)", "machine": machine_info(torch_details=True),
              "train": []}
    plan = [(256, 8)] if args.quick else [(1024, 16), (2048, 8)]
    for length, batch in plan:
        result["train"].append(train_section(length, batch, rounds, naive=True, compiled=not args.no_compile))
    result["generation"] = generation_section(64 if args.quick else 1023, [1, 8], 2 if args.quick else 3)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n", make_parents=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
