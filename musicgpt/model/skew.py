"""Relative-position logits by skewing (Huang et al. 2018, memory-efficient): the pieces every attention path shares.

For a block of Bq queries whose keys span n positions, the relative scores M = q Eᵀ are computed
against the embeddings of distances n-1 … 0 (and a zero row for distance -1); the table is stored in
descending distance order, so that is a contiguous slice. Row b of Srel is row b of M shifted left by
Bq-1-b columns: a strided *view* of M (`skewed_view`), the pad-reshape-slice of the paper without the
copies. Also here: the causal / sliding-window masks and the tables' layouts (musicgpt.model.attention).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

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
