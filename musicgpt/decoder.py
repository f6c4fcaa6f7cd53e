"""One-token decoding steps of a MusicGPT over its KV cache: the fast path of generation.

At batch 1 on a CPU a decode step is bound by per-op dispatch and by reading the weights, not by
arithmetic. `MusicGPT.forward` serves training, prefill and analysis (blocked relative attention,
masks, dropout modules, an output object); a step with one query needs none of that: it sees
every key in the cache window, so there is no mask, and its relative logits are one GEMV per head
against the contiguous slice of embeddings for distances n-1 … 0. `Decoder.step` runs the same
arithmetic as `MusicGPT.forward(ids, cache=cache)` for one new token per sequence with plain
functional calls on the model's own parameters (only the query projection is copied, with the
1/sqrt(head_dim) scale folded in: one op less per layer), and hands back each layer's attention
probabilities for free when asked. tests/test_generation.py pins it to the model's full forward
pass (1e-4), so a change to the model that this file does not follow fails there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgpt.errors import ConfigError
from musicgpt.kv_cache import KVCache
from musicgpt.model import MusicGPT


class Decoder:
    """Decode steps of one model (eval semantics: no dropout); build one per generation, after any training."""

    def __init__(self, model: MusicGPT):
        cfg = model.config
        self.config = cfg
        self.n_head, self.head_dim, self.d_model = cfg.n_head, cfg.head_dim, cfg.d_model
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.relative = cfg.position in ("relative", "both")
        self.absolute = cfg.position in ("absolute", "both")
        self.tok_emb = model.tok_emb.weight
        self.pos_emb = model.pos_emb.weight if self.absolute else None
        self.lm_head = model.lm_head.weight
        self.ln_f = (model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        self.layers = []
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            wqkv, bqkv = _scaled_queries(attn.qkv.weight, attn.qkv.bias, cfg.d_model, self.scale)
            self.layers.append((
                block.ln_1.weight, block.ln_1.bias, block.ln_1.eps,
                wqkv, bqkv, attn.rel_emb if self.relative else None,
                attn.proj.weight, attn.proj.bias,
                block.ln_2.weight, block.ln_2.bias, block.ln_2.eps,
                mlp.fc.weight, mlp.fc.bias, mlp.proj.weight, mlp.proj.bias,
            ))
        self._far: dict[tuple[int, int], Tensor] = {}  # (layer, window) -> distances window-1 … 0

    def _embeddings(self, layer: int, rel: Tensor, n: int, window: int) -> Tensor:
        """Embeddings of distances n-1 … 0, (H, n, D); distances of R-1 and more share row 0."""
        r = rel.shape[1]
        if n <= r:
            return rel[:, r - n :]
        table = self._far.get((layer, window))
        if table is None:  # built once per generation: the clipped row repeated up to the window
            table = self._far[(layer, window)] = torch.cat([rel[:, :1].expand(-1, window - r, -1), rel], dim=1)
        return table[:, table.shape[1] - n :]

    @torch.no_grad()  # not inference_mode: tensors made there cannot be updated in place outside it
    def step(self, tokens: Tensor, cache: KVCache, need_attention: bool = False
             ) -> tuple[Tensor, list[Tensor] | None]:
        """Logits (B, vocab) after feeding one token per sequence, (B,); attention per layer (B, H, n) if asked.

        The cache advances by one; the last of the n attention columns is the new token itself.
        """
        b = tokens.shape[0]
        h, d, c = self.n_head, self.head_dim, self.d_model
        pos = cache.length
        x = F.embedding(tokens, self.tok_emb)  # (B, C)
        if self.absolute:
            if pos >= self.config.n_ctx:
                raise ConfigError(f"position {pos} is past n_ctx={self.config.n_ctx} of a model with absolute "
                                  "positions; only position='relative' can slide its window")
            x = x + self.pos_emb[pos]
        cache.begin(1)
        attentions = [] if need_attention else None
        for i, (w1, b1, e1, wqkv, bqkv, rel, wo, bo, w2, b2, e2, wfc, bfc, wpr, bpr) in enumerate(self.layers):
            a = torch.layer_norm(x, (c,), w1, b1, e1)
            q, k, v = F.linear(a, wqkv, bqkv).view(b, 3, h, 1, d).unbind(1)  # each (B, H, 1, D)
            keys, values = cache.update(i, k, v)  # (B, H, n, D): the window, the new token last
            n = keys.shape[2]
            if b == 1:  # (H, 1, n): batched GEMVs over heads on views of the cache
                s = torch.bmm(q[0], keys[0].transpose(1, 2))
                if rel is not None:
                    s.baddbmm_(q[0], self._embeddings(i, rel, n, cache.window).transpose(1, 2))
                p = torch.softmax(s, dim=-1)
                y = torch.bmm(p, values[0])  # (H, 1, D)
                p = p.view(1, h, n)
            else:
                s = torch.matmul(q, keys.transpose(2, 3)).view(b, h, n)  # (B, H, n)
                if rel is not None:  # one GEMM per head over the batch: (H, B, D) x (H, D, n)
                    e = self._embeddings(i, rel, n, cache.window)
                    s += torch.bmm(q.view(b, h, d).transpose(0, 1), e.transpose(1, 2)).transpose(0, 1)
                p = torch.softmax(s, dim=-1)
                y = torch.matmul(p.unsqueeze(2), values)  # (B, H, 1, D)
            if need_attention:
                attentions.append(p)
            x = x + F.linear(y.reshape(b, c), wo, bo)
            a = torch.layer_norm(x, (c,), w2, b2, e2)
            x = x + F.linear(F.gelu(F.linear(a, wfc, bfc), approximate="tanh"), wpr, bpr)
        cache.advance()
        w, bias, eps = self.ln_f
        return F.linear(torch.layer_norm(x, (c,), w, bias, eps), self.lm_head), attentions


def _scaled_queries(weight: Tensor, bias: Tensor | None, d_model: int, scale: float) -> tuple[Tensor, Tensor | None]:
    """A copy of the fused qkv projection whose query rows are multiplied by `scale`."""
    with torch.no_grad():
        weight = weight.detach().clone()
        weight[:d_model] *= scale
        if bias is not None:
            bias = bias.detach().clone()
            bias[:d_model] *= scale
    return weight, bias
