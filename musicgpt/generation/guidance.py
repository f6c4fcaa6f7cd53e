"""Classifier-free guidance: the same model read twice, with the controls and without, and the two mixed.

    log p_G(x) = log p(x | ∅) + G · (log p(x | controls) − log p(x | ∅))   (renormalised by the sampler)

G = 1 is the conditional model itself (no second pass); G > 1 pushes the music further towards what
the controls make likelier than they would be anyway; 0 < G < 1 softens them. The unconditional
pass reads the same primer and the same sampled tokens without the CONTROL tokens (the model learned
both: training drops controls, `musicgpt.training.conditioning`), on a KV cache of its own. Each step
feeds both caches in one `Decoder.step_pair` (2B rows: the weights, most of a small-batch step's cost,
are read once); the prompt costs a second prefill.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from musicgpt.model.prefill import PREFILL_CHUNK, teacher_force

__all__ = ["Guidance"]


class Guidance:
    """The unconditional half of a guided batch: its cache, its logits, and how they mix with the conditional ones."""

    def __init__(self, model, prompt: np.ndarray, batch: int, scale: float, chunk: int = PREFILL_CHUNK,
                 cache=None) -> None:
        self.scale = float(scale)
        self.cache = model.new_cache() if cache is None else cache  # a duet brings one that can take tokens back
        self.device = next(model.parameters()).device
        x = torch.from_numpy(np.asarray(prompt, np.int64))[None].expand(batch, -1).contiguous().to(self.device)  # (B, T)
        with torch.no_grad():
            self.logits = teacher_force(model, x, self.cache, chunk=chunk)  # (B, V)

    def mix(self, conditional: Tensor) -> Tensor:
        """(B, V) guided log-probabilities from the conditional logits and the unconditional ones."""
        cond = torch.log_softmax(conditional.float(), dim=-1)  # (B, V)
        uncond = torch.log_softmax(self.logits.float().to(cond.device), dim=-1)  # (B, V)
        return uncond + self.scale * (cond - uncond)
