"""Relative attention: the skewed Srel and the blocked autograd kernel against a naive gather reference."""

import math

import pytest
import torch

from musicgpt.model import relative_kernel, attention, attention_eager
from musicgpt.model.attention import attention_probs, relative_attention, relative_logits


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


@pytest.mark.parametrize("path", ["eager", "sdpa"])  # the blocked eager path; SDPA with a bias (CUDA's default)
@pytest.mark.parametrize("lq,lk,r,window,block", CASES)
def test_relative_attention_matches_naive_forward_and_backward(lq, lk, r, window, block, path, monkeypatch):
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", path)
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
    no_rel = relative_attention(q, k, v, None, window=window, block=block)
    torch.testing.assert_close(no_rel, naive_attention(q, k, v, None, window))


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
    monkeypatch.setattr(attention_eager, "PARALLEL_MIN_WORK", 0)
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
    attention_eager.PARALLEL_MIN_WORK = 1 << 60  # now the single-threaded path: identical masks and results
    out1 = f(q, k, v, rel)
    grads1 = torch.autograd.grad(out1, (q, k, v, rel), rand(*out.shape, seed=4))
    torch.testing.assert_close(out, out1)
    for g, g1 in zip(grads, grads1):
        torch.testing.assert_close(g, g1)
    if dropout_p == 0:
        torch.testing.assert_close(out, naive_attention(q, k, v, rel, window))


@pytest.fixture
def eager_path(monkeypatch):
    """Force the eager PyTorch path (no fused kernel) for this test."""
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "eager")


@pytest.mark.parametrize("first", ["inference_mode", "no_grad"])
def test_scratch_buffers_work_after_inference_mode(eager_path, first):
    # Reported by generation: scratch buffers made under torch.inference_mode() are inference tensors,
    # and writing them in place under no_grad afterwards raised "Inplace update to inference tensor".
    q, k, v = (rand(1, 2, 9, 4, dtype=torch.float32, seed=s) for s in range(3))
    rel = rand(2, 5, 4, dtype=torch.float32, seed=3)
    attention.release_scratch()
    modes = [torch.inference_mode, torch.no_grad]
    if first == "no_grad":
        modes.reverse()
    outs = []
    for mode in modes + modes:
        with mode():
            outs.append(relative_attention(q, k, v, rel, block=4))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])
    torch.testing.assert_close(outs[0], naive_attention(q, k, v, rel).float())


# ---- the fused CPU kernel (musicgpt/model/csrc/relative_attention.cpp) ----

@pytest.fixture
def kernel(monkeypatch):
    """Skip without the fused kernel (no compiler here)."""
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "auto")
    if not relative_kernel.load():
        pytest.skip("the fused relative-attention kernel cannot be built here")


@pytest.fixture
def kernel_calls(kernel, monkeypatch):
    """Count the fused kernel's forward and backward calls."""
    calls = {"forward": 0, "backward": 0}
    for name in calls:
        real = getattr(relative_kernel, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(relative_kernel, name, counted)
    return calls


KERNEL_CASES = [  # (Lq, Lk, R, window, block, relative): below and above R, windows, queries at the end of keys
    (10, 10, 16, None, 4, True),
    (37, 37, 8, None, 8, True),
    (37, 37, 8, 5, 8, True),
    (24, 24, 32, 11, 7, True),
    (6, 29, 8, None, 4, True),
    (6, 29, 8, 9, 4, True),
    (1, 29, 40, 7, 64, True),
    (70, 70, 100, None, 64, True),
    (70, 70, 20, 33, 64, True),
    (19, 19, 8, 6, 8, False),
]


@pytest.mark.parametrize("lq,lk,r,window,block,relative", KERNEL_CASES)
def test_fused_kernel_matches_naive(kernel_calls, lq, lk, r, window, block, relative):
    q, k, v = (rand(2, 3, n, 4, dtype=torch.float32, seed=s).requires_grad_() for s, n in ((0, lq), (1, lk), (2, lk)))
    rel = rand(3, r, 4, dtype=torch.float32, seed=3).requires_grad_() if relative else None
    inputs = [t for t in (q, k, v, rel) if t is not None]
    got = relative_attention(q, k, v, rel, window=window, block=block)
    grad = rand(*got.shape, dtype=torch.float32, seed=4)
    got_grads = torch.autograd.grad(got, inputs, grad)
    assert kernel_calls == {"forward": 1, "backward": 1}
    ref = [t.detach().double().requires_grad_() for t in inputs]
    want = naive_attention(*ref[:3], ref[3] if relative else None, window)
    want_grads = torch.autograd.grad(want, ref, grad.double())
    torch.testing.assert_close(got, want.float(), atol=2e-6, rtol=1e-5)
    for name, g, w in zip("qkvr", got_grads, want_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w.float(), atol=1e-5, rtol=1e-4, msg=f"gradient wrt {name}")


def test_fused_kernel_reads_strided_views_and_no_grad(kernel_calls):
    # the model hands over views of one (B, T, 3, H, D) projection, or heads-first storage
    b, t, h, d = 2, 23, 3, 4
    qkv = rand(b, t, 3, h, d, dtype=torch.float32)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D), rows of stride 3·H·D
    rel = rand(h, 9, d, dtype=torch.float32, seed=1)
    with torch.no_grad():
        got = relative_attention(q, k, v, rel, block=8)
    assert kernel_calls["forward"] == 1
    torch.testing.assert_close(got, naive_attention(q.double(), k.double(), v.double(), rel.double()).float(),
                               atol=2e-6, rtol=1e-5)


def test_fused_kernel_gradients_are_the_same_bits_on_any_thread_count(kernel):
    # Resuming a run reproduces it bit for bit only if a backward does. The relative gradient once summed
    # per-thread parts, so its bits depended on which thread took which (batch, head): 1 thread and 2
    # threads differed, and so did two calls under load.
    q, k, v, do = (rand(4, 3, 48, 8, dtype=torch.float32, seed=s) for s in range(4))
    rel = rand(3, 16, 8, dtype=torch.float32, seed=4)
    threads = torch.get_num_threads()
    seen = set()
    try:
        for n in (1, 2, 3, 2, 1, 3):
            torch.set_num_threads(n)
            out, lse = relative_kernel.forward(q, k, v, rel, None, 8)
            grads = relative_kernel.backward(do, q, k, v, rel, out, lse, None, 8)
            seen.add(b"".join(t.contiguous().numpy().tobytes() for t in (out, *grads)))
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1


def test_fused_kernel_under_bfloat16_autocast(kernel_calls):
    q, k, v = (rand(2, 4, 40, 16, dtype=torch.float32, seed=s).requires_grad_() for s in range(3))
    rel = (0.3 * rand(4, 24, 16, dtype=torch.float32, seed=3)).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = relative_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), rel, window=30, block=16)
    assert got.dtype == torch.bfloat16 and kernel_calls["forward"] == 1
    grads = torch.autograd.grad(got.float().sum(), (q, k, v, rel))
    assert kernel_calls["backward"] == 1
    ref = [t.detach().double().requires_grad_() for t in (q, k, v, rel)]
    want = naive_attention(*ref, window=30)
    want_grads = torch.autograd.grad(want.sum(), ref)
    torch.testing.assert_close(got.float(), want.float(), atol=0.03, rtol=0.03)
    for name, g, w in zip("qkvr", grads, want_grads):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        cos = torch.nn.functional.cosine_similarity(g.double().flatten(), w.flatten(), dim=0)
        assert cos > 0.99, f"gradient wrt {name}: cosine {cos:.4f}"


def tiny_relative_model():
    """The peaky tiny model (strong relative embeddings: a wrong skew shows), training mode, and a (2, 80) batch of ids."""
    from tiny_models import tiny_model

    return tiny_model().train(), torch.randint(0, 391, (2, 80), generator=torch.Generator().manual_seed(1))


def logits_and_grads(model, x):
    """Training-mode logits and every parameter's gradient of the loss on ids x."""
    model.zero_grad()
    out = model(x[:, :-1], targets=x[:, 1:])
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_logits_and_grads(a, b):
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], atol=1e-5, rtol=1e-4, msg=name)


def assert_chunked_prefill_matches_full_pass(model, x):
    """Prefill in chunks through a sliding-window cache (queries at the end of the keys) vs one full pass."""
    model.eval()
    with torch.no_grad():
        full = model(x, window=48).logits
        cache = model.new_cache(window=48)
        chunks = [model(x[:, a:a + 20], cache=cache).logits for a in range(0, x.shape[1], 20)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-4, rtol=1e-4)


def test_fused_kernel_in_the_model_matches_the_eager_path(kernel_calls, monkeypatch):
    model, x = tiny_relative_model()
    fused = logits_and_grads(model, x)
    assert kernel_calls == {"forward": 2, "backward": 2}  # one per layer
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "eager")
    eager = logits_and_grads(model, x)
    assert kernel_calls == {"forward": 2, "backward": 2}
    assert_same_logits_and_grads(fused, eager)
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "auto")
    assert_chunked_prefill_matches_full_pass(model, x)


def test_kernel_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "eager")
    assert relative_kernel.mode() == "eager" and relative_kernel.load() is False
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "fast")
    with pytest.raises(ValueError, match="MUSICGPT_ATTENTION_KERNEL"):
        relative_kernel.mode()


def test_failed_build_falls_back_to_the_eager_path(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("MUSICGPT_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "native")
    relative_kernel._load.cache_clear()
    relative_kernel._warn_once.cache_clear()
    try:
        with pytest.raises(relative_kernel.KernelUnavailable, match="no C\\+\\+ compiler"):
            relative_kernel.load()
        monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "auto")
        q, k, v = (rand(1, 2, 9, 4, dtype=torch.float32, seed=s) for s in range(3))
        rel = rand(2, 5, 4, dtype=torch.float32, seed=3)
        with pytest.warns(RuntimeWarning, match="using the eager path"):
            got = relative_attention(q, k, v, rel, block=4)
        torch.testing.assert_close(got, naive_attention(q, k, v, rel))
    finally:
        relative_kernel._load.cache_clear()  # later tests load the real kernel again
        relative_kernel._warn_once.cache_clear()


def test_fused_kernel_inside_torch_compile(kernel):
    from torch.profiler import profile

    q, k, v = (rand(2, 3, 20, 4, dtype=torch.float32, seed=s).requires_grad_() for s in range(3))
    rel = rand(3, 8, 4, dtype=torch.float32, seed=3).requires_grad_()
    compiled = torch.compile(lambda *t: relative_attention(*t, window=9, block=8), fullgraph=True)  # no graph break
    compiled(q, k, v, rel)
    with profile() as prof:
        got = compiled(q, k, v, rel)
        grads = torch.autograd.grad(got.sum(), (q, k, v, rel))
    ops = {e.key for e in prof.key_averages()}
    assert {"musicgpt_relattn::forward", "musicgpt_relattn::backward"} <= ops  # the kernel runs in the graph
    want = relative_attention(q, k, v, rel, window=9, block=8)
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, torch.autograd.grad(want.sum(), (q, k, v, rel))):
        torch.testing.assert_close(g, w)


# ---- the SDPA-with-bias path (CUDA's default; forced here on the CPU) ----

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_biased_sdpa_on_cuda_matches_naive_under_bfloat16():
    q, k, v = (rand(2, 4, 300, 32, seed=s).float().cuda().requires_grad_() for s in range(3))
    rel = rand(4, 128, 32, seed=3).float().cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = relative_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), rel)
    want = naive_attention(*(t.detach().double().cpu() for t in (q, k, v, rel)))
    assert ((got.detach().double().cpu() - want).norm() / want.norm()).item() < 1e-2
    got.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v, rel))


def test_biased_sdpa_in_the_model_matches_the_eager_path(monkeypatch):
    model, x = tiny_relative_model()
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "sdpa")
    sdpa = logits_and_grads(model, x)
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "eager")
    eager = logits_and_grads(model, x)
    assert_same_logits_and_grads(sdpa, eager)
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "sdpa")
    assert_chunked_prefill_matches_full_pass(model, x)


@pytest.mark.parametrize("window", [None, 4])
def test_biased_sdpa_trains_after_a_call_under_inference_mode(monkeypatch, window):
    # Found in review: masks cached while generating (inference mode) could not be saved for backward.
    monkeypatch.setenv("MUSICGPT_ATTENTION_KERNEL", "sdpa")
    attention._blocked.cache_clear()
    attention._band.cache_clear()
    q, k, v = (rand(1, 2, 9, 4, dtype=torch.float32, seed=s) for s in range(3))
    rel = rand(2, 5, 4, dtype=torch.float32, seed=3)
    with torch.inference_mode():
        relative_attention(q, k, v, rel, window=window)
    q.requires_grad_()
    out = relative_attention(q, k, v, rel, window=window)
    out.sum().backward()
    torch.testing.assert_close(out, naive_attention(q, k, v, rel, window).float())
    with pytest.raises(ValueError, match="queries"):
        attention.biased_sdpa(q, k[:, :, :5], v[:, :, :5], rel)
