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


def test_pinned_tokens_stay_first_in_the_window_as_it_slides_and_moves():
    cache = KVCache(n_layer=2, window=5, capacity=7, pinned=2)
    assert step(cache, 3, 0) == [0, 1, 2]
    assert step(cache, 1, 0) == [0, 1, 2, 3]
    assert cache.displaced == 0
    assert step(cache, 1, 0) == [0, 1, 2, 3, 4]
    assert cache.displaced == 2  # the next token's window would lose token 0: the copies take its slot
    assert step(cache, 1, 0) == [0, 1, 3, 4, 5]  # [pinned][the last window - 1 - pinned][itself]
    for t in range(6, 20):  # across several moves to the front
        assert step(cache, 1, 0) == [0, 1, t - 2, t - 1, t]
    assert repr(cache).startswith("KVCache(window=5, pinned=2,")
    with pytest.raises(ValueError, match="one token at a time"):
        step(cache, 2, 0)
    cache.reset()
    assert step(cache, 3, 100) == [100, 101, 102] and cache._pins is not None  # new pins after a reset
    for _ in range(3):
        step(cache, 1, 100)
    assert step(cache, 1, 100) == [100, 101, 104, 105, 106]
    with pytest.raises(ValueError, match="fewer than window - 1"):
        KVCache(n_layer=1, window=4, pinned=3)


def pinned_reference(model, x, window, header):
    """Logits (B, T, V) token by token with plain loops: each layer's query attends to the keys a pinned
    window holds (the first `header` tokens, then the latest ones), at the distances of their places in it."""
    b, length = x.shape
    h_, d = model.config.n_head, model.config.head_dim
    keys, values = [[] for _ in model.blocks], [[] for _ in model.blocks]
    out = []
    for t in range(length):
        hidden = model.tok_emb(x[:, t])  # (B, C)
        seen = list(range(t + 1)) if t < window else [*range(header), *range(t - (window - 1 - header), t + 1)]
        n = len(seen)
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            q, k, v = attn.qkv(block.ln_1(hidden)).view(b, 3, h_, d).unbind(1)  # each (B, H, D)
            keys[layer].append(k)
            values[layer].append(v)
            kk = torch.stack([keys[layer][j] for j in seen], 2)  # (B, H, n, D)
            vv = torch.stack([values[layer][j] for j in seen], 2)
            r = attn.rel_emb.shape[1]
            distance = torch.arange(n - 1, -1, -1).clamp(max=r - 1)  # by place in the window
            e = attn.rel_emb[:, r - 1 - distance]  # (H, n, D)
            s = (torch.einsum("bhd,bhnd->bhn", q, kk) + torch.einsum("bhd,hnd->bhn", q, e)) / d ** 0.5
            y = torch.einsum("bhn,bhnd->bhd", torch.softmax(s, -1), vv).reshape(b, h_ * d)
            hidden = hidden + attn.proj(y)
            hidden = hidden + block.mlp(block.ln_2(hidden))
        out.append(model.lm_head(model.ln_f(hidden)))
    return torch.stack(out, 1)


@pytest.mark.parametrize("batch", [1, 2])
def test_decoding_with_a_pinned_header_keeps_it_first_in_every_window(batch):
    """What a steered generation reads past its context: every step attends to [header] + the latest
    window - len(header) tokens, checked against plain loops (which without a header give the windowed forward)."""
    from musicgpt.model.decode_step import Decoder
    from tiny_models import tiny_model

    model, window, header, length = tiny_model(), 20, 3, 70
    x = torch.randint(0, 391, (batch, length), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert (pinned_reference(model, x, window, 0) - model(x, window=window).logits).abs().max() <= 1e-4
        expected = pinned_reference(model, x, window, header)
        cache = model.new_cache(window=window, capacity=26, pinned=header)
        parts = [model(x[:, :8], cache=cache).logits]
        decoder = Decoder(model)
        parts += [decoder.step(x[:, t], cache)[0][:, None] for t in range(8, length - 1)]
        parts.append(model(x[:, -1:], cache=cache).logits)  # the plain forward path reads the same window
    assert (torch.cat(parts, 1) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("batch", [1, 2])
def test_a_pair_step_equals_two_steps_on_caches_of_different_lengths(batch):
    """Guidance steps its conditional and unconditional caches in one pass: each half must equal its own
    step, while the windows of both slide (the longer one pinned, as a steered prompt's is)."""
    from musicgpt.model.decode_step import Decoder
    from tiny_models import tiny_model

    model = tiny_model()
    x = torch.randint(0, 391, (batch, 90), generator=torch.Generator().manual_seed(6))
    decoder = Decoder(model)
    with torch.no_grad():
        caches = [model.new_cache(window=24, capacity=30, pinned=2), model.new_cache(window=24, capacity=30)]
        twins = [model.new_cache(window=24, capacity=30, pinned=2), model.new_cache(window=24, capacity=30)]
        for c in (caches[0], twins[0]):
            model(x[:, :9], cache=c)  # 2 more tokens than the other: a CONTROL header
        for c in (caches[1], twins[1]):
            model(x[:, 2:9], cache=c)
        for t in range(9, 90):
            a, b, att = decoder.step_pair(x[:, t], caches[0], caches[1], need_attention=True)
            a_alone, att_alone = decoder.step(x[:, t], twins[0], need_attention=True)
            b_alone, _ = decoder.step(x[:, t], twins[1])
            assert (a - a_alone).abs().max() <= 1e-5 and (b - b_alone).abs().max() <= 1e-5, t
            assert all((p - q).abs().max() <= 1e-6 for p, q in zip(att, att_alone))
    assert [c.length for c in caches] == [90, 88]


def test_truncate_takes_back_the_last_tokens_as_if_never_fed():
    """Decode 40 tokens of one sequence on a window of 24 in 60 slots, take back the last 6, decode 8 others: the
    logits equal a full forward pass over the kept tokens and the new ones; a take-back past what the buffers
    still hold, or of a pinned cache, is refused and changes nothing."""
    from musicgpt.model.decode_step import Decoder
    from tiny_models import tiny_model

    model, window = tiny_model(), 24
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 391, (1, 40), generator=gen), torch.randint(0, 391, (1, 8), generator=gen)
    with torch.no_grad():
        cache, decoder = model.new_cache(window=window, capacity=60), Decoder(model)
        for t in range(40):
            decoder.step(a[:, t], cache)
        assert cache.truncate(6) and cache.length == 34
        logits = torch.cat([decoder.step(b[:, t], cache)[0][:, None] for t in range(8)], 1)
        full = model(torch.cat([a[:, :34], b], 1), window=window).logits[:, 34:]
    assert (logits - full).abs().max() <= 1e-4
    assert cache.truncate(cache.end) and cache.length == 0  # nothing moved yet: all of it can be taken back
    with torch.no_grad():
        small = model.new_cache(window=window, capacity=30)  # 40 tokens in 30 slots: the window moved to the front
        for t in range(40):
            decoder.step(a[:, t], small)
    length, end = small.length, small.end
    assert not small.truncate(end) and (small.length, small.end) == (length, end)  # keys it would need are gone
    pinned = model.new_cache(pinned=2)
    assert not pinned.truncate(1) and pinned.truncate(0)


def test_teacher_forcing_past_the_window_of_a_pinned_cache_reads_the_header_first(batch=1):
    """A steered prompt longer than the window (a long primer behind a CONTROL header): the prefill takes chunks
    while they fit and then one token at a time, each reading [header][its latest tokens], as the plain loops do;
    chunked past the window, the cache refused it."""
    import numpy as np

    from musicgpt.model.prefill import teacher_force
    from tiny_models import tiny_model

    model, window, header, length = tiny_model(), 20, 3, 70
    x = torch.randint(0, 391, (1, length), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = pinned_reference(model, x, window, header)  # (1, T, V)
        cache = model.new_cache(window=window, capacity=26, pinned=header)
        nll = np.zeros((1, length))
        last = teacher_force(model, x, cache, chunk=8, token_nll=nll)
    logp = torch.log_softmax(expected[0, :-1], -1).gather(-1, x[0, 1:, None])[:, 0]  # (T-1,)
    assert (last - expected[:, -1]).abs().max() <= 1e-4 and cache.length == length
    assert np.abs(nll[0, 1:] + logp.numpy()).max() <= 1e-4
