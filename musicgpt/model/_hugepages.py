"""CPU tensors on transparent huge pages, for the buffers a decode step streams through every step.

A one-token decode step of the `small` model reads ~38 MB (weights, cached keys and values,
relative embeddings): ~10,000 pages of 4 KB, each a TLB miss, and a costly one in a virtual
machine. On 2 MB pages that is ~20. Linux backs an anonymous mapping with huge pages when it is
advised to (`madvise(MADV_HUGEPAGE)`, honoured when /sys/kernel/mm/transparent_hugepage/enabled is
`always` or `madvise`); measured here, decode steps with a full window were ~10% faster
(bench/generate.py). Elsewhere (another OS, a GPU, small tensors) these are plain `torch.empty`.
"""

from __future__ import annotations

import math
import mmap

import torch
from torch import Tensor

HUGE_PAGE = 2 << 20
ALIGN = 64  # bytes: each packed tensor starts on a cache line


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """An uninitialized tensor, on huge pages when it is a CPU tensor of at least one huge page."""
    device = torch.device(device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if device.type != "cpu" or nbytes < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype, device=device)
    return _arena(nbytes)[:nbytes].view(dtype).view(shape)


def pack(tensors: list[Tensor]) -> list[Tensor]:
    """Contiguous copies of CPU tensors, side by side in one buffer (on huge pages when large enough)."""
    if not tensors or any(t.device.type != "cpu" for t in tensors):
        return [t.contiguous() for t in tensors]
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + (size + ALIGN - 1) // ALIGN * ALIGN)
    if offsets[-1] < HUGE_PAGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return [t.clone(memory_format=torch.contiguous_format) for t in tensors]
    buf = _arena(offsets[-1])
    out = []
    for t, start, size in zip(tensors, offsets, sizes):
        copy = buf[start : start + size].view(t.dtype).view(t.shape)
        copy.copy_(t)
        out.append(copy)
    return out


def _arena(nbytes: int) -> Tensor:
    """A uint8 CPU tensor of at least nbytes starting on a huge-page boundary, advised to use huge pages."""
    size = (nbytes + 2 * HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE  # room to align the start
    mm = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mm.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # transparent huge pages off: ordinary pages, same tensor
        pass
    buf = torch.frombuffer(mm, dtype=torch.uint8)  # keeps the mapping alive as long as any view of it
    start = (-buf.data_ptr()) % HUGE_PAGE
    return buf[start : start + nbytes]
