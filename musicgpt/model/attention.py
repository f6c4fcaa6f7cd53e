"""Causal self-attention with relative-position logits (Music Transformer), computed block by block.

Logits are (Q Kᵀ + Srel) / √D with Srel[i, j] = q_i · e[clip(i - j)], one learned embedding per
distance 0 … R-1 (R = max_relative_distance; longer distances share the embedding of R-1).

Memory-efficient skewing: for a block of Bq queries whose keys span n positions, the relative
scores M = q Eᵀ are computed against the embeddings of distances n-1 … 0 (and a zero row for
distance -1). The table is stored in descending distance order, so that is a contiguous slice.
Row b of Srel is row b of M shifted left by Bq-1-b columns: a strided *view* of M (row stride
n), the pad-reshape-slice of the paper without the copies. No O(L²·D) tensor is ever formed.

Three implementations compute the same thing:
- the fused CPU kernel (`musicgpt/model/csrc/relative_attention.cpp`, built once on first use by
  `musicgpt.model._relative_kernel`): per (batch, head, block of queries) two GEMMs, then skew, mask and
  softmax (and in backward its gradient and the skew's adjoint) in one pass over a block that stays
  in cache; it computes in float32 (bfloat16 inputs are upcast: at head_dim 32, bf16 GEMMs measured
  no faster), without attention dropout. Used whenever it builds; MUSICGPT_ATTENTION_KERNEL=eager
  or =native forces either choice.
- on CUDA, `biased_sdpa`: Srel of the whole window as an additive bias (B, H, Lq, Lk) into PyTorch's
  fused scaled_dot_product_attention (its memory-efficient kernel takes a bias and its gradient).
  GPUs have the memory for one layer's bias and gain more from one fused launch than from blocks.
  MUSICGPT_ATTENTION_KERNEL=sdpa forces it on any device (tests run it on the CPU).
- the eager PyTorch path below (`_RelativeAttention`), for everything else: no compiler, float64,
  attention dropout, other devices. Its forward keeps only inputs and output;
  its backward recomputes each block's probabilities. Work is laid out heads first, (H·B, L, D), so
  the relative GEMM of one head covers the whole batch.
On the CPU paths peak memory is one block of logits instead of every layer's (B, H, L, L) probabilities;
the CUDA path keeps one (B, H, L, L) bias per layer for the backward (bench/gpu.py: 2.2x the peak of
absolute attention at L=1024, against 5.1x for a naive port).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgpt.model import _relative_kernel

BLOCK = 64  # queries per block: GEMMs stay efficient, a block's logits stay a few MB


def skewed_view(m: Tensor, n: int) -> Tensor:
    """Srel (N, Bq, n) as a view of relative scores m (N, Bq, n') whose columns are distances n-1, n-2, ….

    With n' = n + 1 (distances down to -1) the view does not alias, so it can be written through
    (the backward does); with n' = n its masked future entries alias the next row, fine for reads.
    """
    c, bq, width = m.shape
    return m.as_strided((c, bq, n), (m.stride(0), width - 1, 1), m.storage_offset() + bq - 1)


def relative_scores(q_rows: Tensor, rel: Tensor, n: int) -> Tensor:
    """M = q · e for distances n-1 … 0: (H, rows, n) from q_rows (H, rows, D) and rel (H, R, D)."""
    r = rel.shape[1]
    near = min(n, r)
    m = torch.bmm(q_rows, rel[:, r - near :].transpose(1, 2))  # (H, rows, near)
    if near < n:  # distances past R-1 all score against the embedding of R-1
        m = torch.cat([m[..., :1].expand(-1, -1, n - near), m], dim=-1)
    return m


def relative_logits(q: Tensor, rel_emb: Tensor, n_keys: int) -> Tensor:
    """Srel (B, H, Lq, Lk) by skewing, for queries at the last Lq of Lk positions (future entries unspecified)."""
    b, h, lq, d = q.shape
    if lq > n_keys:
        raise ValueError(f"{lq} queries cannot sit at the end of {n_keys} keys")
    m = relative_scores(q.transpose(0, 1).reshape(h, b * lq, d), rel_emb, n_keys)  # (H, B*Lq, Lk)
    return skewed_view(m.view(h * b, lq, n_keys), n_keys).view(h, b, lq, n_keys).transpose(0, 1)


def apply_mask_(s: Tensor, i0: int, ks: int, window: int | None) -> Tensor:
    """Mask in place the logits (…, Bq, n) of queries i0 … i0+Bq-1 over keys ks …: future keys and keys out of the window."""
    bq, n = s.shape[-2:]
    c0 = max(0, i0 + 1 - ks)  # first column that can hold a future key
    if c0 < n:
        s[..., c0:].masked_fill_(_band(bq, n - c0, i0 - ks - c0, None, s.device), float("-inf"))
    if window is not None:
        c1 = min(n, i0 + bq - window - ks)  # keys at or before i0+Bq-1-window can be too far
        if c1 > 0:
            s[..., :c1].masked_fill_(_band(bq, c1, i0 - ks, window, s.device), float("-inf"))
    return s


@functools.lru_cache(maxsize=64)
def _band(rows: int, cols: int, shift: int, window: int | None, device: torch.device) -> Tensor:
    """Bool mask (rows, cols): True where key column c is after query row r (c > r + shift), or, with a
    window, at least `window` before it (r + shift - c >= window). Cached: blocks repeat the same few.

    Built outside inference mode even when first asked for inside it (generating): a cached inference
    tensor could not be saved for a later backward (biased_sdpa's masked_fill keeps its mask)."""
    with torch.inference_mode(False):
        r = torch.arange(rows, device=device)[:, None] + shift
        c = torch.arange(cols, device=device)[None, :]
        return c > r if window is None else r - c >= window


def _key_range(i0: int, bq: int, window: int | None) -> tuple[int, int]:
    """Keys that queries i0 … i0+Bq-1 can see: [ks, ke)."""
    ke = i0 + bq
    ks = 0 if window is None else max(0, i0 - window + 1)
    return ks, ke


def _heads_first(x: Tensor) -> Tensor:
    """(B, H, L, D) -> (H*B, L, D); a view when x is stored heads-first (as the model and cache store it)."""
    b, h, l, d = x.shape
    return x.transpose(0, 1).reshape(h * b, l, d)


def _extended_table(rel: Tensor, n_max: int) -> Tensor:
    """Embeddings of distances n_max-1 … 0 and a zero row for distance -1: (H, n_max+1, D).

    Distances past R-1 repeat the embedding of R-1. Rows f-n … f (f = n_max) are the distances
    n-1 … -1 that a block with n keys needs.
    """
    h, r, d = rel.shape
    parts = [rel[:, max(0, r - n_max) :], rel.new_zeros(h, 1, d)]
    if n_max > r:
        parts.insert(0, rel[:, :1].expand(h, n_max - r, d))
    return torch.cat(parts, dim=1)


def _fold_table_grad(d_table: Tensor, r: int) -> Tensor:
    """Gradient wrt the (H, R, D) embeddings from the gradient wrt `_extended_table`'s output."""
    n_max = d_table.shape[1] - 1
    if n_max <= r:
        out = d_table.new_zeros(d_table.shape[0], r, d_table.shape[2])
        out[:, r - n_max :] = d_table[:, :n_max]
        return out
    out = d_table[:, n_max - r : n_max].clone()
    out[:, 0] += d_table[:, : n_max - r].sum(1)
    return out


class _Scratch(threading.local):
    """Reusable per-thread CPU buffers: a fresh multi-MB tensor per block costs its page faults every time."""

    def __init__(self):
        self.buffers: dict = {}

    def take(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous tensor of `shape` (contents undefined), valid until the next take of `name`."""
        if like.device.type != "cpu":  # the CUDA caching allocator already recycles memory
            return like.new_empty(shape)
        numel = math.prod(shape)
        key = (name, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            # A normal tensor even under torch.inference_mode(): an inference tensor made there could not be
            # written in place once a later call runs outside it (under no_grad, say); a normal one can be
            # written either way.
            with torch.inference_mode(False):
                buf = self.buffers[key] = torch.empty(numel, dtype=like.dtype)
        return buf[:numel].view(shape)


_scratch = _Scratch()


def release_scratch() -> None:
    """Free this thread's attention scratch buffers (they are kept for reuse between calls)."""
    _scratch.buffers.clear()


def _block_logits(qs: Tensor, k_t: Tensor, table_t: Tensor | None, h: int, a0: int, a1: int, i0: int,
                  window: int | None, fresh: bool = False) -> tuple[Tensor, Tensor | None, Tensor, int, int]:
    """Masked logits (H·B, Bq, n) of queries a0 … a1-1 (at key position i0 …), in scratch memory.

    k_t (H·B, D, Lk) and table_t (H, D, f+1) come transposed: GEMMs run faster on them. Returns
    (logits, m, q_rows, ks, ke); m (H, B·Bq, n+1) holds the relative scores for distances n-1 … -1,
    one column wider than the logits so that its skewed view does not alias (the backward writes
    the logits' gradient through it). Every GEMM writes a contiguous result: MKL's batched path
    needs that, and softmax wants contiguous rows. fresh=True allocates instead of using scratch.
    """
    take = (lambda name, shape, like: like.new_empty(shape)) if fresh else _scratch.take
    qb = qs[:, a0:a1]  # (HB, Bq, D), already scaled
    hb, bq, d = qb.shape
    ks, ke = _key_range(i0, bq, window)
    n = ke - ks
    q_rows = qb.reshape(h, hb // h * bq, d)  # (H, B*Bq, D): one GEMM per head against the table
    s = torch.bmm(qb, k_t[:, :, ks:ke], out=take("s", (hb, bq, n), qs))  # (HB, Bq, n)
    m = None
    if table_t is not None:
        f = table_t.shape[2] - 1
        m = torch.bmm(q_rows, table_t[:, :, f - n :], out=take("m", (h, hb // h * bq, n + 1), qs))
        s += skewed_view(m.view(hb, bq, n + 1), n)
    return apply_mask_(s, i0, ks, window), m, q_rows, ks, ke


def _dropout_mask(shape, p: float, seed: int, h0: int, b: int, like: Tensor) -> Tensor:
    """Reproducible keep-mask (H·B rows of heads h0 …) scaled by 1/(1-p), one seed per head: the
    backward regenerates it, and it does not depend on how heads are split over threads."""
    keep = _scratch.take("keep", shape, like)
    gen = torch.Generator(device=like.device)
    for j in range(shape[0] // b):
        gen.manual_seed(seed + h0 + j)
        keep[j * b : (j + 1) * b].bernoulli_(1.0 - p, generator=gen)
    return keep.div_(1.0 - p)


def _blocks(lq: int, lk: int, block: int):
    """(a0, a1, i0): query rows a0 … a1-1 sit at key positions i0 … ."""
    offset = lk - lq
    for a0 in range(0, lq, block):
        a1 = min(lq, a0 + block)
        yield a0, a1, offset + a0


def _accumulate(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """acc += a @ b through scratch memory (acc is a strided slice, fp32 under bf16 inputs)."""
    prod = torch.bmm(a, b, out=_scratch.take("ab", (a.shape[0], a.shape[1], b.shape[2]), a))
    if prod.dtype != acc.dtype:  # convert in scratch too: a fresh temporary would page-fault
        prod = _scratch.take("ab_acc", prod.shape, acc).copy_(prod)
    acc += prod


# ---- heads split over threads ----
# Each block is a few dozen small ops; run with OpenMP inside every op, that is a thread barrier per
# op, and a shared machine that deschedules one thread stalls them all (measured: 5-10x slower
# under load). Instead the heads are split into groups, one per intra-op thread, and each group
# runs its whole block loop on a worker thread whose ops are single-threaded: no barrier until the end.

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0  # a forked child inherits the pool object but not its threads
_pool_lock = threading.Lock()
PARALLEL_MIN_WORK = 1 << 20  # H·B·Lq·Lk below which one thread is faster (decode steps, tiny tests)


def _workers(n: int) -> ThreadPoolExecutor:
    """n worker threads whose torch ops run single-threaded."""
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool_size < n or _pool_pid != os.getpid():
            if _pool is not None and _pool_pid == os.getpid():
                _pool.shutdown(wait=False)
            threads = torch.get_num_threads()
            _pool = ThreadPoolExecutor(n, thread_name_prefix="musicgpt-attention",
                                       initializer=torch.set_num_threads, initargs=(1,))
            started = threading.Barrier(n + 1, timeout=60)
            for _ in range(n):  # start every worker now (each blocks until all have started)
                _pool.submit(started.wait)
            started.wait()
            torch.set_num_threads(threads)  # the initializer also reset torch's process-wide default
            _pool_size, _pool_pid = n, os.getpid()
        return _pool


def _over_head_groups(fn, h: int, work: int) -> None:
    """Call fn(h0, h1) for groups of heads covering 0 … h-1, in parallel when worth it."""
    parts = min(torch.get_num_threads(), h)
    if parts <= 1 or work < PARALLEL_MIN_WORK or torch.compiler.is_compiling():
        fn(0, h)
        return
    bounds = [(h * i // parts, h * (i + 1) // parts) for i in range(parts)]

    def run(h0, h1):
        with torch.no_grad():  # grad mode is per thread: the workers must not record a graph
            fn(h0, h1)

    futures = [_workers(parts).submit(run, h0, h1) for h0, h1 in bounds]
    for f in futures:
        f.result()


def _forward_heads(h0, h1, b, qs, k_t, v_h, table_t, out, window, dropout_p, block, seed):
    """The block loop of the forward pass for heads h0 … h1-1."""
    rows = slice(h0 * b, h1 * b)
    qs, k_t, v_h, out = qs[rows], k_t[rows], v_h[rows], out[rows]
    table_t = table_t[h0:h1] if table_t is not None else None
    hb, lq, d = qs.shape
    for n_blk, (a0, a1, i0) in enumerate(_blocks(lq, k_t.shape[2], block)):
        s, _, _, ks, ke = _block_logits(qs, k_t, table_t, h1 - h0, a0, a1, i0, window)
        p = torch._softmax(s, -1, False, out=s)  # (HB, Bq, n), in place
        if dropout_p > 0:
            p.mul_(_dropout_mask(p.shape, dropout_p, seed + 1_000_003 * n_blk, h0, b, qs))
        o = torch.bmm(p, v_h[:, ks:ke], out=_scratch.take("o", (hb, a1 - a0, d), qs))
        out[:, a0:a1] = o


def _backward_heads(h0, h1, b, qs, k_h, k_t, v_t, table, table_t, do, delta, dq, dk, dv, d_table,
                    window, dropout_p, block, seed, scale):
    """The block loop of the backward pass for heads h0 … h1-1 (writes their slices of the gradients)."""
    rows = slice(h0 * b, h1 * b)
    qs, k_h, k_t, v_t, do, dq, dk, dv = (x[rows] for x in (qs, k_h, k_t, v_t, do, dq, dk, dv))
    delta = delta[rows] if delta is not None else None
    if table is not None:
        table, table_t, d_table = table[h0:h1], table_t[h0:h1], d_table[h0:h1]
    h, lk, d = h1 - h0, k_h.shape[1], qs.shape[2]
    for n_blk, (a0, a1, i0) in enumerate(_blocks(qs.shape[1], lk, block)):
        s, m, q_rows, ks, ke = _block_logits(qs, k_t, table_t, h, a0, a1, i0, window)
        p = torch._softmax(s, -1, False, out=s)  # (HB, Bq, n)
        dob = do[:, a0:a1]
        hb, bq, n = p.shape
        ds = torch.bmm(dob, v_t[:, :, ks:ke], out=_scratch.take("ds", p.shape, qs))  # dP, then d logits
        if dropout_p > 0:
            keep = _dropout_mask(p.shape, dropout_p, seed + 1_000_003 * n_blk, h0, b, qs)
            ds.mul_(keep)
            keep.mul_(p)  # the dropped-out probabilities, for dV
            _accumulate(dv[:, ks:ke], keep.transpose(1, 2), dob)
            ds.sub_((ds * p).sum(-1, keepdim=True))
        else:
            _accumulate(dv[:, ks:ke], p.transpose(1, 2), dob)
            ds.sub_(delta[:, a0:a1])
        ds.mul_(p)  # d logits (HB, Bq, n)
        dqb = torch.bmm(ds, k_h[:, ks:ke])  # (HB, Bq, D)
        _accumulate(dk[:, ks:ke], ds.transpose(1, 2), qs[:, a0:a1])
        if m is not None:  # m becomes d(relative scores): the adjoint of the skewed view
            skewed_view(m.view(hb, bq, n + 1), n).copy_(ds)
            flat = m.view(hb, -1)
            flat[:, : bq - 1] = 0  # entries that no logit covers
            flat[:, bq - 1 + bq * n :] = 0
            # m (H, B*Bq, n+1) pairs with table rows of distances n-1 … -1 (the last is zero)
            dqb.view(h, -1, d).baddbmm_(m, table[:, lk - n :])
            _accumulate(d_table[:, lk - n :], m.transpose(1, 2), q_rows)
        dq[:, a0:a1] = dqb.mul_(scale)


class _RelativeAttention(torch.autograd.Function):
    """Flash-style attention with relative logits: saves inputs and output, recomputes blocks in backward."""

    @staticmethod
    def forward(ctx, q, k, v, rel, window, dropout_p, block, seed):
        b, h, lq, d = q.shape
        lk = k.shape[2]
        dtype = q.dtype
        table_t = _extended_table(rel.to(dtype), lk).transpose(1, 2).contiguous() if rel is not None else None
        qs = _heads_first(q) * (1.0 / math.sqrt(d))  # (HB, Lq, D)
        k_t = _heads_first(k).transpose(1, 2).contiguous()  # (HB, D, Lk)
        v_h = _heads_first(v)  # (HB, Lk, D)
        out = q.new_empty(h * b, lq, d)
        with torch.autocast(q.device.type, enabled=False):
            _over_head_groups(lambda h0, h1: _forward_heads(h0, h1, b, qs, k_t, v_h, table_t, out, window,
                                                            dropout_p, block, seed), h, h * b * lq * lk)
        ctx.save_for_backward(q, k, v, rel, out)
        ctx.window, ctx.dropout_p, ctx.block, ctx.seed = window, dropout_p, block, seed
        return out.view(h, b, lq, d).transpose(0, 1)  # (B, H, Lq, D), stored heads-first

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel, out = ctx.saved_tensors
        window, dropout_p, block, seed = ctx.window, ctx.dropout_p, ctx.block, ctx.seed
        b, h, lq, d = q.shape
        lk = k.shape[2]
        dtype = q.dtype
        scale = 1.0 / math.sqrt(d)
        table = _extended_table(rel.to(dtype), lk) if rel is not None else None  # (H, Lk+1, D)
        table_t = table.transpose(1, 2).contiguous() if rel is not None else None
        qs = _heads_first(q) * scale
        k_h, v_h = _heads_first(k), _heads_first(v)
        k_t, v_t = k_h.transpose(1, 2).contiguous(), v_h.transpose(1, 2).contiguous()  # (HB, D, Lk)
        do = _heads_first(grad_out.to(dtype))  # (HB, Lq, D)
        acc = torch.promote_types(dtype, torch.float32)  # gradients summed over blocks: at least fp32
        dq = torch.empty_like(qs)
        dk = torch.zeros(k_h.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v_h.shape, dtype=acc, device=v.device)
        d_table = torch.zeros(table.shape, dtype=acc, device=q.device) if rel is not None else None
        delta = None
        if dropout_p == 0:
            delta = (do.to(acc) * out.to(acc)).sum(-1, keepdim=True).to(dtype)  # (HB, Lq, 1) = rowsum(dP ∘ P)
        with torch.autocast(q.device.type, enabled=False):
            _over_head_groups(lambda h0, h1: _backward_heads(
                h0, h1, b, qs, k_h, k_t, v_t, table, table_t, do, delta, dq, dk, dv, d_table,
                window, dropout_p, block, seed, scale), h, h * b * lq * lk)
        grads = [x.view(h, b, *x.shape[1:]).transpose(0, 1) for x in (dq, dk, dv)]
        drel = _fold_table_grad(d_table, rel.shape[1]).to(rel.dtype) if rel is not None else None
        return grads[0], grads[1].to(k.dtype), grads[2].to(v.dtype), drel, None, None, None, None


class _FusedRelativeAttention(torch.autograd.Function):
    """The fused CPU kernel: saves inputs, output and each row's log-sum-exp; the backward recomputes blocks.

    The kernel computes in float32; bfloat16 inputs (autocast) are upcast on the way in, which measured
    faster than bf16 GEMMs at head_dim 32, and saved as they came (no extra memory).
    """

    @staticmethod
    def forward(ctx, q, k, v, rel, window, block):
        out, lse = _relative_kernel.forward(*_float32_rows(q, k, v, rel), window, block)
        out = out.to(q.dtype)  # (B, H, Lq, D), stored (B, Lq, H, D)
        ctx.save_for_backward(q, k, v, rel, out, lse)
        ctx.window, ctx.block = window, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel, out, lse = ctx.saved_tensors
        q32, k32, v32, rel32, grad32, out32 = _float32_rows(q, k, v, rel, grad_out, out)
        dq, dk, dv, drel = _relative_kernel.backward(grad32, q32, k32, v32, rel32, out32, lse, ctx.window, ctx.block)
        drel = drel.to(rel.dtype) if rel is not None else None
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), drel, None, None


def _float32_rows(*tensors: Tensor | None) -> list[Tensor | None]:
    """float32 versions the kernel can read (rows contiguous, embeddings contiguous), copying only when needed."""
    out = []
    for x in tensors:
        if x is not None:
            x = x.float()
            x = x.contiguous() if x.dim() == 3 else _rows_contiguous(x)
        out.append(x)
    return out


def _rows_contiguous(x: Tensor) -> Tensor:
    """x itself when its last dim is contiguous and rows do not overlap (what the kernel reads), else a copy."""
    if (x.stride(-1) == 1 or x.shape[-1] == 1) and (x.stride(-2) >= x.shape[-1] or x.shape[-2] == 1):
        return x
    return x.contiguous()


def _use_kernel(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor | None, dropout_p: float) -> bool:
    """Whether the fused kernel covers this call (and builds/loads on this machine)."""
    if dropout_p > 0 or q.device.type != "cpu":
        return False
    if q.dtype not in (torch.float32, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    if rel_emb is not None and (rel_emb.device.type != "cpu" or not rel_emb.dtype.is_floating_point):
        return False
    return _relative_kernel.load()


def _use_biased_sdpa(q: Tensor) -> bool:
    """Whether the SDPA-with-bias path takes this call: by default on CUDA, anywhere when forced."""
    m = _relative_kernel.mode()
    return m == "sdpa" or (q.device.type == "cuda" and m == "auto")


@functools.lru_cache(maxsize=16)
def _blocked(lq: int, lk: int, window: int | None, device: torch.device) -> Tensor:
    """Bool (Lq, Lk): True where query i (at key position Lk-Lq+i) may not see key j (outside inference mode, as _band)."""
    future = _band(lq, lk, lk - lq, None, device)
    if window is None:
        return future
    with torch.inference_mode(False):
        return future | _band(lq, lk, lk - lq, window, device)


def biased_sdpa(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor | None, *, window: int | None = None,
                dropout_p: float = 0.0) -> Tensor:
    """Causal relative attention (B, H, Lq, D) as fused SDPA over an additive bias Srel/√D (B, H, Lq, Lk)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    if lq > lk:
        raise ValueError(f"{lq} queries cannot sit at the end of {lk} keys")
    blocked = _blocked(lq, lk, window, q.device)  # (Lq, Lk)
    if rel_emb is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~blocked, dropout_p=dropout_p)
    table = _extended_table(rel_emb.to(q.dtype), lk)  # (H, Lk+1, D): distances Lk-1 ... -1
    m = torch.matmul(q * (1.0 / math.sqrt(d)), table.unsqueeze(0).transpose(-1, -2))  # (B, H, Lq, Lk+1)
    bias = skewed_view(m.view(b * h, lq, lk + 1), lk).view(b, h, lq, lk)  # (B, H, Lq, Lk), a view of m
    bias = bias.masked_fill(blocked, float("-inf"))  # (B, H, Lq, Lk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)


class _NoCtx:
    """Stands in for autograd's ctx when no gradient is needed."""

    def save_for_backward(self, *tensors):
        pass


def relative_attention(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor | None, *, window: int | None = None,
                       dropout_p: float = 0.0, block: int = BLOCK) -> Tensor:
    """Causal attention (B, H, Lq, D); q are the last Lq of the Lk positions of k, v; rel_emb (H, R, D) or None.

    Tensors stored heads-first ((H, B, L, D) memory seen through .transpose(0, 1)) avoid copies.
    """
    if window is not None and window < 1:
        raise ValueError(f"attention window must be at least 1, got {window}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, rel_emb))
    if _use_biased_sdpa(q):
        return biased_sdpa(q, k, v, rel_emb, window=window, dropout_p=dropout_p)
    if _use_kernel(q, k, v, rel_emb, dropout_p):
        if needs_grad:
            return _FusedRelativeAttention.apply(q, k, v, rel_emb, window, block)
        with torch.no_grad():
            return _FusedRelativeAttention.forward(_NoCtx(), q, k, v, rel_emb, window, block)
    seed = int(torch.randint(0, 2**61, (1,)).item()) if dropout_p > 0 else 0
    if needs_grad:
        return _RelativeAttention.apply(q, k, v, rel_emb, window, dropout_p, block, seed)
    with torch.no_grad():
        return _RelativeAttention.forward(_NoCtx(), q, k, v, rel_emb, window, dropout_p, block, seed)


def attention_probs(q: Tensor, k: Tensor, rel_emb: Tensor | None, *, window: int | None = None) -> Tensor:
    """The full attention probabilities (B, H, Lq, Lk), materialized and detached (for analysis and arcs)."""
    b, h, lq, d = q.shape
    lk = k.shape[2]
    with torch.no_grad():
        qs = _heads_first(q) * (1.0 / math.sqrt(d))
        table_t = _extended_table(rel_emb.to(q.dtype), lk).transpose(1, 2) if rel_emb is not None else None
        s, _, _, ks, _ = _block_logits(qs, _heads_first(k).transpose(1, 2), table_t, h, 0, lq, lk - lq, window,
                                       fresh=True)  # one block of every query: too big to keep as scratch
        p = torch._softmax(s, -1, False, out=s)  # (HB, Lq, Lk - ks)
        if ks > 0:
            p = torch.nn.functional.pad(p, (ks, 0))
    return p.view(h, b, lq, lk).transpose(0, 1)
