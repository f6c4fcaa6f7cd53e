"""MusicGPT: configs, causality, cached decoding parity, shift invariance of relative attention."""

import pytest
import torch
import torch.nn.functional as F

from musicgpt.errors import ConfigError
from musicgpt.model.gpt import GPTConfig, MusicGPT


def tiny(position="relative", **kw):
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", position=position, dropout=0.0, **kw)
    model = MusicGPT(cfg).double().eval()
    with torch.no_grad():  # untrained rel_emb are tiny; make relative logits matter in the tests
        for block in model.blocks:
            if hasattr(block.attn, "rel_emb"):
                block.attn.rel_emb.normal_(0, 1.0)
    return model


def ids(b, t, seed=0, vocab=391):
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def test_presets_and_config_errors():
    assert GPTConfig.preset("base").d_model == 512 and GPTConfig.preset("base").n_layer == 6
    assert GPTConfig.preset("small", n_layer=3).n_layer == 3
    assert GPTConfig.from_dict(GPTConfig.preset("tiny").to_dict()) == GPTConfig.preset("tiny")
    with pytest.raises(ConfigError, match="huge"):
        GPTConfig.preset("huge")
    with pytest.raises(ConfigError, match="n_heads"):
        GPTConfig.from_dict({"n_heads": 4})
    with pytest.raises(ConfigError, match="position"):
        GPTConfig(position="rotary")
    with pytest.raises(ConfigError, match="divisible"):
        GPTConfig(d_model=30, n_head=4)


def test_parameter_names_and_tying():
    model = MusicGPT(GPTConfig.preset("tiny", position="both"))
    names = set(model.state_dict())
    for name in ("tok_emb.weight", "pos_emb.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias",
                 "blocks.1.attn.rel_emb", "blocks.0.mlp.fc.weight", "blocks.0.ln_2.weight", "ln_f.bias"):
        assert name in names
    cfg = model.config
    assert model.blocks[0].attn.rel_emb.shape == (cfg.n_head, cfg.max_relative_distance, cfg.head_dim)
    assert model.lm_head.weight is model.tok_emb.weight
    assert "pos_emb.weight" not in MusicGPT(GPTConfig.preset("tiny")).state_dict()


def test_loss_is_mean_nll_and_ignores_minus_100():
    model = tiny()
    x, y = ids(2, 20), ids(2, 20, seed=1)
    y[0, :5] = -100
    out = model(x, targets=y)
    assert out.logits.shape == (2, 20, 391)
    keep = y != -100
    want = -F.log_softmax(out.logits, -1)[keep].gather(-1, y[keep][:, None]).mean()
    torch.testing.assert_close(out.loss, want)


@pytest.mark.parametrize("position", ["relative", "absolute", "both"])
def test_changing_future_tokens_leaves_earlier_logits_unchanged(position):
    model = tiny(position)
    a = ids(2, 60)
    b = a.clone()
    b[:, 40:] = ids(2, 20, seed=5)
    la, lb = model(a).logits, model(b).logits
    torch.testing.assert_close(la[:, :40], lb[:, :40], rtol=0, atol=1e-12)
    assert not torch.allclose(la[:, 40:], lb[:, 40:])


@pytest.mark.parametrize("position", ["relative", "absolute", "both"])
def test_cached_decoding_matches_full_forward(position):
    model = tiny(position).float()
    x = ids(2, 100)  # longer than max_relative_distance=32: clipped distances too
    with torch.no_grad():
        full = model(x).logits
        cache = model.new_cache()
        parts = [model(x[:, :30], cache=cache).logits, model(x[:, 30:37], cache=cache).logits]
        parts += [model(x[:, t : t + 1], cache=cache).logits for t in range(37, 100)]
    assert cache.length == 100
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4


@pytest.mark.parametrize("chunks", [[1] * 90, [25, 1, 1, 3, 1, 40, 1, 1, 17, 1]])
def test_cached_decoding_after_the_window_slides(chunks):
    model = tiny().float()
    window = 20
    x = ids(1, sum(chunks))
    with torch.no_grad():
        full = model(x, window=window).logits  # every query sees its last 20 tokens
        cache = model.new_cache(window=window, capacity=24)  # small: compacts every few steps
        parts, t = [], 0
        for n in chunks:
            parts.append(model(x[:, t : t + n], cache=cache).logits)
            t += n
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4
    assert cache.keys.shape[3] >= cache.window  # grew for the 40-token chunk, never below the window


def test_windowed_forward_differs_from_global():
    model = tiny()
    x = ids(1, 50)
    assert torch.allclose(model(x, window=50).logits, model(x).logits)
    assert not torch.allclose(model(x, window=10).logits[:, 10:], model(x).logits[:, 10:])


def test_absolute_positions_cannot_run_past_the_context():
    model = tiny("absolute")
    with pytest.raises(ConfigError, match="n_ctx"):
        model(ids(1, 129))
    cache = model.new_cache()
    model(ids(1, 128), cache=cache)
    with pytest.raises(ConfigError, match="relative"):
        model(ids(1, 1), cache=cache)


def toeplitz_defect(a):
    """Largest |a[i+1, j+1] - a[i, j]|: zero iff a is constant along every diagonal (i - j fixed)."""
    a = torch.nan_to_num(a, neginf=0.0)  # log-probabilities of masked keys
    return (a[..., 1:, 1:] - a[..., :-1, :-1]).abs().max().item()


def test_constant_input_attention_depends_only_on_distance():
    model = tiny()
    x = torch.full((1, 40), 60)
    att = model(x, return_attention=True).attentions
    assert len(att) == 2 and att[0].shape == (1, 2, 40, 40)
    torch.testing.assert_close(att[1].sum(-1), torch.ones(1, 2, 40, dtype=att[1].dtype))
    # Layer 0 sees identical inputs at every position: log p[i, j] - log p[i, i] is a function of i - j.
    logp = att[0].log()
    rel = logp - torch.diagonal(logp, dim1=-2, dim2=-1)[..., None]
    assert toeplitz_defect(rel) < 1e-9
    # With a window every query sees the same number of keys: past the warm-up every layer's
    # probabilities themselves depend on i - j only.
    window = 6
    att = model(x, window=window, return_attention=True).attentions
    warm = model.config.n_layer * window
    for p in att:
        assert toeplitz_defect(p[..., warm:, warm - window :]) < 1e-9
    # An absolute-position model fails the same check, so the check can fail.
    absolute = tiny("absolute")
    with torch.no_grad():
        absolute.pos_emb.weight.normal_(0, 1.0)
    logp = absolute(x, return_attention=True).attentions[0].log()
    rel = logp - torch.diagonal(logp, dim1=-2, dim2=-1)[..., None]
    assert toeplitz_defect(rel) > 1e-3


def test_cached_attention_matches_full_attention():
    model = tiny()
    x = ids(1, 30)
    full = model(x, return_attention=True).attentions
    cache = model.new_cache()
    model(x[:, :29], cache=cache)
    step = model(x[:, 29:], cache=cache, return_attention=True).attentions
    for f, s in zip(full, step):
        torch.testing.assert_close(s[:, :, 0], f[:, :, 29])


def test_train_step_under_bfloat16_autocast():
    torch.manual_seed(0)
    model = MusicGPT(GPTConfig.preset("tiny", attn_dropout=0.1))
    x = ids(2, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x[:, :-1], targets=x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < losses[0]
    assert model.blocks[0].attn.rel_emb.grad.abs().sum() > 0
