"""The model's forward pass written out layer by layer, for the arc measures: key masks, prefix reuse, and a trace.

`musicgpt.model` computes attention in fused kernels that never hold the probabilities of every row nor
let a caller hide a key. The measures need both: `norm` and `rollout` read every row's probabilities and
the value vectors, and `influence` re-runs the model with one note's tokens hidden from every query. This
module runs the model's own modules (its embeddings, LayerNorms, qkv and output projections, relative
embeddings, MLPs, LM head) with attention computed densely, one segment of at most a few thousand tokens,
every query seeing every earlier token of the segment within the model's window (what teacher forcing
sees for a segment that starts at the piece's BOS and is no longer than n_ctx). Tests check it against
`MusicGPT.forward`.

Prefix reuse. Hiding keys at positions >= p changes nothing before p (attention is causal), so an
ablation starts from the unmasked run's keys and values of positions < p and recomputes rows p ... only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from musicgpt.model.skew import relative_logits

ROW_CHUNK = 256  # query rows per attention block: (B, H, 256, T) logits stay a few MB


@dataclass
class Trace:
    """What one unmasked run keeps: per layer keys and values (for ablations), head-mean probabilities of
    every row, per-head probabilities of the chosen rows, and each head's value-vector norms."""

    logits: Tensor  # (T, V) float32
    keys: list[Tensor]  # per layer (H, T, D)
    values: list[Tensor]  # per layer (H, T, D)
    mean_probs: list[Tensor]  # per layer (T, T): the head mean of every row
    row_probs: list[Tensor]  # per layer (H, R, T): the rows asked for
    value_norms: list[Tensor]  # per layer (H, T): ||v_j W_O^h||, the norm a key adds to the output per unit weight


def _embed(model, ids: Tensor, start: int) -> Tensor:
    """Token (and absolute position) embeddings of ids (B, R) at positions start ... : (B, R, C)."""
    x = model.tok_emb(ids)
    if model.config.position != "relative":
        x = x + model.pos_emb(torch.arange(start, start + ids.shape[1], device=ids.device))
    return x


def _attend(attn, q: Tensor, keys: Tensor, values: Tensor, start: int, window: int,
            key_mask: Tensor | None, rows_out: list | None) -> Tensor:
    """Attention output (B, H, R, D) of queries q (B, H, R, D) at positions start ... over keys/values
    (B, H, T, D); key_mask (B, T) hides keys from every other row. rows_out: gets each block's (B, H, r, T)
    probabilities, in order."""
    b, h, r, d = q.shape
    t = keys.shape[2]
    out = torch.empty_like(q)
    cols = torch.arange(t, device=q.device)
    for i0 in range(0, r, ROW_CHUNK):
        qi = q[:, :, i0 : i0 + ROW_CHUNK]  # (B, H, r, D)
        n = qi.shape[2]
        pos = torch.arange(start + i0, start + i0 + n, device=q.device)[:, None]  # (r, 1)
        s = qi @ keys.transpose(-1, -2)  # (B, H, r, T)
        if getattr(attn, "relative", False):
            # Srel for queries that are the last rows of pos[-1] + 1 keys; later keys are masked below
            seen = int(pos[-1]) + 1
            s[..., :seen] += relative_logits(qi, attn.rel_emb, seen)  # (B, H, r, seen)
        s = s * (1.0 / math.sqrt(d))
        blocked = (cols[None, :] > pos) | (pos - cols[None, :] >= window)  # (r, T)
        s = s.masked_fill(blocked, float("-inf"))
        if key_mask is not None:
            hide = key_mask[:, None, None, :] & (cols[None, :] != pos)[None, None]  # (B, 1, r, T)
            s = s.masked_fill(hide, float("-inf"))
        p = torch.softmax(s, dim=-1)  # (B, H, r, T)
        if rows_out is not None:
            rows_out.append(p)
        out[:, :, i0 : i0 + n] = p @ values
    return out


@torch.no_grad()
def run(model, ids: Tensor, *, start: int = 0, prefix: tuple[list[Tensor], list[Tensor]] | None = None,
        key_mask: Tensor | None = None, keep_rows: bool = False, head_mask: Tensor | None = None) -> dict:
    """Rows start ... T-1 of the token sequences ids (B, T) through `model`.

    prefix: per layer keys and values (H, start, D) of positions < start (an unmasked run's), shared by the
    batch. key_mask (B, T) bool: keys hidden from every other row. head_mask (B, L, H): 0 zeroes a head's
    output. Returns {"logits": (B, T - start, V), "keys"/"values": per layer (B, H, T, D), "probs": per layer
    (B, H, T - start, T) when keep_rows}.
    """
    b, t = ids.shape
    cfg = model.config
    window = cfg.n_ctx
    x = _embed(model, ids[:, start:], start)  # (B, R, C)
    keys_out, values_out, probs_out = [], [], []
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        hidden = block.ln_1(x)
        qkv = attn.qkv(hidden).view(b, t - start, 3, attn.n_head, attn.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, R, D)
        if start:
            pk, pv = prefix[0][layer], prefix[1][layer]  # (H, start, D)
            k = torch.cat([pk[None].expand(b, -1, -1, -1), k], dim=2)  # (B, H, T, D)
            v = torch.cat([pv[None].expand(b, -1, -1, -1), v], dim=2)
        rows = [] if keep_rows else None
        y = _attend(attn, q, k, v, start, window, key_mask, rows)  # (B, H, R, D)
        if head_mask is not None:
            y = y * head_mask[:, layer, :, None, None].to(y.dtype)
        x = x + attn.proj(y.transpose(1, 2).reshape(b, t - start, -1))
        x = x + block.mlp(block.ln_2(x))
        keys_out.append(k)
        values_out.append(v)
        if keep_rows:
            probs_out.append(torch.cat(rows, dim=2))
    logits = model.lm_head(model.ln_f(x)).float()  # (B, R, V)
    return {"logits": logits, "keys": keys_out, "values": values_out, "probs": probs_out if keep_rows else None}


def value_norms(attn, values: Tensor) -> Tensor:
    """||v_j W_O^h|| per head and key: (H, T) from values (H, T, D) and the layer's output projection."""
    h, t, d = values.shape
    w = attn.proj.weight.view(-1, h, d)  # (C, H, D): the columns of W_O that head h writes through
    mapped = torch.einsum("htd,chd->htc", values.float(), w.float())  # (H, T, C)
    return mapped.norm(dim=-1)


@torch.no_grad()
def trace(model, ids, rows) -> Trace:
    """One unmasked run of `ids` (T,) keeping what the measures read; `rows` are the query positions."""
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    out = run(model, ids, keep_rows=True)
    mean_probs = [p[0].mean(0) for p in out["probs"]]  # (T, T)
    row_probs = [p[0][:, rows] for p in out["probs"]]  # (H, R, T)
    keys = [k[0] for k in out["keys"]]
    values = [v[0] for v in out["values"]]
    norms = [value_norms(block.attn, v) for block, v in zip(model.blocks, values)]
    return Trace(out["logits"][0], keys, values, mean_probs, row_probs, norms)
