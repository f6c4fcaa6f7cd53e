"""GPTConfig: the shape of a MusicGPT (layers, heads, widths, context, positions), and the named presets."""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from musicgpt.device import check_memory
from musicgpt.errors import ConfigError

__all__ = ["GPTConfig", "PRESETS", "POSITIONS"]

POSITIONS = ("relative", "absolute", "both")
SIZES = ("vocab_size", "n_layer", "n_head", "d_model", "d_ff", "n_ctx", "max_relative_distance")
FLOAT_BYTES = 4  # float32: what a model is built in before any cast


@dataclass
class GPTConfig:
    """Shape of a MusicGPT model; `GPTConfig.preset(name)` gives the named sizes."""

    vocab_size: int = 391
    n_layer: int = 6
    n_head: int = 8
    d_model: int = 256
    d_ff: int = 1024
    n_ctx: int = 1024  # context length the model is trained on (and the absolute embedding's size)
    max_relative_distance: int = 1024  # R: one embedding per distance 0 … R-1, longer ones clipped
    position: str = "relative"  # "relative", "absolute" (GPT-2 learned positions) or "both"
    dropout: float = 0.1  # on embeddings, attention output and MLP output
    attn_dropout: float = 0.0  # on attention probabilities (costs speed; see bench/attention.py)
    tie_weights: bool = True  # the output head reuses the token embedding
    bias: bool = True  # biases in Linear layers and LayerNorms

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ConfigError(f"model.position: {self.position!r} is not one of {', '.join(POSITIONS)}")
        for name in SIZES:
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model.{name}: must be a positive integer, got {value!r}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model: {self.d_model} is not divisible by n_head={self.n_head}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ConfigError(f"model.{name}: must be a number in [0, 1), got {value!r}")
        for name in ("tie_weights", "bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name}: must be true or false, got {getattr(self, name)!r}")
        # refused here, before torch allocates (and fails with a traceback) or the machine starts to swap: a model
        # that cannot hold its weights and one sequence's keys and values over its context can do nothing here
        check_memory(self.weight_bytes() + self.cache_bytes(),
                     f"model: {self.num_parameters():.3g} parameters and one {self.n_ctx}-token context "
                     f"({self.describe()})")

    def num_parameters(self) -> int:
        """The parameters a MusicGPT of this shape has (tied weights counted once), computed without building it."""
        d, f, b = self.d_model, self.d_ff, int(self.bias)
        block = (2 * (d + b * d)  # two LayerNorms
                 + 3 * d * d + b * 3 * d + d * d + b * d  # qkv and the output projection
                 + (self.max_relative_distance * d if self.position in ("relative", "both") else 0)  # (H, R, D)
                 + d * f + b * f + f * d + b * d)  # the MLP
        positions = self.n_ctx * d if self.position in ("absolute", "both") else 0
        head = 0 if self.tie_weights else self.vocab_size * d
        return self.vocab_size * d + positions + self.n_layer * block + (d + b * d) + head

    def weight_bytes(self) -> int:
        """Bytes of the weights in float32."""
        return self.num_parameters() * FLOAT_BYTES

    def cache_bytes(self, batch: int = 1) -> int:
        """Bytes of the keys and values of every layer over a full context, in float32 (a KV cache's least)."""
        return 2 * self.n_layer * int(batch) * self.n_ctx * self.d_model * FLOAT_BYTES

    def forward_bytes(self, batch: int, length: int, training: bool = False, value_bytes: int = FLOAT_BYTES) -> int:
        """A lower bound on what one forward pass over batch x length tokens and its loss allocate beside the
        weights: the logits and the loss's log-softmax of them, one layer's queries, keys and values (training:
        also every layer's input, kept for backward)."""
        per_token = 2 * self.vocab_size + 3 * self.d_model + (self.n_layer * self.d_model if training else 0)
        return int(batch) * int(length) * per_token * value_bytes

    def describe(self) -> str:
        """The sizes in one line: 'n_layer 6, n_head 8, d_model 256, ...'."""
        return ", ".join(f"{name} {getattr(self, name)}" for name in SIZES)

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named size ('tiny', 'small', 'base'), optionally with some fields changed."""
        if name not in PRESETS:
            raise ConfigError(f"model preset: {name!r} is not one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides) if overrides else replace(PRESETS[name])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        """Build from a dict (config.json, TOML), rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form of every field."""
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None) -> "GPTConfig":
        """The model config of a checkpoint directory (default: the bundled model)."""
        from musicgpt import checkpoint  # loading's home; it imports no model code

        return checkpoint.read_model_config(path, cls)


PRESETS: dict[str, GPTConfig] = {
    # For tests: tiny, and with R below n_ctx so clipping is exercised.
    "tiny": GPTConfig(n_layer=2, n_head=2, d_model=32, d_ff=64, n_ctx=128, max_relative_distance=32),
    # Trainable on a CPU in hours (the benchmark shape of bench/attention.py).
    "small": GPTConfig(n_layer=6, n_head=8, d_model=256, d_ff=1024, n_ctx=1024, max_relative_distance=1024),
    # Paper-like (Huang et al. 2018 piano model): 6 layers, d_model 512, 8 heads, 2048 tokens.
    "base": GPTConfig(n_layer=6, n_head=8, d_model=512, d_ff=2048, n_ctx=2048, max_relative_distance=2048),
}
