"""One-token decoding steps of a MusicGPT over its KV cache: the fast path of generation.

At batch 1 on a CPU a decode step is bound by reading memory (the weights, then the cached keys,
values and relative embeddings: ~38 MB a step for the `small` preset once the window is full)
and by per-op overhead, which is high: each step streams all that through the CPU caches, so
every small op after a big one starts cold (~10 µs an op here, 4x what it costs in a loop).
`MusicGPT.forward` serves training, prefill and analysis (blocked relative attention, masks,
dropout modules, an output object); a step with one query needs none of that: it sees every key
in the cache window, so there is no mask, and its relative logits are one GEMV per head against
the embeddings of distances n-1 … 0.

`Decoder.step` runs the same arithmetic as `MusicGPT.forward(ids, cache=cache)` for one new token
per sequence in 13 ops a layer, each operand laid out for the GEMV that reads it:

- weights pre-transposed to (in, out), with the bias as an extra last row for the two residual
  projections, so `x.addmm_(y1, W)` (y1 = [y, 1]) is projection, bias and residual in one op; the
  query rows of the fused qkv projection carry the 1/sqrt(head_dim) scale; all of them packed in
  one buffer on huge pages (musicgpt.model._hugepages);
- keys transposed in the cache (`KVCache.keys_t`, (H, B, D, slots)), the relative embeddings
  transposed and extended to the window once per decoder ((H, D, window), distance n-1 … 0 left to
  right), so both logit terms are q (1, D) @ (D, n) on contiguous n-long rows (1.5x faster than
  q @ Kᵀ over (n, D) rows; bench/generate.py "attention_layouts");
- the new key and value copied into their cache slot through views made once per slot and
  window (KVCache.decode_views), no allocation or indexing of the caches per step.

Weighed and left out (measured in bench/generate.py or while writing this): one matmul for both
logit terms (the embeddings' alignment to the keys moves by one every step, so keys and embeddings
cannot share a buffer without copying the table each step); SDPA with the relative logits as a
float mask (fewer ops, slower kernel for one query); torch.compile of the step (slower on CPU here).

`Decoder.step_pair` feeds the same tokens to two caches in one pass of 2B rows (guidance's conditional and
unconditional halves): the weights are read once, only the attention reads each cache apart.

It hands back each layer's attention probabilities for free when asked. tests/test_generation.py
and tests/test_kv_cache.py pin every step to the model's full forward pass (1e-4), including
while a small window slides and moves to the front many times.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from musicgpt.model import _hugepages as hugepages
from musicgpt.errors import ConfigError
from musicgpt.model.kv_cache import KVCache
from musicgpt.model.gpt import MusicGPT


class Decoder:
    """Decode steps of one model (eval semantics: no dropout).

    The decoder holds re-laid-out copies of the weights (about the model's size again, ~35 ms to
    make for `small`), taken when it is built: a model changed afterwards needs a new Decoder.
    `Decoder.for_model` keeps one per model and rebuilds it when the parameters change.
    """

    @classmethod
    def for_model(cls, model: MusicGPT) -> "Decoder":
        """The decoder of `model`, reused while its parameters are the same tensors, unmodified since.

        "Unmodified" is judged by each parameter's storage and version counter, which every in-place
        update through autograd-visible tensors bumps (optimizer steps, load_state_dict, `p.mul_()`
        under no_grad); an edit through `p.data` is invisible to it: build a Decoder directly then.
        """
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
        kept = _DECODERS.get(model)
        if kept is not None and kept[0] == key:
            return kept[1]
        decoder = cls(model)
        _DECODERS[model] = (key, decoder)
        return decoder

    def __init__(self, model: MusicGPT):
        cfg = model.config
        self.config = cfg
        self.n_head, self.head_dim, self.d_model = cfg.n_head, cfg.head_dim, cfg.d_model
        self.relative = cfg.position in ("relative", "both")
        self.absolute = cfg.position in ("absolute", "both")
        scale = 1.0 / math.sqrt(cfg.head_dim)
        with torch.no_grad():
            self.tok_emb = model.tok_emb.weight.detach()
            self.pos_emb = model.pos_emb.weight.detach() if self.absolute else None
            self.ln_f = (model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
            tensors = [model.lm_head.weight.detach()]
            for block in model.blocks:
                attn, mlp = block.attn, block.mlp
                wqkv = attn.qkv.weight.detach().t().contiguous()  # (C, 3C): queries first, scaled
                wqkv[:, : cfg.d_model] *= scale
                bqkv = _bias(attn.qkv.bias, 3 * cfg.d_model, wqkv)
                bqkv[: cfg.d_model] *= scale
                tensors += [block.ln_1.weight, _bias(block.ln_1.bias, cfg.d_model, wqkv), wqkv, bqkv,
                            _with_bias_row(attn.proj.weight, attn.proj.bias),  # (C + 1, C)
                            block.ln_2.weight, _bias(block.ln_2.bias, cfg.d_model, wqkv),
                            mlp.fc.weight.detach().t(), _bias(mlp.fc.bias, cfg.d_ff, wqkv),  # (C, F), (F,)
                            _with_bias_row(mlp.proj.weight, mlp.proj.bias)]  # (F + 1, C)
            tensors = hugepages.pack([t.detach() for t in tensors])  # everything a step reads, in one buffer
            self.lm_head = tensors[0]
            self.layers = []
            for i, block in enumerate(model.blocks):
                w1, b1, wqkv, bqkv, wo, w2, b2, wfc, bfc, wpr = tensors[1 + 10 * i : 11 + 10 * i]
                self.layers.append((w1, b1, block.ln_1.eps, wqkv, bqkv, wo, w2, b2, block.ln_2.eps, wfc, bfc, wpr))
            self._rel = [block.attn.rel_emb.detach() if self.relative else None for block in model.blocks]
        self._tables: dict[int, Tensor] = {}  # window -> (n_layer, H, D, window)
        self._last: tuple[int, Tensor | None, list[Tensor | None]] = (0, None, [])
        self._work: dict[int, _Workspace] = {}  # per batch size

    def relative_tables(self, window: int, n: int | None = None) -> list[Tensor | None]:
        """Per layer the transposed embeddings of distances n-1 … 0, (H, D, n) (n defaults to the window).

        Built once per window as one (n_layer, H, D, window) tensor, distances left to right from
        window-1 down to 0, so the tables of n < window are views cut for every layer in one call.
        Distances of R-1 and more share the embedding of R-1 (row 0 of the model's table).
        """
        if window != self._last[0]:
            stacked = self._tables.get(window)
            if stacked is None and self.relative:
                stacked = torch.stack([_extend(rel, window).transpose(1, 2) for rel in self._rel])
                stacked = self._tables[window] = hugepages.pack([stacked])[0]
            self._last = (window, stacked, list(stacked.unbind(0)) if self.relative else [None] * len(self._rel))
        window, stacked, full = self._last
        if n is None or n == window or stacked is None:
            return full
        return list(stacked.narrow(3, window - n, n).unbind(0))

    def step(self, tokens: Tensor, cache: KVCache, need_attention: bool = False
             ) -> tuple[Tensor, list[Tensor] | None]:
        """Logits (B, vocab) after feeding one token per sequence, (B,); attention per layer (B, H, n) if asked.

        The cache advances by one; the last of the n attention columns is the new token itself.
        """
        if torch.is_grad_enabled():  # a no_grad decorator would cost its enter/exit on every step
            with torch.no_grad():  # not inference_mode: its tensors cannot be updated in place outside it
                return self._step(tokens, (cache,), need_attention)
        return self._step(tokens, (cache,), need_attention)

    def step_pair(self, tokens: Tensor, cache: KVCache, other: KVCache, need_attention: bool = False
                  ) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """`step` of the same tokens (B,) on two caches at once (a guided batch's conditional and
        unconditional halves): (logits on cache, logits on other, cache's attention if asked).

        One pass of 2B rows: every weight is read once for both and each op is called once; only the
        attention reads each cache apart. 1.13x the steps/s of two `step`s at batch 1 on a 2-core CPU
        (bench/steering.py "pair_step", interleaved).
        """
        both = torch.cat([tokens, tokens])  # (2B,)
        if torch.is_grad_enabled():
            with torch.no_grad():
                logits, attentions = self._step(both, (cache, other), need_attention)
        else:
            logits, attentions = self._step(both, (cache, other), need_attention)
        b = tokens.shape[0]
        return logits[:b], logits[b:], attentions

    def _step(self, tokens: Tensor, caches: tuple[KVCache, ...], need_attention: bool
              ) -> tuple[Tensor, list[Tensor] | None]:
        """Rows [i*B, (i+1)*B) of tokens (k*B,) continue caches[i]; attention of caches[0] when asked."""
        rows = tokens.shape[0]
        b = rows // len(caches)  # sequences per cache
        h, d, c = self.n_head, self.head_dim, self.d_model
        x = F.embedding(tokens, self.tok_emb)  # (kB, C), a fresh tensor: updated in place below
        for i, cache in enumerate(caches):
            if self.absolute:
                pos = cache.length
                if pos >= self.config.n_ctx:
                    raise ConfigError(f"position {pos} is past n_ctx={self.config.n_ctx} of a model with absolute "
                                      "positions; only position='relative' can slide its window")
                x[i * b : (i + 1) * b] += self.pos_emb[pos]
            if cache.values is None:
                cache.allocate(h, b, d, x.dtype, x.device)
            elif cache.batch != b:
                raise ValueError(f"cache holds a batch of {cache.batch} sequences, got {b}; "
                                 "start a new cache for a new batch")
        key = (rows, len(caches))
        ws = self._work.get(key) or self._work.setdefault(key, _Workspace(self, b, len(caches)))
        qkv, y1, h1, hid = ws.qkv, ws.y1, ws.h1, ws.hid
        reads = []  # per cache: per layer (key slot, value slot), (keys, values), table
        for cache in caches:
            cache.begin(1)
            slots, windows = cache.decode_views()
            reads.append((cache.n_past + 1, list(zip(slots, windows, self.relative_tables(cache.window,
                                                                                      cache.n_past + 1)))))
        attentions = [] if need_attention else None
        for layer, (w1, b1, e1, wqkv, bqkv, wo, w2, b2, e2, wfc, bfc, wpr) in enumerate(self.layers):
            torch.addmm(bqkv, torch.layer_norm(x, (c,), w1, b1, e1), wqkv, out=qkv)  # (kB, 3C)
            for part, (n, per_layer) in zip(ws.parts, reads):
                (k_slot, v_slot), (keys, values), table = per_layer[layer]
                k_slot.copy_(part.k)  # (H, B, D) into the cache
                v_slot.copy_(part.v)
                if part.q_heads is not part.q_src:
                    part.q_heads.copy_(part.q_src)
                s = torch.bmm(part.q, keys)  # (HB, 1, n): q · k
                if table is not None:  # + q · e(distance): one GEMM per head over the batch
                    (s if b == 1 else s.view(h, b, n)).baddbmm_(part.q_heads, table)
                p = torch.softmax(s, dim=-1)
                if b == 1:  # straight into the [y, 1] buffer
                    torch.bmm(p, values, out=part.y_heads)
                else:
                    part.y.copy_(torch.bmm(p, values).view(h, b, d).transpose(0, 1).reshape(b, c))
                if need_attention and part is ws.parts[0]:
                    attentions.append(p.view(h, b, n).transpose(0, 1))  # (B, H, n)
            x.addmm_(y1, wo)  # x + y Wo + bo
            torch.addmm(bfc, torch.layer_norm(x, (c,), w2, b2, e2), wfc, out=hid)
            torch._C._nn.gelu_(hid, approximate="tanh")
            x.addmm_(h1, wpr)  # x + gelu(.) Wpr + bpr
        for cache in caches:
            cache.advance()
        w, bias, eps = self.ln_f
        return F.linear(torch.layer_norm(x, (c,), w, bias, eps), self.lm_head), attentions


class _Workspace:
    """Buffers of one step shape (k caches of b sequences) reused by every layer and step, views made once."""

    def __init__(self, dec: Decoder, b: int, k: int = 1):
        h, d, c = dec.n_head, dec.head_dim, dec.d_model
        like = dec.tok_emb
        self.qkv = like.new_empty(k * b, 3 * c)
        heads = self.qkv.view(k * b, 3, h, d)
        q_all, k_all, v_all = (heads[:, i].transpose(0, 1) for i in range(3))  # (H, kB, D) views
        self.y1 = like.new_ones(k * b, c + 1)  # [y, 1]: the bias row of the projection multiplies the 1
        self.h1 = like.new_ones(k * b, dec.config.d_ff + 1)  # [gelu(fc), 1]
        self.hid = self.h1[:, : dec.config.d_ff]
        self.parts = [_Part(q_all, k_all, v_all, self.y1[:, :c], i * b, b, like) for i in range(k)]


class _Part:
    """The views of one cache's rows [r0, r0 + b) in a step's buffers."""

    def __init__(self, q_all: Tensor, k_all: Tensor, v_all: Tensor, y_all: Tensor, r0: int, b: int, like: Tensor):
        h, _, d = q_all.shape
        self.q_src, self.k, self.v = (t[:, r0 : r0 + b] for t in (q_all, k_all, v_all))  # (H, B, D) views
        self.q_heads = self.q_src if b == 1 else like.new_empty(h, b, d)  # contiguous for bmm over H*B
        self.q = self.q_heads.reshape(h * b, 1, d)  # a view either way
        self.y = y_all[r0 : r0 + b]
        self.y_heads = self.y.view(h, 1, d) if b == 1 else None


_DECODERS: "weakref.WeakKeyDictionary[MusicGPT, tuple[tuple, Decoder]]" = weakref.WeakKeyDictionary()


def _bias(bias: Tensor | None, size: int, like: Tensor) -> Tensor:
    """A copy of a Linear's bias, zeros when it has none."""
    return like.new_zeros(size) if bias is None else bias.detach().clone()


def _with_bias_row(weight: Tensor, bias: Tensor | None) -> Tensor:
    """(in + 1, out): the transposed weight with the bias as its last row (zeros without one)."""
    out_features, in_features = weight.shape
    w = weight.new_zeros(in_features + 1, out_features)
    w[:in_features] = weight.detach().t()
    if bias is not None:
        w[in_features] = bias.detach()
    return w


def _extend(rel: Tensor, n: int) -> Tensor:
    """Embeddings of distances n-1 … 0, (H, n, D), from the model's (H, R, D) table (descending distance)."""
    r = rel.shape[1]
    if n <= r:
        return rel[:, r - n :]
    return torch.cat([rel[:, :1].expand(-1, n - r, -1), rel], dim=1)
