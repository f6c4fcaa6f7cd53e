"""A loaded model at a lower precision for decoding on a CPU: bfloat16, or int8 weight matrices.

At batch 1 a decode step reads every weight once, so fewer bytes per weight should mean more tokens/s
(bench/decode_speed.py measures both the bytes and the speed, against the machine's memory bandwidth).

- `bfloat16`: a bf16 copy of the model. Weights, activations and the KV cache are bf16; `Decoder` and
  `MusicGPT.forward` run it as they are. On a CPU without avx512_bf16 or AMX the bf16 matmuls convert to
  float32 inside the kernel, so half the bytes need not mean faster.
- `int8`: a copy whose Linear layers (the attention and MLP projections and the output head) hold int8
  weights, one symmetric scale per output row, and multiply through fbgemm's dynamic quantization
  (`torch.ops.quantized.linear_dynamic`: the activations quantized to uint8 per call, int32 accumulation,
  VNNI on CPUs that have it). Embeddings, LayerNorms and relative embeddings stay float32. `Int8Decoder`
  is its decode step; `decoder_for(model)` picks the step of either kind of model.

Measured on the project's 2-core Xeon (Ice Lake: avx512_vnni, no avx512_bf16, no AMX; bench/decode_speed.py,
docs/benchmarks.md): bfloat16 decodes at 0.5-0.7x the tokens/s of float32, int8 at 1.05-1.5x (step) and
1.0-1.2x (generation's loop), both within 0.001 nats of float32's test NLL: neither reaches the 1.5x that
would make it worth offering, so generation does not use this module; it is here to be measured again on
other CPUs (bfloat16 wants avx512_bf16 or AMX). int8 gains less than its 4x fewer weight bytes because the
step's float32 keys, values and relative tables (a quarter of its bytes at 64 tokens of context, most of them
past 512) and its ~80 small ops a token do not shrink.

Int8 activations get one scale per call, so a forward pass over many tokens quantizes them together
while the decode step quantizes one token at a time: the two agree to within that quantization
(tests/test_precision.py measures how close), not bit for bit.
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicgpt.errors import ConfigError
from musicgpt.model.decode_step import Decoder
from musicgpt.model.gpt import MusicGPT
from musicgpt.model.kv_cache import KVCache

PRECISIONS = ("float32", "bfloat16", "int8")
REDUCE_RANGE = False  # 8-bit activations: VNNI's int32 dot products do not saturate (7 bits is for AVX2 only)


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W stored int8 per output row (W ≈ qweight * scale[:, None]), through fbgemm."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # (out,)
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self.packed = pack_int8(self.qweight, self.scale, self.bias)

    @property
    def weight(self) -> Tensor:
        """The weight as the int8 values stand for it, float32 (out, in): for readers, not for the matmul."""
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = torch.ops.quantized.linear_dynamic(x.reshape(-1, shape[-1]).float(), self.packed, REDUCE_RANGE)
        return y.view(*shape[:-1], y.shape[-1])  # (..., out)


def pack_int8(qweight: Tensor, scale: Tensor, bias: Tensor | None) -> object:
    """fbgemm's packed form of int8 weights (out, in) with per-row scales (out,) and a float bias."""
    zero = torch.zeros(qweight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated (for torchao); they still run
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        q = torch._make_per_channel_quantized_tensor(qweight, scale.double(), zero, 0)
    return torch.ops.quantized.linear_prepack(q, bias)


def for_cpu_decoding(model: MusicGPT, precision: str) -> MusicGPT:
    """`model` for decoding on a CPU at `precision` (float32: the model itself; bfloat16, int8: a copy in eval mode).

    The copy carries the model's tokenizer; the original is left as it is.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: not one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return model
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError(f"precision {precision}: lower-precision decoding is for CPU models")
    out = copy.deepcopy(model).eval()
    if precision == "bfloat16":
        return out.to(torch.bfloat16)
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise ConfigError("precision int8: this torch build has no fbgemm quantized engine")
    torch.backends.quantized.engine = "fbgemm"
    out.float()
    for block in out.blocks:
        block.attn.qkv, block.attn.proj = Int8Linear(block.attn.qkv), Int8Linear(block.attn.proj)
        block.mlp.fc, block.mlp.proj = Int8Linear(block.mlp.fc), Int8Linear(block.mlp.proj)
    out.lm_head = Int8Linear(out.lm_head)  # the tied embedding table stays float32 for the lookups
    return out


def precision_of(model: MusicGPT) -> str:
    """Which of PRECISIONS a model is in (as `for_cpu_decoding` makes them)."""
    if isinstance(model.lm_head, Int8Linear):
        return "int8"
    return "bfloat16" if model.tok_emb.weight.dtype == torch.bfloat16 else "float32"


def decoder_for(model: MusicGPT) -> Decoder:
    """The decode step of a model at any of PRECISIONS: `Int8Decoder` for an int8 model, else `Decoder.for_model`."""
    if precision_of(model) == "int8":
        kept = _INT8_DECODERS.get(model)
        if kept is None:
            kept = _INT8_DECODERS[model] = Int8Decoder(model)  # an int8 model's weights are buffers, never trained
        return kept
    return Decoder.for_model(model)


def weight_bytes(model: MusicGPT) -> int:
    """Bytes of the weights one decode step reads (matrices, biases, LayerNorms, the output head, one embedding
    row); the KV cache and relative tables it also reads grow with the context and are counted apart."""
    total = model.tok_emb.weight[0].numel() * model.tok_emb.weight.element_size()
    for module in model.modules():
        if isinstance(module, Int8Linear):
            total += sum(t.numel() * t.element_size() for t in (module.qweight, module.scale)
                         if t is not None) + (0 if module.bias is None else module.bias.numel() * 4)
        elif isinstance(module, (nn.Linear, nn.LayerNorm)):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total


def context_bytes(model: MusicGPT, n: int) -> int:
    """Bytes a decode step reads besides the weights when it sees n tokens: cached keys and values and, with
    relative attention, the embeddings of distances n-1 … 0 (each n_layer x n x d_model, in the cache's dtype)."""
    cfg = model.config
    size = 2 if model.tok_emb.weight.dtype == torch.bfloat16 else 4
    tables = 3 if cfg.position in ("relative", "both") else 2
    return tables * cfg.n_layer * n * cfg.d_model * size


class Int8Decoder(Decoder):
    """`Decoder.step` of an int8 model (`for_cpu_decoding(model, "int8")`): one sequence, one cache.

    The four projections of each layer and the output head run as int8 GEMMs from the model's own int8
    weights (the query rows' scales carry 1/sqrt(head_dim), as Decoder folds it into its weights); the rest
    is Decoder's arithmetic in float32. Batches and guided pairs are Decoder's (float32) work.
    """

    def __init__(self, model: MusicGPT):
        if precision_of(model) != "int8":
            raise ConfigError("Int8Decoder: the model is not int8 (make it with for_cpu_decoding(model, 'int8'))")
        super().__init__(model)  # embeddings, LayerNorms, relative tables (and float32 copies it leaves unread)
        c, scale = self.d_model, 1.0 / math.sqrt(self.head_dim)
        self.packed = []
        for block in model.blocks:
            qkv = block.attn.qkv
            row_scale, bias = qkv.scale.clone(), None if qkv.bias is None else qkv.bias.clone()
            row_scale[:c] *= scale
            if bias is not None:
                bias[:c] *= scale
            self.packed.append((pack_int8(qkv.qweight, row_scale, bias), block.attn.proj.packed,
                                block.mlp.fc.packed, block.mlp.proj.packed))
        self.head = model.lm_head.packed

    def _step(self, tokens: Tensor, caches: tuple[KVCache, ...], need_attention: bool
              ) -> tuple[Tensor, list[Tensor] | None]:
        """Logits (1, V) for one token (1,) on one cache; attention per layer (1, H, n) when asked."""
        if len(caches) != 1 or tokens.shape[0] != 1:
            raise ConfigError("int8 decoding steps one sequence on one cache; batches and guidance run in float32")
        (cache,) = caches
        h, d, c = self.n_head, self.head_dim, self.d_model
        linear = torch.ops.quantized.linear_dynamic
        x = F.embedding(tokens, self.tok_emb)  # (1, C)
        if self.absolute:
            if cache.length >= self.config.n_ctx:
                raise ConfigError(f"position {cache.length} is past n_ctx={self.config.n_ctx} of a model with "
                                  "absolute positions; only position='relative' can slide its window")
            x += self.pos_emb[cache.length]
        if cache.values is None:
            cache.allocate(h, 1, d, x.dtype, x.device)
        elif cache.batch != 1:
            raise ValueError(f"cache holds a batch of {cache.batch} sequences, got 1")
        cache.begin(1)
        slots, windows = cache.decode_views()
        tables = self.relative_tables(cache.window, cache.n_past + 1)
        n = cache.n_past + 1
        attentions = [] if need_attention else None
        for layer, (w1, b1, e1, _, _, _, w2, b2, e2, _, _, _) in enumerate(self.layers):
            p_qkv, p_o, p_fc, p_pr = self.packed[layer]
            qkv = linear(torch.layer_norm(x, (c,), w1, b1, e1), p_qkv, REDUCE_RANGE).view(3, h, 1, d)  # q, k, v
            (k_slot, v_slot), (keys, values) = slots[layer], windows[layer]
            k_slot.copy_(qkv[1])  # (H, 1, D) into the cache
            v_slot.copy_(qkv[2])
            s = torch.bmm(qkv[0], keys)  # (H, 1, n): q · k
            if tables[layer] is not None:
                s.baddbmm_(qkv[0], tables[layer])  # + q · e(distance)
            p = torch.softmax(s, dim=-1)
            if need_attention:
                attentions.append(p.view(h, 1, n).transpose(0, 1))  # (1, H, n)
            x += linear(torch.bmm(p, values).view(1, c), p_o, REDUCE_RANGE)  # x + y Wo + bo
            hid = linear(torch.layer_norm(x, (c,), w2, b2, e2), p_fc, REDUCE_RANGE)  # (1, F)
            x += linear(torch._C._nn.gelu_(hid, approximate="tanh"), p_pr, REDUCE_RANGE)
        cache.advance()
        w, bias, eps = self.ln_f
        return linear(torch.layer_norm(x, (c,), w, bias, eps), self.head, REDUCE_RANGE), attentions


_INT8_DECODERS: "weakref.WeakKeyDictionary[MusicGPT, Int8Decoder]" = weakref.WeakKeyDictionary()
