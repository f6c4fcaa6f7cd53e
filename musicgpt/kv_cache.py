"""Keys and values of past tokens for incremental decoding, in preallocated buffers with a sliding window.

The buffers hold every layer's keys and values in chronological order, heads first
(n_layer, H, B, capacity, D) as the attention kernel wants them,
with spare room past the window: a decode step writes one slot and attends to a view of the last
`window` slots, so no step allocates. When the spare room runs out, the last window-1 slots move
to the front in one copy (every capacity-window+1 steps). Relative attention depends on i - j only,
so the window slides freely; a model with absolute positions cannot go past its context.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys/values of the last `window` tokens; `length` counts every token seen."""

    def __init__(self, n_layer: int, window: int, capacity: int | None = None):
        if window < 1:
            raise ValueError(f"cache window must be at least 1, got {window}")
        self.n_layer = n_layer
        self.window = window
        self.capacity = max(capacity or window + max(128, window // 8), window)
        self.keys: Tensor | None = None  # (n_layer, H, B, capacity, D), allocated on first use
        self.values: Tensor | None = None
        self.end = 0  # slots filled in the buffers
        self.length = 0  # tokens seen so far: the position of the next token
        self._n_new = 0

    def __repr__(self) -> str:
        shape = None if self.keys is None else tuple(self.keys.shape)
        return f"KVCache(window={self.window}, length={self.length}, buffers={shape})"

    @property
    def n_past(self) -> int:
        """Cached tokens that the next token can attend to (at most window - 1)."""
        return min(self.end, self.window - 1)

    def begin(self, n_new: int) -> None:
        """Make room for n_new tokens in every layer; call once per forward, before the layers."""
        keep = self.n_past
        if self.end + n_new > self.capacity:
            if self.keys is not None and keep + n_new > self.capacity:  # a long prompt: grow once
                self._grow(keep + n_new)
            elif self.keys is not None and keep > 0:
                old = slice(self.end - keep, self.end)
                self.keys[:, :, :, :keep] = self.keys[:, :, :, old].clone()
                self.values[:, :, :, :keep] = self.values[:, :, :, old].clone()
            else:
                self.capacity = max(self.capacity, keep + n_new)
            self.end = keep
        self._n_new = n_new

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this layer's new keys/values (B, H, T, D); return the ones the new queries attend to."""
        if self.keys is None:
            b, h, _, d = k.shape
            shape = (self.n_layer, h, b, self.capacity, d)
            self.keys = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.values = torch.empty(shape, dtype=v.dtype, device=v.device)
        t = k.shape[2]
        if k.shape[0] != self.keys.shape[2]:
            raise ValueError(f"cache holds a batch of {self.keys.shape[2]} sequences, got {k.shape[0]}; "
                             "start a new cache for a new batch")
        if t != self._n_new:
            raise RuntimeError(f"cache.begin({self._n_new}) was called but layer {layer} got {t} tokens")
        start = self.end - self.n_past
        self.keys[layer, :, :, self.end : self.end + t] = k.transpose(0, 1)
        self.values[layer, :, :, self.end : self.end + t] = v.transpose(0, 1)
        keys = self.keys[layer, :, :, start : self.end + t].transpose(0, 1)  # (B, H, n_past + T, D)
        return keys, self.values[layer, :, :, start : self.end + t].transpose(0, 1)

    def advance(self) -> None:
        """Commit the tokens of this forward pass; call once after the last layer."""
        self.end += self._n_new
        self.length += self._n_new
        self._n_new = 0

    def reset(self) -> None:
        """Forget every token but keep the buffers."""
        self.end = self.length = self._n_new = 0

    def _grow(self, capacity: int) -> None:
        keep = self.n_past
        shape = (*self.keys.shape[:3], capacity, self.keys.shape[-1])
        keys = self.keys.new_empty(shape)
        values = self.values.new_empty(shape)
        keys[:, :, :, :keep] = self.keys[:, :, :, self.end - keep : self.end]
        values[:, :, :, :keep] = self.values[:, :, :, self.end - keep : self.end]
        self.keys, self.values, self.capacity = keys, values, capacity
