"""Relative attention: the skewed Srel and the blocked autograd kernel against a naive gather reference."""

import math

import pytest
import torch

from musicgpt import attention
from musicgpt.attention import attention_probs, relative_attention, relative_logits


def naive_srel(q, rel_emb, n_keys):
    """Srel[b, h, i, j] = q_i · e[clip(dist)] by gathering one embedding per (i, j) pair."""
    lq, r = q.shape[2], rel_emb.shape[1]
    ascending = rel_emb.flip(1)  # [:, d] is distance d
    i = torch.arange(n_keys - lq, n_keys)[:, None]
    j = torch.arange(n_keys)[None, :]
    dist = (i - j).clamp(0, r - 1)  # (Lq, Lk)
    e = ascending[:, dist]  # (H, Lq, Lk, D): the O(L²·D) tensor skewing avoids
    return torch.einsum("bhid,hijd->bhij", q, e)


def naive_attention(q, k, v, rel_emb, window=None, return_probs=False):
    lq, lk = q.shape[2], k.shape[2]
    logits = q @ k.transpose(-1, -2)
    if rel_emb is not None:
        logits = logits + naive_srel(q, rel_emb, lk)
    logits = logits / math.sqrt(q.shape[-1])
    i = torch.arange(lk - lq, lk)[:, None]
    j = torch.arange(lk)[None, :]
    masked = j > i
    if window is not None:
        masked = masked | (i - j >= window)
    p = logits.masked_fill(masked, float("-inf")).softmax(-1)
    return p if return_probs else p @ v


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("lq,lk,r", [(7, 7, 16), (20, 20, 8), (5, 30, 8), (1, 12, 4), (33, 33, 33)])
def test_skewed_srel_equals_gather(lq, lk, r):
    q, rel = rand(2, 3, lq, 4), rand(3, r, 4, seed=1)
    got = relative_logits(q, rel, lk)
    want = naive_srel(q, rel, lk)
    causal = (torch.arange(lk)[None, :] <= torch.arange(lk - lq, lk)[:, None])  # future entries unspecified
    torch.testing.assert_close(got[..., causal], want[..., causal])


CASES = [  # (Lq, Lk, R, window, block): below and above R, several blocks, windows, queries at the end of keys
    (10, 10, 16, None, 4),
    (37, 37, 8, None, 8),
    (37, 37, 8, 5, 8),
    (24, 24, 32, 11, 7),
    (6, 29, 8, None, 4),
    (6, 29, 8, 9, 4),
    (1, 29, 8, None, 128),
    (1, 29, 40, 7, 128),
]


@pytest.mark.parametrize("lq,lk,r,window,block", CASES)
def test_blocked_kernel_matches_naive_forward_and_backward(lq, lk, r, window, block):
    q, k, v = (rand(2, 3, n, 4, seed=s).requires_grad_() for s, n in ((0, lq), (1, lk), (2, lk)))
    rel = rand(3, r, 4, seed=3).requires_grad_()
    got = relative_attention(q, k, v, rel, window=window, block=block)
    want = naive_attention(q, k, v, rel, window)
    torch.testing.assert_close(got, want)
    grad = rand(*got.shape, seed=4)
    got_grads = torch.autograd.grad(got, (q, k, v, rel), grad)
    want_grads = torch.autograd.grad(want, (q, k, v, rel), grad)
    for name, g, w in zip("qkvr", got_grads, want_grads):
        torch.testing.assert_close(g, w, msg=f"gradient wrt {name}")


def test_gradcheck_with_dropout():
    q, k, v = (rand(1, 2, 9, 3, seed=s).requires_grad_() for s in range(3))
    rel = rand(2, 5, 3, seed=3).requires_grad_()

    def f(q, k, v, rel):
        torch.manual_seed(7)  # the kernel draws its dropout seed from torch's RNG
        return relative_attention(q, k, v, rel, window=6, dropout_p=0.3, block=4)

    assert torch.autograd.gradcheck(f, (q, k, v, rel))
    assert not torch.equal(f(q, k, v, rel), relative_attention(q, k, v, rel, window=6, block=4))


def test_attention_probs_match_naive():
    q, k = rand(2, 3, 5, 4), rand(2, 3, 13, 4, seed=1)
    rel = rand(3, 6, 4, seed=2)
    for window in (None, 4):
        got = attention_probs(q, k, rel, window=window)
        torch.testing.assert_close(got, naive_attention(q, k, k, rel, window, return_probs=True))
        torch.testing.assert_close(got.sum(-1), torch.ones(2, 3, 5, dtype=got.dtype))


def test_bfloat16_autocast_close_to_float32():
    q, k, v = (rand(2, 4, 64, 16, dtype=torch.float32, seed=s).requires_grad_() for s in range(3))
    rel = (0.3 * rand(4, 48, 16, dtype=torch.float32, seed=3)).requires_grad_()
    want = relative_attention(q, k, v, rel, block=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = relative_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), rel, block=16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.05, rtol=0.05)
    got.float().sum().backward()
    assert rel.grad.dtype == torch.float32 and torch.isfinite(rel.grad).all()
    want_grad = torch.autograd.grad(want.sum(), rel)[0]
    assert torch.nn.functional.cosine_similarity(rel.grad.flatten(), want_grad.flatten(), dim=0) > 0.99


def test_absolute_kernel_without_relative_embeddings():
    q, k, v = (rand(1, 2, 12, 4, seed=s) for s in range(3))
    torch.testing.assert_close(relative_attention(q, k, v, None, block=5), naive_attention(q, k, v, None))


@pytest.fixture
def head_groups_on_threads(monkeypatch):
    """Force the path that splits heads over worker threads, whatever the size."""
    monkeypatch.setattr(attention, "PARALLEL_MIN_WORK", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("window,dropout_p", [(None, 0.0), (7, 0.0), (None, 0.4)])
def test_heads_split_over_threads_give_the_same_result(head_groups_on_threads, window, dropout_p):
    q, k, v = (rand(2, 3, 21, 4, seed=s).requires_grad_() for s in range(3))
    rel = rand(3, 9, 4, seed=3).requires_grad_()

    def f(*args):
        torch.manual_seed(5)
        return relative_attention(*args, window=window, dropout_p=dropout_p, block=8)

    out = f(q, k, v, rel)
    grads = torch.autograd.grad(out, (q, k, v, rel), rand(*out.shape, seed=4))
    attention.PARALLEL_MIN_WORK = 1 << 60  # now the single-threaded path: identical masks and results
    out1 = f(q, k, v, rel)
    grads1 = torch.autograd.grad(out1, (q, k, v, rel), rand(*out.shape, seed=4))
    torch.testing.assert_close(out, out1)
    for g, g1 in zip(grads, grads1):
        torch.testing.assert_close(g, g1)
    if dropout_p == 0:
        torch.testing.assert_close(out, naive_attention(q, k, v, rel, window))
