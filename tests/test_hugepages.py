"""hugepages: packed copies equal their sources; large CPU buffers start on a huge-page boundary."""

import mmap

import pytest
import torch

from musicgpt.model import _hugepages as hugepages


def test_pack_copies_side_by_side():
    tensors = [torch.randn(700, 1024), torch.randn(3, 5).t(), torch.arange(10), torch.randn(1024, 300).bfloat16()]
    packed = hugepages.pack(tensors)
    for src, copy in zip(tensors, packed):
        assert copy.dtype == src.dtype and copy.shape == src.shape and copy.is_contiguous()
        assert torch.equal(copy, src) and copy.data_ptr() != src.data_ptr()
    if hasattr(mmap, "MADV_HUGEPAGE"):  # one buffer, aligned starts
        assert packed[0].data_ptr() % hugepages.HUGE_PAGE == 0
        assert all(t.data_ptr() % hugepages.ALIGN == 0 for t in packed)
        assert packed[1].data_ptr() - packed[0].data_ptr() == 700 * 1024 * 4
    small = hugepages.pack([torch.ones(3)])
    assert torch.equal(small[0], torch.ones(3))


@pytest.mark.parametrize("shape", [(2, 3), (4, 512, 1024)])
def test_empty_has_the_shape_and_dtype(shape):
    t = hugepages.empty(shape, torch.float32)
    assert t.shape == shape and t.dtype == torch.float32 and t.is_contiguous()
    t.fill_(2.0)
    assert float(t.sum()) == 2.0 * t.numel()
    if t.numel() * 4 >= hugepages.HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        assert t.data_ptr() % hugepages.HUGE_PAGE == 0
