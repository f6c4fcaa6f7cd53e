"""Keys and values of past tokens for incremental decoding, in preallocated buffers with a sliding window.

Layout, heads first, chosen for the one-token decode step (musicgpt.model.decode_step), whose cost at batch 1
is reading these buffers once per step:

    keys_t  (n_layer, H, B, D, capacity)   keys transposed: slot t of head h is the column [l, h, b, :, t]
    values  (n_layer, H, B, capacity, D)

A step's query times the keys is then q (1, D) @ K (D, n): a GEMV that streams n-long rows, about
1.5x faster on a CPU than q @ Kᵀ over (n, D) rows with D = 32, and the same form as the relative
term against the transposed embeddings (musicgpt.model.decode_step). Values stay (n, D): p (1, n) @ V (n, D)
is the fast form for that product. `keys` is a (n_layer, H, B, capacity, D) view for readers.

Slots are chronological, with spare room past the window: a step writes one slot and attends to a
view of the last `window` slots, so no step allocates or copies more than its own key and value.
When the spare room runs out, the last window-1 slots (plus `reserve` older ones, which a duet may need
after taking tokens back with `truncate`) move to the front in one pass (every
capacity-window+1 steps; with the default capacity of 1.5 windows, once per half window: a few
microseconds a step, amortized). Relative attention depends on i - j only, so the window slides
freely; a model with absolute positions cannot go past its context.

Pinned tokens: a cache made with `pinned=h` keeps the first h tokens it saw (a steered prompt's CONTROL
header) in the window after the window has slid past them. Once tokens leave the window, every step
writes copies of their keys and values into the first h slots of the window, over the oldest tokens
that would otherwise still be seen: a step then reads [pinned][the last window-1-h tokens][itself],
exactly the layout of a training crop, whose header opens every window. On a CPU the buffers live on
transparent huge pages where the OS allows (musicgpt.model._hugepages): fewer TLB misses per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from musicgpt.model import _hugepages as hugepages


class KVCache:
    """Per-layer keys/values of the last `window` tokens; `length` counts every token seen."""

    def __init__(self, n_layer: int, window: int, capacity: int | None = None, pinned: int = 0, reserve: int = 0):
        if window < 1:
            raise ValueError(f"cache window must be at least 1, got {window}")
        if not 0 <= pinned < window - 1:
            raise ValueError(f"pinned tokens must be fewer than window - 1 = {window - 1}, got {pinned}")
        self.n_layer = n_layer
        self.window = window
        self.pinned = pinned
        self.reserve = max(0, int(reserve))  # tokens kept past the window so `truncate` can take them back
        self._pins: tuple[Tensor, Tensor] | None = None  # the pinned tokens' keys_t and values, once seen
        self.capacity = max(capacity or window + max(256, window // 2), window + 2 * self.reserve)
        self.keys_t: Tensor | None = None  # (n_layer, H, B, D, capacity), allocated on first use
        self.values: Tensor | None = None  # (n_layer, H, B, capacity, D)
        self.end = 0  # slots filled in the buffers
        self.length = 0  # tokens seen so far: the position of the next token
        self._n_new = 0
        self._views: tuple[Tensor, Tensor] | None = None  # the buffers as (n_layer, H*B, ...), made once
        self._slots: dict[int, list[tuple[Tensor, Tensor]]] = {}  # views kept by decode_views
        self._windows: dict[int, list[tuple[Tensor, Tensor]]] = {}

    def __repr__(self) -> str:
        shape = None if self.values is None else tuple(self.values.shape)
        pinned = f", pinned={self.pinned}" if self.pinned else ""
        return f"KVCache(window={self.window}{pinned}, length={self.length}, buffers={shape})"

    @property
    def keys(self) -> Tensor | None:
        """The keys as a (n_layer, H, B, capacity, D) view of the transposed buffer."""
        return None if self.keys_t is None else self.keys_t.transpose(-1, -2)

    @property
    def batch(self) -> int | None:
        """Sequences the buffers hold (None before the first token)."""
        return None if self.values is None else self.values.shape[2]

    @property
    def n_past(self) -> int:
        """Cached tokens that the next token can attend to (at most window - 1)."""
        return min(self.end, self.window - 1)

    @property
    def displaced(self) -> int:
        """Leading slots of the next token's window that hold the pinned tokens' copies (0 before the window slides)."""
        return self.pinned if self.pinned and self.length > self.n_past else 0

    def allocate(self, n_head: int, batch: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate the buffers for `batch` sequences (done by the first `update` or decode step)."""
        self.keys_t = hugepages.empty((self.n_layer, n_head, batch, head_dim, self.capacity), dtype, device)
        self.values = hugepages.empty((self.n_layer, n_head, batch, self.capacity, head_dim), dtype, device)
        self._pins = None
        self._forget_views()

    def begin(self, n_new: int) -> None:
        """Make room for n_new tokens in every layer; call once per forward, before the layers."""
        keep = self.n_past
        if self.end + n_new > self.capacity:
            if self.values is not None and keep + n_new > self.capacity:  # a long prompt: grow once
                self._grow(keep + n_new)
            elif self.values is not None and keep > 0:
                keep = min(self.end, keep + self.reserve, self.capacity - n_new)
                self._move_to_front(self.end - keep, keep)
            else:
                self.capacity = max(self.capacity, keep + n_new)
            self.end = keep
        self._n_new = n_new
        if self.displaced:
            if n_new != 1 or self._pins is None:
                raise ValueError("a cache with pinned tokens slides one token at a time, after seeing them")
            start = self.end - self.n_past
            self.keys_t[..., start : start + self.pinned] = self._pins[0]
            self.values[:, :, :, start : start + self.pinned] = self._pins[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this layer's new keys/values (B, H, T, D); return the ones the new queries attend to."""
        if self.values is None:
            b, h, _, d = k.shape
            self.allocate(h, b, d, k.dtype, k.device)
        t = k.shape[2]
        if k.shape[0] != self.values.shape[2]:
            raise ValueError(f"cache holds a batch of {self.values.shape[2]} sequences, got {k.shape[0]}; "
                             "start a new cache for a new batch")
        if t != self._n_new:
            raise RuntimeError(f"cache.begin({self._n_new}) was called but layer {layer} got {t} tokens")
        start, stop = self.end - self.n_past, self.end + t
        self.keys_t[layer, :, :, :, self.end : stop] = k.permute(1, 0, 3, 2)
        self.values[layer, :, :, self.end : stop] = v.transpose(0, 1)
        keys = self.keys_t[layer, :, :, :, start:stop].permute(1, 0, 3, 2)  # (B, H, n_past + T, D)
        return keys, self.values[layer, :, :, start:stop].transpose(0, 1)

    def decode_views(self) -> tuple[list[tuple[Tensor, Tensor]], list[tuple[Tensor, Tensor]]]:
        """Views for one decode step, after `begin(1)`: per layer (key slot, value slot), each (H, B, D),
        and per layer (keys (H*B, D, n), values (H*B, n, D)) of the n tokens the new one attends to.

        A view costs a framework call, about as much as a small op on a CPU, so they are cut for
        every layer at once (one narrow and one unbind), and those that recur (every slot past
        the window, every window once it is full: the same ones again after each move to the
        front) are made once and kept.
        """
        slot, start = self.end, self.end - self.n_past
        n = slot + 1 - start
        slots = self._slots.get(slot)
        if slots is None:
            slots = list(zip(self.keys_t.select(4, slot).unbind(0), self.values.select(3, slot).unbind(0)))
            if slot >= self.window - 1:
                self._slots[slot] = slots
        windows = self._windows.get(start) if n == self.window else None
        if windows is None:
            keys_t, values = self._flat()
            windows = list(zip(keys_t.narrow(3, start, n).unbind(0), values.narrow(2, start, n).unbind(0)))
            if n == self.window:
                self._windows[start] = windows
        return slots, windows

    def _flat(self) -> tuple[Tensor, Tensor]:
        """The buffers with heads and batch merged: (n_layer, H*B, D, cap) and (n_layer, H*B, cap, D)."""
        if self._views is None:
            l, h, b = self.values.shape[:3]
            self._views = (self.keys_t.view(l, h * b, *self.keys_t.shape[3:]),
                           self.values.view(l, h * b, *self.values.shape[3:]))
        return self._views

    def _forget_views(self) -> None:
        self._views = None
        self._slots.clear()
        self._windows.clear()

    def advance(self) -> None:
        """Commit the tokens of this forward pass; call once after the last layer."""
        self.end += self._n_new
        self.length += self._n_new
        self._n_new = 0
        if self.pinned and self._pins is None and self.length >= self.pinned:  # still in slots 0 … pinned-1
            self._pins = (self.keys_t[..., : self.pinned].clone(), self.values[:, :, :, : self.pinned].clone())

    def truncate(self, n: int) -> bool:
        """Forget the last `n` tokens in place (a duet takes back the notes it had not played yet); False, changing
        nothing, when the keys the window would need again are gone (slid out past the `reserve`, or overwritten
        by the pinned tokens' copies once the window slid): then rebuild."""
        if n <= 0:
            return True
        if (self.pinned and self.length > self.window - 1) or n > self.end \
                or self.end - n < min(self.length - n, self.window - 1):
            return False
        self.end -= n
        self.length -= n
        return True

    def reset(self) -> None:
        """Forget every token but keep the buffers."""
        self.end = self.length = self._n_new = 0
        self._pins = None

    def _move_to_front(self, src: int, n: int) -> None:
        """Copy slots src … src+n-1 to 0 … n-1 in pieces that never overwrite a slot not yet read."""
        shift = src
        for a in range(0, n, shift):
            b = min(a + shift, n)
            self.keys_t[..., a:b] = self.keys_t[..., a + shift : b + shift]
            self.values[:, :, :, a:b] = self.values[:, :, :, a + shift : b + shift]

    def _grow(self, capacity: int) -> None:
        keep = self.n_past
        keys_t = hugepages.empty((*self.keys_t.shape[:4], capacity), self.keys_t.dtype, self.keys_t.device)
        values = hugepages.empty((*self.values.shape[:3], capacity, self.values.shape[-1]), self.values.dtype,
                                 self.values.device)
        keys_t[..., :keep] = self.keys_t[..., self.end - keep : self.end]
        values[:, :, :, :keep] = self.values[:, :, :, self.end - keep : self.end]
        self.keys_t, self.values, self.capacity = keys_t, values, capacity
        self._forget_views()
