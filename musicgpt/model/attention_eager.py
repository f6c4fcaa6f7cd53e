"""The eager PyTorch path of relative attention (musicgpt.model.attention): flash-style, block by block.

For everything the fused CPU kernel does not cover: no compiler, float64, attention dropout, other
devices. Its forward keeps only inputs and output; its backward recomputes each block's probabilities.
Work is laid out heads first, (H·B, L, D), so the relative GEMM of one head covers the whole batch, and
the heads are split over worker threads (see below). Blocks live in per-thread scratch buffers.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from musicgpt.model.skew import _extended_table, _fold_table_grad, _heads_first, _key_range, apply_mask_, skewed_view

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
