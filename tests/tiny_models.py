"""Tiny randomly initialised models for the generation, arcs and CLI tests (no trained weights needed): a plain
one, one that can be steered (controls and infilling), and long pieces for them to read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from midi_factory import make_midi, note
from musicgpt.model.gpt import GPTConfig, MusicGPT
from musicgpt.tokens.controls import controls_vocabulary
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


def steering_tokenizer(controls: tuple[str, ...] = ("composer", "density")) -> PerformanceTokenizer:
    """A tokenizer with CONTROL tokens for `controls` (composers Bach and Chopin) and infilling tokens; by
    default `steering_model`'s."""
    return PerformanceTokenizer(controls=controls_vocabulary(list(controls), ["Bach", "Chopin"]), infill=True)


def steering_model() -> tuple[MusicGPT, PerformanceTokenizer]:
    """(model, tokenizer): the tiny model grown to `steering_tokenizer()`'s vocabulary (random weights: the
    mechanics of steering, not the music)."""
    from musicgpt.training.conditioning import carry_over

    tokenizer = steering_tokenizer()
    model, _ = carry_over(tiny_model(), PerformanceTokenizer(), tokenizer, "test")
    return model.eval(), tokenizer


def long_midi(path: Path, bars: int = 60, seed: int = 0) -> Path:
    """A piece of `bars` bars at 120 bpm (two seconds a bar): left-hand eighths and a right-hand melody with
    changing velocities, so VELOCITY tokens are frequent; about 26 tokens a second."""
    rng = np.random.default_rng(seed)
    events = []
    for bar in range(bars):
        t0 = bar * 4 * 480
        for i in range(8):
            events += note(48 + [0, 7, 12, 16][i % 4], t0 + i * 240, t0 + i * 240 + 200, int(rng.integers(40, 90)))
        for beat in range(4):
            events += note(int(rng.integers(64, 80)), t0 + beat * 480, t0 + beat * 480 + 400, int(rng.integers(60, 120)))
    return make_midi(path, [events])
