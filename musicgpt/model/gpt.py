"""MusicGPT: a pre-LayerNorm GPT-2 decoder with relative-position self-attention (Music Transformer).

The model knows token ids only. A loaded model carries its checkpoint's tokenizer as `model.tokenizer`
(None for a model built from a config), so that generation, arcs and the studio read the ids as they were
trained; the model itself never reads it. Loading and saving live in musicgpt.checkpoint (`load_into`,
`save`); `from_pretrained`, `save_pretrained`, `load_model` and `save_model` here hand it this class.

Relative embeddings are learned per layer and per head, `blocks.N.attn.rel_emb` of shape
(n_head, max_relative_distance, head_dim), as in Huang et al. 2018 ("learned separately for each
head"). They are not shared across heads because that sharing saves nothing at run time (each
head still multiplies its own queries by the table, the same FLOPs either way) and costs only
n_head·R·D parameters per layer, while separate tables let one head track the beat, another the
previous note, another the bar, which is exactly what the attention arcs show. Rows are ordered
by *descending* distance: row R-1-d holds distance d (the paper's "from -L+1 to 0" order), so
the embeddings of distances n-1 … 0 are a contiguous slice. Distances of R-1 and more share row 0.
`MusicGPT.relative_embeddings(layer)` returns them in ascending order for inspection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from musicgpt.errors import ConfigError
from musicgpt.model.attention import attention_probs, relative_attention
from musicgpt.model.config import GPTConfig
from musicgpt.model.kv_cache import KVCache

__all__ = ["MusicGPT", "ModelOutput", "SelfAttention", "Block", "MLP", "load_model", "save_model", "load_checkpoint"]


@dataclass
class ModelOutput:
    """What `MusicGPT.forward` returns."""

    logits: Tensor  # (B, L, vocab_size)
    loss: Tensor | None = None  # mean NLL in nats over targets != -100
    cache: KVCache | None = None  # the updated cache when one was passed
    attentions: list[Tensor] | None = field(default=None)  # per layer (B, H, Lq, Lk) when asked


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with optional relative-position logits."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.relative = cfg.position in ("relative", "both")
        if self.relative:
            self.rel_emb = nn.Parameter(torch.empty(cfg.n_head, cfg.max_relative_distance, cfg.head_dim))
        self.attn_dropout = cfg.attn_dropout
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cache: KVCache | None, layer: int, window: int | None,
                return_attention: bool) -> tuple[Tensor, Tensor | None]:
        b, t, c = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim)
        if self.relative:  # stored heads-first, (3, H, B, T, D): the relative kernel's layout
            q, k, v = (x.transpose(0, 1) for x in qkv.permute(2, 3, 0, 1, 4).contiguous())  # (B, H, T, D)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, n_past + T, D)
            window = cache.window
        rel = self.rel_emb if self.relative else None
        p_drop = self.attn_dropout if self.training else 0.0
        if self.relative:
            y = relative_attention(q, k, v, rel, window=window, dropout_p=p_drop)
        else:
            y = _absolute_attention(q, k, v, window, p_drop)
        probs = attention_probs(q, k, rel, window=window) if return_attention else None
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.resid_drop(self.proj(y)), probs


def _absolute_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None, dropout_p: float) -> Tensor:
    """Plain causal attention through PyTorch's SDPA (its fused kernels when possible)."""
    lq, lk = q.shape[2], k.shape[2]
    if window is None and lq == lk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if window is None and lq == 1:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    i = torch.arange(lk - lq, lk, device=q.device)[:, None]
    j = torch.arange(lk, device=q.device)[None, :]
    allowed = j <= i
    if window is not None:
        allowed &= i - j < window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)


class MLP(nn.Module):
    """Position-wise feed-forward: d_model -> d_ff -> d_model with GELU."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache, layer, window, return_attention):
        a, probs = self.attn(self.ln_1(x), cache, layer, window, return_attention)
        x = x + a
        return x + self.mlp(self.ln_2(x)), probs


class MusicGPT(nn.Module):
    """Decoder-only GPT-2 over event-token ids with relative (and/or absolute) positions."""

    config_class = GPTConfig  # what musicgpt.checkpoint builds from a checkpoint's config.json

    def __init__(self, config: GPTConfig, tokenizer: Any = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer  # carried for its callers (a loaded model: its checkpoint's); never read here
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        if config.position in ("absolute", "both"):
            self.pos_emb = nn.Embedding(config.n_ctx, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialization; residual output projections scaled by 1/√(2·n_layer)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_"):
                nn.init.ones_(p)
            else:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def num_parameters(self) -> int:
        """Trainable parameters, tied weights counted once."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, window: int | None = None, capacity: int | None = None, pinned: int = 0,
                  reserve: int = 0) -> KVCache:
        """An empty KV cache; `window` (default n_ctx) is how many tokens each query sees, `pinned` how many
        first tokens stay in it (a CONTROL header), `reserve` how many it keeps past the window to take back
        (see KVCache)."""
        return KVCache(self.config.n_layer, window or self.config.n_ctx, capacity, pinned, reserve)

    def forward(self, ids: Tensor, targets: Tensor | None = None, cache: KVCache | bool | None = None,
                return_attention: bool = False, window: int | None = None) -> ModelOutput:
        """Logits (B, L, vocab) for ids (B, L); with a cache, ids continue the cached tokens.

        cache=True starts a new cache. `window` limits each query to the last `window` tokens
        (itself included); a cache brings its own window. With return_attention, `.attentions[l]`
        is (B, H, Lq, Lk) whose last key column is the last query's own position.
        """
        if cache is True:
            cache = self.new_cache()
        elif cache is False:
            cache = None
        b, t = ids.shape
        start = 0
        if cache is not None:
            start = cache.length
            cache.begin(t)
        elif t > self.config.n_ctx and self.config.position != "relative":
            raise ConfigError(f"input of {t} tokens exceeds n_ctx={self.config.n_ctx} of a model with absolute positions")
        x = self.tok_emb(ids)  # (B, L, C)
        if self.config.position != "relative":
            if start + t > self.config.n_ctx:
                raise ConfigError(f"position {start + t - 1} is past n_ctx={self.config.n_ctx} of a model with "
                                  f"absolute positions; only position='relative' can slide its window")
            x = x + self.pos_emb(torch.arange(start, start + t, device=ids.device))
        x = self.drop(x)
        attentions = [] if return_attention else None
        for layer, block in enumerate(self.blocks):
            x, probs = block(x, cache, layer, window, return_attention)
            if return_attention:
                attentions.append(probs)
        if cache is not None:
            cache.advance()
        logits = self.lm_head(self.ln_f(x))  # (B, L, V)
        loss = None
        if targets is not None:
            flat = logits.view(-1, logits.shape[-1]).to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, cache=cache, attentions=attentions)

    def relative_embeddings(self, layer: int) -> Tensor:
        """Relative embeddings of one layer by ascending distance, (H, R, D): [:, d] is distance d."""
        return self.blocks[layer].attn.rel_emb.detach().flip(1)

    # ---- checkpoint directories: musicgpt.checkpoint loads and saves ---------------------------
    def save_pretrained(self, path: str | Path, tokenizer: Any = None, *, dtype: torch.dtype | None = None,
                        meta: dict[str, Any] | None = None, states: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint directory (config.json, model.safetensors, tokenizer.json, extra states) atomically.

        tokenizer: default the one the model carries; dtype: store floating-point weights in this dtype
        (bfloat16, float16); states: extra named states beside the model, such as {"optimizer": ...}.
        """
        from musicgpt import checkpoint

        return checkpoint.save(self, path, tokenizer, dtype=dtype, meta=meta, states=states)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "MusicGPT":
        """The model of a checkpoint directory with its tokenizer (`model.tokenizer`), in eval mode (default: the
        bundled model)."""
        from musicgpt import checkpoint

        return checkpoint.load_into(cls, path, device=device, dtype=dtype)

    def tied_weights(self) -> set[str]:
        """State-dict names that are another tensor under a second name (stored once in a checkpoint)."""
        return {"lm_head.weight"} if self.config.tie_weights else set()


def load_checkpoint(path: str | Path | None = None, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[MusicGPT, Any]:
    """(model, its tokenizer or None) of a checkpoint directory (default: the bundled model)."""
    model = MusicGPT.from_pretrained(path, device=device, dtype=dtype)
    return model, model.tokenizer


def load_model(path: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> MusicGPT:
    """The model of a checkpoint directory, carrying its tokenizer, in eval mode (default: the bundled model)."""
    return MusicGPT.from_pretrained(path, device=device, dtype=dtype)


def save_model(model: MusicGPT, path: str | Path, tokenizer: Any = None, **kwargs: Any) -> Path:
    """Write `model` (and its tokenizer) as a checkpoint directory: `MusicGPT.save_pretrained`."""
    return model.save_pretrained(path, tokenizer, **kwargs)
