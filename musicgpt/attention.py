"""Causal self-attention with relative-position logits (Music Transformer), computed block by block.

Logits are (Q Kᵀ + Srel) / √D with Srel[i, j] = q_i · e[clip(i - j)], one learned embedding per
distance 0 … R-1 (R = max_relative_distance; longer distances share the embedding of R-1).

Memory-efficient skewing: for a block of Bq queries whose keys span n positions, the relative
scores M = q Eᵀ are computed against the n embeddings of distances n-1 … 0 (the embedding table
is stored in that descending order, so this is a contiguous slice). Row b of Srel is row b of M
shifted left by Bq-1-b columns, which is a strided *view* of M (row stride n-1): no pad, no
reshape, no copy, and no O(L²·D) tensor. Entries above the causal diagonal read garbage from
the next row; they are masked anyway.

Training goes through `_RelativeAttention`, a flash-style autograd function: the forward keeps
only its inputs and output; the backward recomputes each block's probabilities. Peak memory is
one block of logits instead of every layer's (B, H, L, L) probabilities.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BLOCK = 128  # queries per block: large enough for efficient GEMMs, small enough to stay in cache


def skewed_view(m: Tensor) -> Tensor:
    """Srel as a view of the relative scores m (B, H, Bq, n) whose columns are distances n-1 … 0."""
    b, h, bq, n = m.shape
    m = m.contiguous()
    return m.as_strided((b, h, bq, n), (h * bq * n, bq * n, n - 1, 1), m.storage_offset() + bq - 1)


def descending_embeddings(rel_emb: Tensor, n: int) -> Tensor:
    """The embeddings of distances n-1 … 0 (H, n, D), clipping distances beyond R-1."""
    r = rel_emb.shape[1]
    if n <= r:
        return rel_emb[:, r - n :]
    far = rel_emb[:, :1].expand(-1, n - r, -1)
    return torch.cat([far, rel_emb], dim=1)


def relative_scores(qb: Tensor, rel_emb: Tensor, n: int) -> Tensor:
    """M = q · e for distances n-1 … 0, (B, H, Bq, n); qb (B, H, Bq, D), rel_emb (H, R, D)."""
    b, h, bq, d = qb.shape
    r = rel_emb.shape[1]
    near = min(n, r)
    q_h = qb.transpose(0, 1).reshape(h, b * bq, d)  # heads first: one GEMM per head over the batch
    m = torch.bmm(q_h, rel_emb[:, r - near :].transpose(1, 2))  # (H, B*Bq, near)
    m = m.view(h, b, bq, near).transpose(0, 1)  # (B, H, Bq, near)
    if near < n:  # distances past R-1 all score against the embedding of R-1
        m = torch.cat([m[..., :1].expand(-1, -1, -1, n - near), m], dim=-1)
    return m.contiguous()


def relative_logits(q: Tensor, rel_emb: Tensor, n_keys: int) -> Tensor:
    """Srel (B, H, Lq, Lk) by skewing, for queries at the last Lq of Lk positions (future entries unspecified)."""
    lq = q.shape[2]
    if lq > n_keys:
        raise ValueError(f"{lq} queries cannot sit at the end of {n_keys} keys")
    m = relative_scores(q, rel_emb, n_keys)  # (B, H, Lq, Lk) columns: distances Lk-1 … 0
    # The view's row b starts at distance (Lk - Lq + b), i.e. query b sits at key index Lk - Lq + b.
    return skewed_view(m)


def apply_mask_(s: Tensor, i0: int, ks: int, window: int | None) -> Tensor:
    """Mask in place the logits of queries i0 … i0+Bq-1 over keys ks … ks+n-1: future keys and keys out of the window."""
    bq, n = s.shape[-2:]
    rows = torch.arange(i0, i0 + bq, device=s.device)[:, None]  # (Bq, 1) query positions
    c0 = max(0, i0 + 1 - ks)  # first column that can hold a future key
    if c0 < n:
        cols = torch.arange(ks + c0, ks + n, device=s.device)[None, :]
        s[..., c0:].masked_fill_(cols > rows, float("-inf"))
    if window is not None:
        c1 = min(n, i0 + bq - window - ks + 0)  # keys at or before i0+Bq-1-window can be too far
        if c1 > 0:
            cols = torch.arange(ks, ks + c1, device=s.device)[None, :]
            s[..., :c1].masked_fill_(rows - cols >= window, float("-inf"))
    return s


def _key_range(i0: int, bq: int, window: int | None) -> tuple[int, int]:
    """Keys that queries i0 … i0+Bq-1 can see: [ks, ke)."""
    ke = i0 + bq
    ks = 0 if window is None else max(0, i0 - window + 1)
    return ks, ke


def _block_logits(qb: Tensor, k: Tensor, rel: Tensor | None, i0: int, window: int | None) -> tuple[Tensor, int, int]:
    """Masked logits of one query block (B, H, Bq, n) with its key range; qb is already scaled."""
    bq = qb.shape[2]
    ks, ke = _key_range(i0, bq, window)
    s = torch.matmul(qb, k[:, :, ks:ke].transpose(-1, -2))  # (B, H, Bq, n)
    if rel is not None:
        s += skewed_view(relative_scores(qb, rel, ke - ks))
    return apply_mask_(s, i0, ks, window), ks, ke


def _dropout_mask(shape, p: float, seed: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A reproducible keep-mask scaled by 1/(1-p): the backward regenerates it from the seed."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    keep = torch.empty(shape, device=device, dtype=dtype).bernoulli_(1.0 - p, generator=gen)
    return keep.div_(1.0 - p)


def _blocks(lq: int, lk: int, block: int):
    """(a0, a1, i0): query rows a0 … a1-1 sit at key positions i0 … ."""
    offset = lk - lq
    for a0 in range(0, lq, block):
        a1 = min(lq, a0 + block)
        yield a0, a1, offset + a0


class _RelativeAttention(torch.autograd.Function):
    """Flash-style attention with relative logits: saves inputs and output, recomputes blocks in backward."""

    @staticmethod
    def forward(ctx, q, k, v, rel, window, dropout_p, block, seed):
        dtype = q.dtype
        rel_c = rel.to(dtype) if rel is not None else None
        qs = q * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Lq, D)
        out = torch.empty_like(q)
        lq, lk = q.shape[2], k.shape[2]
        with torch.autocast(q.device.type, enabled=False):
            for n_blk, (a0, a1, i0) in enumerate(_blocks(lq, lk, block)):
                s, ks, ke = _block_logits(qs[:, :, a0:a1], k, rel_c, i0, window)
                p = torch.softmax(s, dim=-1)  # (B, H, Bq, n)
                if dropout_p > 0:
                    p = p * _dropout_mask(p.shape, dropout_p, seed + n_blk, q.device, dtype)
                torch.matmul(p, v[:, :, ks:ke], out=out[:, :, a0:a1])
        ctx.save_for_backward(q, k, v, rel, out)
        ctx.window, ctx.dropout_p, ctx.block, ctx.seed = window, dropout_p, block, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel, out = ctx.saved_tensors
        window, dropout_p, block, seed = ctx.window, ctx.dropout_p, ctx.block, ctx.seed
        dtype = q.dtype
        scale = 1.0 / math.sqrt(q.shape[-1])
        rel_c = rel.to(dtype) if rel is not None else None
        qs = q * scale
        do = grad_out.to(dtype)
        lq, lk = q.shape[2], k.shape[2]
        acc = torch.promote_types(dtype, torch.float32)  # gradients summed over blocks: at least fp32
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        drel = torch.zeros(rel.shape, dtype=acc, device=rel.device) if rel is not None else None
        if dropout_p == 0:
            delta = (do.to(acc) * out.to(acc)).sum(-1, keepdim=True).to(dtype)  # (B, H, Lq, 1) = rowsum(dP ∘ P)
        with torch.autocast(q.device.type, enabled=False):
            for n_blk, (a0, a1, i0) in enumerate(_blocks(lq, lk, block)):
                qb, dob = qs[:, :, a0:a1], do[:, :, a0:a1]
                s, ks, ke = _block_logits(qb, k, rel_c, i0, window)
                p = torch.softmax(s, dim=-1)  # (B, H, Bq, n)
                vb, kb = v[:, :, ks:ke], k[:, :, ks:ke]
                dp = torch.matmul(dob, vb.transpose(-1, -2))  # (B, H, Bq, n)
                if dropout_p > 0:
                    keep = _dropout_mask(p.shape, dropout_p, seed + n_blk, q.device, dtype)
                    dv[:, :, ks:ke] += torch.matmul((p * keep).transpose(-1, -2), dob)
                    dp *= keep
                    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
                else:
                    dv[:, :, ks:ke] += torch.matmul(p.transpose(-1, -2), dob)
                    ds = dp.sub_(delta[:, :, a0:a1]).mul_(p)  # (B, H, Bq, n) d logits
                dqb = torch.matmul(ds, kb)  # (B, H, Bq, D)
                dk[:, :, ks:ke] += torch.matmul(ds.transpose(-1, -2), qb)
                if rel is not None:
                    g = _unskew(ds)  # (B, H, Bq, n) d relative scores, columns: distances n-1 … 0
                    dqb += _relative_scores_backward(g, qb, rel_c, drel)
                dq[:, :, a0:a1] = dqb * scale
        return (dq, dk.to(k.dtype), dv.to(v.dtype), drel.to(rel.dtype) if rel is not None else None,
                None, None, None, None)


def _unskew(ds: Tensor) -> Tensor:
    """The adjoint of `skewed_view`: g[b, c] = ds[b, c + b - (Bq-1)] (0 outside), (B, H, Bq, n)."""
    b, h, bq, n = ds.shape
    padded = ds.new_zeros(b, h, bq, n + bq - 1)  # Bq-1 zero columns on the left
    padded[..., bq - 1 :] = ds
    return padded.as_strided((b, h, bq, n), (h * bq * (n + bq - 1), bq * (n + bq - 1), n + bq, 1))


def _relative_scores_backward(g: Tensor, qb: Tensor, rel: Tensor, drel: Tensor) -> Tensor:
    """Gradient of `relative_scores` wrt qb (returned) and rel (accumulated into drel, fp32)."""
    b, h, bq, n = g.shape
    r = rel.shape[1]
    near = min(n, r)
    if near < n:  # the far columns all used the embedding of R-1
        g_near = g[..., n - near :].clone()
        g_near[..., 0] += g[..., : n - near].sum(-1)
    else:
        g_near = g
    g_h = g_near.transpose(0, 1).reshape(h, b * bq, near)  # (H, B*Bq, near)
    q_h = qb.transpose(0, 1).reshape(h, b * bq, -1)  # (H, B*Bq, D)
    e = rel[:, r - near :]  # (H, near, D)
    drel[:, r - near :] += torch.bmm(g_h.transpose(1, 2), q_h)
    return torch.bmm(g_h, e).view(h, b, bq, -1).transpose(0, 1)  # (B, H, Bq, D)


def relative_attention(q: Tensor, k: Tensor, v: Tensor, rel_emb: Tensor | None, *, window: int | None = None,
                       dropout_p: float = 0.0, block: int = BLOCK) -> Tensor:
    """Causal attention (B, H, Lq, D); q are the last Lq of the Lk positions of k, v; rel_emb (H, R, D) or None."""
    if window is not None and window < 1:
        raise ValueError(f"attention window must be at least 1, got {window}")
    seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_p > 0 else 0
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, rel_emb))
    if needs_grad:
        return _RelativeAttention.apply(q, k, v, rel_emb, window, dropout_p, block, seed)
    with torch.no_grad():
        return _RelativeAttention.forward(_NoCtx(), q, k, v, rel_emb, window, dropout_p, block, seed)


class _NoCtx:
    """Stands in for autograd's ctx when no gradient is needed."""

    def save_for_backward(self, *tensors):
        pass


def attention_probs(q: Tensor, k: Tensor, rel_emb: Tensor | None, *, window: int | None = None) -> Tensor:
    """The full attention probabilities (B, H, Lq, Lk), materialized (for analysis and arcs)."""
    qs = q * (1.0 / math.sqrt(q.shape[-1]))
    rel = rel_emb.to(q.dtype) if rel_emb is not None else None
    lq, lk = q.shape[2], k.shape[2]
    s, ks, _ = _block_logits(qs, k, rel, lk - lq, window)
    p = torch.softmax(s, dim=-1)  # (B, H, Lq, ke - ks)
    if ks > 0:
        p = torch.nn.functional.pad(p, (ks, 0))
    return p
