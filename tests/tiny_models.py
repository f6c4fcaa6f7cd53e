"""Tiny randomly initialised models for the generation, arcs and CLI tests (no trained weights needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from musicgpt.model.gpt import GPTConfig, MusicGPT
from musicgpt.tokens.performance import PerformanceTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
PRIMER = FIXTURES / "pop909_331.mid"
QK_SCALE = 6.0


def tiny_model(position: str = "relative", seed: int = 0, peaky: bool = True, **overrides) -> MusicGPT:
    """The 'tiny' preset (n_ctx 128, R 32), float32, eval mode, no dropout.

    peaky: larger query/key weights and relative embeddings, so attention rows are far from uniform
    (an untrained model's near-uniform rows would make top-k choices hinge on rounding).
    """
    torch.manual_seed(seed)
    model = MusicGPT(GPTConfig.preset("tiny", position=position, dropout=0.0, **overrides)).eval()
    if peaky:
        with torch.no_grad():
            d = model.config.d_model
            for block in model.blocks:
                block.attn.qkv.weight[: 2 * d].mul_(QK_SCALE)
                if hasattr(block.attn, "rel_emb"):
                    block.attn.rel_emb.normal_(0, 1.0)
    return model


def tiny_checkpoint(path: Path, **kw) -> Path:
    """A tiny model with the default PerformanceTokenizer saved as a checkpoint directory."""
    return tiny_model(**kw).save_pretrained(path, tokenizer=PerformanceTokenizer())
