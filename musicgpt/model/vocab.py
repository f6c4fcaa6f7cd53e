"""Growing (or reordering) a model's vocabulary: new token embeddings for a fine-tune that adds tokens.

    model = with_vocabulary(model, source)   # source[i]: the old id whose row new id i takes, -1: a new row

The model knows ids only; which old id a new id continues (the same token name) is the caller's
business (`musicgpt.training.vocab`). A new row starts at the mean of the old embeddings, so its
logit starts near the average token's instead of at an arbitrary point, plus a small N(0, 0.02²)
to tell new rows apart.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from musicgpt.model.gpt import MusicGPT

__all__ = ["with_vocabulary"]


@torch.no_grad()
def with_vocabulary(model: MusicGPT, source, seed: int = 0) -> MusicGPT:
    """A copy of `model` whose vocabulary has len(source) ids: id i takes old row source[i], or a new row if -1."""
    source = np.asarray(source, np.int64)  # (V_new,)
    old_vocab = model.config.vocab_size
    if source.ndim != 1 or ((source < -1) | (source >= old_vocab)).any():
        raise ValueError(f"source: a list of old ids in -1..{old_vocab - 1}, one per new id")
    new = MusicGPT(replace(model.config, vocab_size=len(source))).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if k not in ("tok_emb.weight", "lm_head.weight")}
    missing = new.load_state_dict(state, strict=False).missing_keys
    assert set(missing) <= {"tok_emb.weight", "lm_head.weight"}, missing
    generator = torch.Generator().manual_seed(seed)
    for name in ("tok_emb", "lm_head"):
        old_w = getattr(model, name).weight  # (V_old, C)
        new_w = getattr(new, name).weight  # (V_new, C)
        if name == "lm_head" and model.config.tie_weights:
            continue  # shares tok_emb's rows
        kept = torch.from_numpy(np.flatnonzero(source >= 0))
        new_w[kept] = old_w[torch.from_numpy(source[source >= 0])]
        added = torch.from_numpy(np.flatnonzero(source < 0))
        if len(added):
            noise = torch.randn(len(added), old_w.shape[1], generator=generator) * 0.02  # (n_added, C)
            new_w[added] = old_w.mean(dim=0, keepdim=True) + noise.to(old_w)
    new.train(model.training)
    return new
