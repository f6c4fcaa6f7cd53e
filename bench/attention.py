"""Relative attention speed and memory against PyTorch's SDPA (absolute positions) and a naive port.
Writes bench/results/attention.json.

    python -m bench.attention             # about 10-15 minutes on 2 busy cores
    python -m bench.attention --quick     # a smoke run at short lengths

Train step = forward, backward and AdamW on a batch of 4, `small` preset shape (6 layers, d_model
256, 8 heads, d_ff 1024), fp32 unless marked, dropout 0 unless marked. Contenders:
  absolute       GPTConfig(position="absolute"): GPT-2 learned positions, F.scaled_dot_product_attention
                 (is_causal, its fused flash kernel on CPU)
  relative       position="relative": musicgpt.model.attention through its fused C++ kernel
                 (musicgpt/model/csrc/relative_attention.cpp, built once and cached; bf16 is upcast inside)
  relative_eager the same model on musicgpt.model.attention's eager PyTorch path (MUSICGPT_ATTENTION_KERNEL=eager:
                 what runs where the kernel cannot be built)
  naive          the same model with gwinndr/MusicTransformer-Pytorch-style attention patched in:
                 Q·Erᵀ materialized (B, H, L, L), skewed by pad+reshape, everything through autograd
Every comparison interleaves its contenders round by round in this one process and reports the
median of per-round ratios: the machine's speed drifts 2-4x within minutes (other jobs share the
cores), so absolute seconds from different moments do not compare, ratios from one round do.
Sections also record each step's CPU seconds of this process (time.process_time) and their
ratios: with one thread that is the work done, undisturbed by descheduling; with more threads it
also counts OpenMP threads spinning at barriers, so there wall ratios are the figure.
Peak memory is the peak resident set (VmHWM) of a fresh child process over one warm-up step and
one measured step, minus its resident set before the first step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import musicgpt.model.gpt as model_module
from bench.machine import machine_info
from musicgpt._io import atomic_write_text
from musicgpt.model import relative_kernel
from musicgpt.model.gpt import GPTConfig, MusicGPT

ROOT = Path(__file__).resolve().parents[1]

CAVEAT = ("CPU only (GPU figures: bench/gpu.py). The machine's speed drifts 2-4x "
          "within minutes (other jobs share its 2 cores; load averages are recorded): compare the ratios of "
          "runs interleaved in this process, not absolute seconds across runs or machines.")
BATCH = 4


def naive_relative_attention(q, k, v, rel, *, window=None, dropout_p=0.0, block=None):
    """gwinndr-style relative attention: materialize Q·Erᵀ, skew by pad + reshape, all through autograd."""
    if window is not None or q.shape[2] != k.shape[2]:
        raise NotImplementedError("the naive baseline covers full causal self-attention only")
    b, h, n, d = q.shape
    r = rel.shape[1]
    e = rel[:, r - n :] if n <= r else torch.cat([rel[:, :1].expand(-1, n - r, -1), rel], 1)  # distances n-1 … 0
    qe = torch.matmul(q, e.transpose(1, 2).unsqueeze(0))  # (B, H, L, L)
    srel = F.pad(qe, (1, 0)).reshape(b, h, n + 1, n)[:, :, 1:, :]  # the paper's skewing
    logits = (torch.matmul(q, k.transpose(-1, -2)) + srel) / math.sqrt(d)
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
    p = torch.softmax(logits.masked_fill(causal, float("-inf")), dim=-1)
    return torch.matmul(F.dropout(p, dropout_p), v)


@contextlib.contextmanager
def attention_impl(name: str):
    """Run the model with the naive attention patched in ('naive'), or on the eager path ('eager')."""
    if name == "eager":
        saved_mode = os.environ.get("MUSICGPT_ATTENTION_KERNEL")
        os.environ["MUSICGPT_ATTENTION_KERNEL"] = "eager"
        try:
            yield
        finally:
            if saved_mode is None:
                del os.environ["MUSICGPT_ATTENTION_KERNEL"]
            else:
                os.environ["MUSICGPT_ATTENTION_KERNEL"] = saved_mode
        return
    if name != "naive":
        yield
        return
    saved = model_module.relative_attention
    model_module.relative_attention = naive_relative_attention
    try:
        yield
    finally:
        model_module.relative_attention = saved


class Contender:
    """One model + optimizer + input; `step()` times one training step."""

    def __init__(self, name: str, length: int, position: str, impl: str = "ours", attn_dropout: float = 0.0,
                 bf16: bool = False, compile: bool = False):
        torch.manual_seed(0)
        cfg = GPTConfig.preset("small", position=position, n_ctx=length, max_relative_distance=length,
                               dropout=0.0, attn_dropout=attn_dropout)
        self.name, self.impl, self.bf16 = name, impl, bf16
        self.model = MusicGPT(cfg).train()
        self.forward = torch.compile(self.model) if compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.x = torch.randint(0, cfg.vocab_size, (BATCH, length + 1), generator=torch.Generator().manual_seed(0))

    def step(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one training step."""
        t, c = time.perf_counter(), time.process_time()
        with attention_impl(self.impl):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.forward(self.x[:, :-1], targets=self.x[:, 1:]).loss
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        self.opt.step()
        return time.perf_counter() - t, time.process_time() - c


def interleave(contenders: list, rounds: int, label: str) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall, CPU) seconds per round for each contender, run one after another inside each round."""
    for c in contenders:  # warm-up: allocations, optimizer state, compilation
        c.step()
    times = {c.name: [] for c in contenders}
    cpu = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders:
            wall, used = c.step()
            times[c.name].append(round(wall, 4))
            cpu[c.name].append(round(used, 4))
        print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
              flush=True)
    return times, cpu


def ratio(times: dict, num: str, den: str) -> float:
    """Median over rounds of num/den measured in the same round."""
    return round(statistics.median(a / b for a, b in zip(times[num], times[den])), 3)


def summary(times: dict, cpu: dict | None = None) -> dict:
    out = {k: {"median_s": round(statistics.median(v), 4), "min_s": min(v), "rounds_s": v} for k, v in times.items()}
    for k, v in (cpu or {}).items():
        out[k]["cpu_rounds_s"] = v
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def train_step_section(length: int, rounds: int, threads: int, naive: bool) -> dict:
    torch.set_num_threads(threads)
    contenders = [Contender("absolute", length, "absolute"), Contender("relative", length, "relative"),
                  Contender("relative_eager", length, "relative", impl="eager")]
    if naive:
        contenders.append(Contender("naive", length, "relative", impl="naive"))
    load_start = load_average()
    times, cpu = interleave(contenders, rounds, f"train step L={length} threads={threads}")
    out = {"length": length, "batch": BATCH, "threads": threads, "dtype": "float32", "attn_dropout": 0.0,
           "load_average": {"start": load_start, "end": load_average()},
           "seconds": summary(times, cpu), "relative_over_absolute": ratio(times, "relative", "absolute"),
           "relative_eager_over_absolute": ratio(times, "relative_eager", "absolute"),
           "relative_over_absolute_cpu": ratio(cpu, "relative", "absolute"),
           "relative_eager_over_absolute_cpu": ratio(cpu, "relative_eager", "absolute")}
    if naive:
        out["naive_over_absolute"] = ratio(times, "naive", "absolute")
        out["naive_over_relative"] = ratio(times, "naive", "relative")
    return out


def dropout_section(length: int, rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    contenders = [Contender("absolute", length, "absolute"), Contender("absolute_dropout", length, "absolute", attn_dropout=0.1),
                  Contender("relative", length, "relative"), Contender("relative_dropout", length, "relative", attn_dropout=0.1)]
    times, _ = interleave(contenders, rounds, f"attention dropout L={length}")
    return {"length": length, "threads": threads, "attn_dropout": 0.1, "seconds": summary(times),
            "absolute_dropout_over_absolute": ratio(times, "absolute_dropout", "absolute"),
            "relative_dropout_over_relative": ratio(times, "relative_dropout", "relative"),
            "relative_dropout_over_absolute_dropout": ratio(times, "relative_dropout", "absolute_dropout"),
            "note": "with dropout_p > 0 PyTorch's CPU SDPA leaves its flash kernel for the math path; relative "
                    "attention with dropout runs musicgpt's eager path (the fused kernel has no dropout)"}


def bf16_section(length: int, rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    contenders = [Contender("absolute_fp32", length, "absolute"), Contender("relative_fp32", length, "relative"),
                  Contender("absolute_bf16", length, "absolute", bf16=True),
                  Contender("relative_bf16", length, "relative", bf16=True),
                  Contender("relative_bf16_eager", length, "relative", impl="eager", bf16=True)]
    load_start = load_average()
    times, cpu = interleave(contenders, rounds, f"bf16 autocast L={length}")
    return {"length": length, "threads": threads, "autocast": "torch.autocast('cpu', dtype=torch.bfloat16)",
            "load_average": {"start": load_start, "end": load_average()},
            "seconds": summary(times, cpu),
            "relative_over_absolute_bf16": ratio(times, "relative_bf16", "absolute_bf16"),
            "relative_eager_over_absolute_bf16": ratio(times, "relative_bf16_eager", "absolute_bf16"),
            "relative_over_absolute_bf16_cpu": ratio(cpu, "relative_bf16", "absolute_bf16"),
            "absolute_bf16_over_fp32": ratio(times, "absolute_bf16", "absolute_fp32"),
            "relative_bf16_over_fp32": ratio(times, "relative_bf16", "relative_fp32")}


def compile_section(length: int, rounds: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    compile_s = {}
    contenders = []
    for name, position, comp in (("absolute", "absolute", False), ("relative", "relative", False),
                                 ("absolute_compiled", "absolute", True), ("relative_compiled", "relative", True)):
        c = Contender(name, length, position, compile=comp)
        if comp:
            compile_s[name] = round(c.step()[0], 1)  # first call compiles
        contenders.append(c)
    times, _ = interleave(contenders, rounds, f"torch.compile L={length}")
    return {"length": length, "threads": threads, "first_step_with_compilation_s": compile_s, "seconds": summary(times),
            "note": "under torch.compile the fused kernel runs inside the compiled graph as two custom ops "
                    "(fake kernels registered); inductor compiles the rest of the model",
            "relative_over_absolute_eager": ratio(times, "relative", "absolute"),
            "relative_over_absolute_compiled": ratio(times, "relative_compiled", "absolute_compiled"),
            "relative_compiled_over_relative": ratio(times, "relative_compiled", "relative"),
            "absolute_compiled_over_absolute": ratio(times, "absolute_compiled", "absolute")}


def attention_only_section(length: int, rounds: int, threads: int) -> dict:
    """One layer's attention op alone, forward + backward: SDPA vs ours vs naive."""
    torch.set_num_threads(threads)
    h, d = 8, 32
    g = torch.Generator().manual_seed(0)
    # ours reads q, k, v stored heads-first, as the model hands them over
    qkv = [torch.randn(h, BATCH, length, d, generator=g).transpose(0, 1).requires_grad_() for _ in range(3)]
    std = [t.detach().contiguous().requires_grad_() for t in qkv]
    rel = torch.randn(h, length, d, generator=g).mul_(0.1).requires_grad_()

    def run(f, tensors):
        y = f(tensors)
        y.backward(torch.ones_like(y))

    def eager(t):
        with attention_impl("eager"):
            return model_module.relative_attention(*t, rel)

    fs = {"sdpa_absolute": lambda: run(lambda t: F.scaled_dot_product_attention(*t, is_causal=True), std),
          "relative": lambda: run(lambda t: model_module.relative_attention(*t, rel), qkv),
          "relative_eager": lambda: run(eager, qkv),
          "naive": lambda: run(lambda t: naive_relative_attention(*t, rel), std)}
    with torch.no_grad():  # the relative implementations agree
        b = naive_relative_attention(*std, rel)
        max_diff = (model_module.relative_attention(*qkv, rel) - b).abs().max().item()
        max_diff_eager = (eager(qkv) - b).abs().max().item()
    for f in fs.values():
        f()
    times = {k: [] for k in fs}
    cpu = {k: [] for k in fs}
    for _ in range(rounds):
        for k, f in fs.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            times[k].append(round(time.perf_counter() - t, 4))
            cpu[k].append(round(time.process_time() - c, 4))
    print(f"  attention op L={length}: " + ", ".join(f"{k} {statistics.median(v):.3f}s" for k, v in times.items()),
          flush=True)
    return {"length": length, "batch": BATCH, "heads": h, "head_dim": d, "threads": threads,
            "seconds": summary(times, cpu), "relative_over_sdpa": ratio(times, "relative", "sdpa_absolute"),
            "relative_eager_over_sdpa": ratio(times, "relative_eager", "sdpa_absolute"),
            "relative_over_sdpa_cpu": ratio(cpu, "relative", "sdpa_absolute"),
            "naive_over_sdpa": ratio(times, "naive", "sdpa_absolute"), "max_abs_diff_relative_vs_naive": max_diff,
            "max_abs_diff_relative_eager_vs_naive": max_diff_eager}


def kernel_section() -> dict:
    """Whether the fused kernel is in use, and what its one-time build costs (timed into a fresh cache)."""
    out = {"source": "musicgpt/model/csrc/relative_attention.cpp", "mode": relative_kernel.mode(),
           "used": relative_kernel.load()}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MUSICGPT_KERNEL_CACHE=tmp)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", "from musicgpt.model import relative_kernel as k; k.build(verbose=False)"],
                              env=env, capture_output=True, text=True, cwd=ROOT)
        out["one_time_build_s"] = round(time.perf_counter() - t0, 1) if proc.returncode == 0 else None
        if proc.returncode:
            out["build_error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    out["build_command"] = " ".join(relative_kernel.compile_command(Path("OUT.so")))
    out["load_average_after_build"] = load_average()
    print(f"  kernel: {out['used']=}, one-time build {out['one_time_build_s']} s", flush=True)
    return out


# ---- peak memory, one fresh process per contender ----

def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(name: str, length: int) -> None:
    """Entry point of the child process: print the peak RSS growth of two training steps, in MB."""
    torch.set_num_threads(1)
    impl = {"naive": "naive", "relative_eager": "eager"}.get(name, "ours")
    c = Contender(name, length, "absolute" if name == "absolute" else "relative", impl=impl)
    relative_kernel.load()  # the library's own pages are not the attention's memory
    before = _rss_kb("VmRSS")
    c.step()
    c.step()
    print(json.dumps({"peak_mb": round((_rss_kb("VmHWM") - before) / 1024, 1)}))


def memory_section(length: int, names: list[str]) -> dict:
    out = {"length": length, "batch": BATCH, "method": "VmHWM - VmRSS before the first step, fresh process, 2 steps"}
    for name in names:
        proc = subprocess.run([sys.executable, "-m", "bench.attention", "--memory-child", name, str(length)],
                              capture_output=True, text=True, timeout=1800, cwd=ROOT)
        if proc.returncode:
            out[name] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  memory L={length} {name}: {out[name]}", flush=True)
    if "peak_mb" in out.get("relative", {}) and "peak_mb" in out.get("absolute", {}):
        out["relative_over_absolute"] = round(out["relative"]["peak_mb"] / out["absolute"]["peak_mb"], 3)
    if "peak_mb" in out.get("relative_eager", {}) and "peak_mb" in out.get("absolute", {}):
        out["relative_eager_over_absolute"] = round(out["relative_eager"]["peak_mb"] / out["absolute"]["peak_mb"], 3)
    if "peak_mb" in out.get("naive", {}) and "peak_mb" in out.get("absolute", {}):
        out["naive_over_absolute"] = round(out["naive"]["peak_mb"] / out["absolute"]["peak_mb"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short lengths and few rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive (gwinndr-style) baseline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attention.json")
    parser.add_argument("--memory-child", nargs=2, metavar=("NAME", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0
    rounds = args.rounds or (2 if args.quick else 5)
    length, mem_length = (256, 512) if args.quick else (1024, 2048)
    result = {"benchmark": "attention", "caveat": CAVEAT, "machine_start": machine_info(torch_details=True),
              "gpu": {"available": torch.cuda.is_available(),
                      "note": "this script measures the CPU; GPU figures: bench/gpu.py"},
              "targets": {"train_step_relative_over_absolute": 1.25, "peak_memory_relative_over_absolute_at_2048": 1.3}}
    t0 = time.perf_counter()
    print("fused kernel", flush=True)
    result["kernel"] = kernel_section()
    print("attention op alone", flush=True)
    result["attention_op"] = attention_only_section(length, rounds * 2, args.threads)
    print("train step", flush=True)
    result["train_step"] = train_step_section(length, rounds, args.threads, naive=not args.no_naive)
    if args.threads != 1:
        result["train_step_1_thread"] = train_step_section(length, rounds, 1, naive=False)
    print("attention dropout", flush=True)
    result["attention_dropout"] = dropout_section(length, max(2, rounds - 2), args.threads)
    print("bf16 autocast", flush=True)
    result["bf16_autocast"] = bf16_section(length, rounds, args.threads)
    if not args.no_compile:
        print("torch.compile", flush=True)
        result["torch_compile"] = compile_section(length, max(2, rounds - 2), args.threads)
    print("peak memory", flush=True)
    result["peak_memory"] = memory_section(mem_length, ["absolute", "relative", "relative_eager"])
    if not args.no_naive:
        result["peak_memory_naive"] = memory_section(length, ["absolute", "relative", "naive"])
    result["machine_end"] = machine_info(torch_details=True)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n", make_parents=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
