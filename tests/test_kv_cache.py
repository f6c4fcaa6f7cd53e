"""KVCache: preallocated buffers, sliding window bookkeeping, no reallocation per decode step."""

import pytest
import torch

from musicgpt.model.kv_cache import KVCache
from musicgpt.model.gpt import GPTConfig, MusicGPT


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


@pytest.mark.parametrize("batch", [1, 2])
def test_decoder_on_a_small_window_matches_the_full_forward_while_it_slides_many_times(batch):
    """Window 24 in 30 slots: the last 23 move to the front every 7 steps, and the decoder's kept views
    of slots and windows are reused after each move; every step's logits and attention must still equal
    a full forward pass whose queries each see their last 24 tokens."""
    from musicgpt.model.decode_step import Decoder
    from tiny_models import tiny_model

    model = tiny_model()  # relative range R=32 > window: distances are not clipped here
    window, length = 24, 150
    x = torch.randint(0, 391, (batch, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(x, window=window, return_attention=True)
        cache = model.new_cache(window=window, capacity=30)
        parts = [model(x[:, :5], cache=cache).logits]
        decoder = Decoder(model)
        ptr = cache.keys_t.data_ptr()
        for t in range(5, length):
            logits, att = decoder.step(x[:, t], cache, need_attention=True)
            parts.append(logits[:, None])
            n = min(t + 1, window)
            expected = out.attentions[1][:, :, t, t + 1 - n : t + 1]  # (B, H, n): the last layer's row
            assert (att[1] - expected).abs().max() <= 1e-5, t
    assert (torch.cat(parts, 1) - out.logits).abs().max() <= 1e-4
    assert cache.keys_t.data_ptr() == ptr and cache.capacity == 30  # moved in place, never reallocated
    assert cache.length == length and len(cache._windows) == 30 - window + 1  # every window start kept once
    cache.reset()  # the kept views stay valid, the short windows of a fresh start are not among them
    with torch.no_grad():
        again = torch.cat([decoder.step(x[:, t], cache)[0][:, None] for t in range(30)], 1)
        assert (again - model(x[:, :30], window=window).logits).abs().max() <= 1e-4


def test_decoder_clips_distances_past_the_relative_range():
    """Window 60 > R=32: keys 32 or more tokens back share the embedding of distance 31."""
    from musicgpt.model.decode_step import Decoder
    from tiny_models import tiny_model

    model = tiny_model()
    x = torch.randint(0, 391, (1, 140), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(x, window=60).logits
        cache = model.new_cache(window=60, capacity=70)
        decoder = Decoder(model)
        parts = [decoder.step(x[:, t], cache)[0][:, None] for t in range(140)]  # no prefill: from an empty cache
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4
