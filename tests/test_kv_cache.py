"""KVCache: preallocated buffers, sliding window bookkeeping, no reallocation per decode step."""

import pytest
import torch

from musicgpt.kv_cache import KVCache
from musicgpt.model import GPTConfig, MusicGPT


def step(cache, n, value):
    """Feed n tokens whose keys/values equal their position (+ value offset) in every layer."""
    cache.begin(n)
    pos = torch.arange(cache.length, cache.length + n, dtype=torch.float32) + value
    kv = pos.view(1, 1, n, 1).expand(1, 2, n, 3)  # (B=1, H=2, T, D=3)
    seen = [cache.update(layer, kv, kv) for layer in range(cache.n_layer)]
    cache.advance()
    return seen[0][0][0, 0, :, 0].tolist()  # positions attended by the new tokens


def test_window_holds_the_last_tokens_in_order():
    cache = KVCache(n_layer=2, window=4, capacity=6)
    assert step(cache, 3, 0) == [0, 1, 2]
    assert step(cache, 1, 0) == [0, 1, 2, 3]
    assert step(cache, 1, 0) == [1, 2, 3, 4]  # 0 slid out
    assert step(cache, 1, 0) == [2, 3, 4, 5]
    assert step(cache, 1, 0) == [3, 4, 5, 6]  # compacted: the buffer was full
    assert step(cache, 2, 0) == [4, 5, 6, 7, 8]  # queries 7, 8 see 3 + themselves (windowed by the mask)
    assert cache.length == 9 and cache.capacity == 6


def test_decode_steps_do_not_reallocate():
    model = MusicGPT(GPTConfig.preset("tiny")).eval()
    cache = model.new_cache(window=16, capacity=64)
    with torch.no_grad():
        model(torch.zeros(1, 10, dtype=torch.long), cache=cache)
        ptr = cache.keys.data_ptr()
        for _ in range(50):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
    assert cache.keys.data_ptr() == ptr and cache.keys.shape == (2, 2, 1, 64, 16)  # (layer, H, B, slot, D)
    assert cache.length == 60 and cache.n_past == 15


def test_long_prompt_grows_once():
    cache = KVCache(n_layer=1, window=4, capacity=5)
    step(cache, 2, 0)
    assert step(cache, 9, 0) == list(range(11))  # the 2 cached + 9 new
    assert cache.capacity >= 11
    assert step(cache, 1, 0) == [8, 9, 10, 11]


def test_reset_and_bad_window():
    cache = KVCache(n_layer=1, window=3)
    step(cache, 2, 0)
    cache.reset()
    assert step(cache, 1, 0) == [0]
    with pytest.raises(ValueError):
        KVCache(n_layer=1, window=0)


def test_a_cache_belongs_to_one_batch():
    model = MusicGPT(GPTConfig.preset("tiny")).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(2, 3, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="batch of 2"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)
