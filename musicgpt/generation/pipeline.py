"""Hugging Face-style conveniences: `set_seed(42)` and `pipeline()`, a model loaded once and called like a function.

    musicgpt.set_seed(42)
    gen = musicgpt.pipeline()                        # the bundled model; or pipeline("runs/piano")
    samples = gen("primer.mid", max_new_tokens=512, num_return_sequences=5)
    samples[0].to_midi("out.mid")

A call takes `generate`'s keyword arguments (temperature, top_p, seconds, arcs, ...), with the names
Hugging Face users know as aliases: `num_return_sequences` for `num_samples`, `do_sample=False` for
greedy decoding (temperature 0).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from musicgpt.generation.loop import generate
from musicgpt.generation.sample import Sample
from musicgpt.generation.setup import load_model_and_tokenizer

__all__ = ["set_seed", "pipeline", "GenerationPipeline"]


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's random numbers: later calls that draw a seed (generate without
    `seed=`, training crops, dropout) repeat from here."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class GenerationPipeline:
    """A model and its tokenizer (the one it carries, unless given), loaded once; calling it continues a primer."""

    def __init__(self, model=None, tokenizer=None, device: str | torch.device | None = None):
        self.model, self.tokenizer = load_model_and_tokenizer(model, tokenizer, device)

    def __call__(self, primer: Any = None, *, num_return_sequences: int | None = None, do_sample: bool = True,
                 **kwargs: Any) -> list[Sample]:
        """`generate(model, primer, ...)` with this pipeline's model; returns the samples."""
        if num_return_sequences is not None:
            kwargs.setdefault("num_samples", num_return_sequences)
        if not do_sample:
            kwargs["temperature"] = 0.0
        return generate(self.model, primer, tokenizer=self.tokenizer, **kwargs)

    def __repr__(self) -> str:
        cfg = self.model.config
        return f"GenerationPipeline({cfg.n_layer} layers, d_model {cfg.d_model}, {self.tokenizer!r})"


def pipeline(model: str | os.PathLike | None = None, *, tokenizer=None,
             device: str | torch.device | None = None) -> GenerationPipeline:
    """A generation pipeline for a checkpoint (a directory, a run directory, 'bundled' or None: the bundled model)."""
    return GenerationPipeline(model, tokenizer, device)
