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
  `musicgpt.model.relative_kernel`): per (batch, head, block of queries) two GEMMs, then skew, mask and
  softmax (and in backward its gradient and the skew's adjoint) in one pass over a block that stays
  in cache; it computes in float32 (bfloat16 inputs are upcast: at head_dim 32, bf16 GEMMs measured
  no faster), without attention dropout. Used whenever it builds; MUSICGPT_ATTENTION_KERNEL=eager
  or =native forces either choice.
- on CUDA, `biased_sdpa`: Srel of the whole window as an additive bias (B, H, Lq, Lk) into PyTorch's
  fused scaled_dot_product_attention (its memory-efficient kernel takes a bias and its gradient).
  GPUs have the memory for one layer's bias and gain more from one fused launch than from blocks.
  MUSICGPT_ATTENTION_KERNEL=sdpa forces it on any device (tests run it on the CPU).
- the eager PyTorch path (`musicgpt.model.attention_eager`), for everything else: no compiler, float64,
  attention dropout, other devices. Its forward keeps only inputs and output;
  its backward recomputes each block's probabilities. Work is laid out heads first, (H·B, L, D), so
  the relative GEMM of one head covers the whole batch.
The skewing itself, the masks and the tables' layouts are in `musicgpt.model.skew`; this module picks a
path and computes the full probabilities for analysis (`attention_probs`).
On the CPU paths peak memory is one block of logits instead of every layer's (B, H, L, L) probabilities;
the CUDA path keeps one (B, H, L, L) bias per layer for the backward (bench/gpu.py: 2.2x the peak of
absolute attention at L=1024, against 5.1x for a naive port).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgpt.model import relative_kernel
from musicgpt.model.attention_eager import _block_logits, _RelativeAttention, release_scratch
from musicgpt.model.skew import BLOCK, _band, _extended_table, _heads_first, relative_logits, skewed_view

__all__ = ["relative_attention", "attention_probs", "biased_sdpa", "relative_logits", "skewed_view",
           "release_scratch", "BLOCK"]


class _FusedRelativeAttention(torch.autograd.Function):
    """The fused CPU kernel: saves inputs, output and each row's log-sum-exp; the backward recomputes blocks.

    The kernel computes in float32; bfloat16 inputs (autocast) are upcast on the way in, which measured
    faster than bf16 GEMMs at head_dim 32, and saved as they came (no extra memory).
    """

    @staticmethod
    def forward(ctx, q, k, v, rel, window, block):
        out, lse = relative_kernel.forward(*_float32_rows(q, k, v, rel), window, block)
        out = out.to(q.dtype)  # (B, H, Lq, D), stored (B, Lq, H, D)
        ctx.save_for_backward(q, k, v, rel, out, lse)
        ctx.window, ctx.block = window, block
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel, out, lse = ctx.saved_tensors
        q32, k32, v32, rel32, grad32, out32 = _float32_rows(q, k, v, rel, grad_out, out)
        dq, dk, dv, drel = relative_kernel.backward(grad32, q32, k32, v32, rel32, out32, lse, ctx.window, ctx.block)
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
    return relative_kernel.load()


def _use_biased_sdpa(q: Tensor) -> bool:
    """Whether the SDPA-with-bias path takes this call: by default on CUDA, anywhere when forced."""
    m = relative_kernel.mode()
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
