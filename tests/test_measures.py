"""The arc measures (musicgpt.arcs.measures, .influence, .forward) against naive references on tiny models: the
layer-by-layer forward pass equals the model's, influence equals hiding the note in a separately written dense
forward pass, rollout a hand-computed two-layer example, norm the value vectors through the output projection;
`attend --measure` and `generate --arcs --measure` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from musicgpt.arcs.capture import ArcsConfig
from musicgpt.arcs.forward import Trace, run, trace
from musicgpt.arcs.influence import influence, piece_maps, query_context
from musicgpt.arcs.measures import measure_stream, note_influence, token_scores
from musicgpt.cli import main
from musicgpt.errors import ConfigError
from musicgpt.music.scores import read_notes
from musicgpt.tokens.performance import PerformanceTokenizer
from headless import chromium, console_errors, needs_chromium
from tiny_models import FIXTURES, PRIMER, tiny_checkpoint, tiny_model

TOK = PerformanceTokenizer()


def piece_ids(n: int) -> np.ndarray:
    return np.r_[TOK.bos_id, TOK.encode(read_notes(PRIMER)).ids][:n].astype(np.int64)


def naive_logits(model, ids: np.ndarray, hidden: np.ndarray | None = None) -> torch.Tensor:
    """A dense forward pass written plainly: Srel by gathering each distance's embedding; `hidden` positions are
    keys no other position may read. (T, V)."""
    x = model.tok_emb(torch.as_tensor(ids))  # (T, C)
    t = len(ids)
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    blocked = j > i
    if hidden is not None:
        blocked = blocked | (torch.isin(j, torch.as_tensor(hidden)) & (i != j))
    for layer, block in enumerate(model.blocks):
        a = block.attn
        q, k, v = a.qkv(block.ln_1(x)).view(t, 3, a.n_head, a.head_dim).unbind(1)  # each (T, H, D)
        table = model.relative_embeddings(layer)  # (H, R, D), distance d at [:, d]
        dist = (i - j).clamp(0, table.shape[1] - 1)  # (T, T)
        srel = torch.einsum("ihd,hijd->hij", q, table[:, dist])  # (H, T, T)
        s = (torch.einsum("ihd,jhd->hij", q, k) + srel) / math.sqrt(a.head_dim)
        p = torch.softmax(s.masked_fill(blocked, float("-inf")), -1)
        y = torch.einsum("hij,jhd->ihd", p, v).reshape(t, -1)
        x = x + a.proj(y)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@pytest.mark.parametrize("position", ["relative", "absolute"])
def test_the_written_out_forward_pass_equals_the_models(position):
    model = tiny_model(position=position)
    ids = torch.as_tensor(piece_ids(100))[None]
    with torch.no_grad():
        ref = model(ids, return_attention=True)
    out = run(model, ids, keep_rows=True)
    assert torch.allclose(out["logits"], ref.logits, atol=1e-4)
    for mine, theirs in zip(out["probs"], ref.attentions):
        assert torch.allclose(mine, theirs, atol=1e-5)
    later = run(model, ids, start=60, prefix=([k[0, :, :60] for k in out["keys"]], [v[0, :, :60] for v in out["values"]]))
    assert torch.allclose(later["logits"], ref.logits[:, 60:], atol=1e-4)  # rows 60.. from the cached prefix


def test_the_window_slides_as_the_models_does():
    model = tiny_model()  # n_ctx 128
    ids = torch.as_tensor(piece_ids(170))[None]
    with torch.no_grad():
        ref = model(ids, window=model.config.n_ctx).logits
    assert torch.allclose(run(model, ids)["logits"], ref, atol=1e-4)


def test_influence_equals_hiding_the_note_in_a_dense_forward_pass():
    model = tiny_model()
    ids = piece_ids(110)
    maps = piece_maps(TOK, ids)
    note = int(np.flatnonzero(maps.note_token > 90)[0])
    ctx = query_context(ids, maps, note, model.config.n_ctx)
    assert len(ctx.past) >= 10 and ctx.offset == 0
    got = influence(model, ctx, batch=3)  # batches of 3 with the prefix reused

    def nll(hidden=None) -> float:
        with torch.no_grad():
            logp = torch.log_softmax(naive_logits(model, ctx.ids, hidden), -1)
        return float(-sum(logp[t - 1, ctx.ids[t]] for t in ctx.targets))

    base = nll()
    for i, n in enumerate(ctx.past):
        # the note's tokens before the query: its VELOCITY, NOTE_ON and NOTE_OFF
        hidden = np.flatnonzero(maps.note_index[: ctx.targets.min()] == n)
        assert np.array_equal(hidden, ctx.tokens[i])
        assert got[i] == pytest.approx(nll(hidden) - base, abs=2e-4)
    picked = note_influence(model, ids, maps, note, candidates=4)
    assert len(picked) == 4 and all(picked[int(ctx.past[i])] == pytest.approx(got[i], abs=1e-4)
                                    for i in range(len(ctx.past)) if int(ctx.past[i]) in picked)


def test_rollout_matches_a_two_layer_example_by_hand():
    a0 = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    a1 = torch.tensor([[1.0, 0, 0], [0.6, 0.4, 0], [0.1, 0.1, 0.8]])
    tr = Trace(torch.zeros(3, 4), [], [], mean_probs=[a0, a1], row_probs=[a0[None, 2:], a1[None, 2:]],
               value_norms=[torch.ones(1, 3)] * 2)
    got = token_scores(tr, [2], "rollout")  # (L, H, R, T)
    # layer 0: (A0 + I) / 2, row 2; layer 1: (A1 + I) / 2 @ (A0 + I) / 2, row 2
    assert got[0, 0, 0].tolist() == pytest.approx([0.1, 0.15, 0.75])
    assert got[1, 0, 0].tolist() == pytest.approx([0.05 * 1 + 0.05 * 0.25 + 0.9 * 0.1, 0.05 * 0.75 + 0.9 * 0.15,
                                                   0.9 * 0.75])


def test_norm_weighs_attention_by_the_value_through_the_output_projection():
    model = tiny_model()
    ids = piece_ids(60)
    tr = trace(model, ids, [59])
    got = token_scores(tr, [59], "norm")
    layer = 1
    a = model.blocks[layer].attn
    h, d = a.n_head, a.head_dim
    v = layer_one_values(model, ids)  # (T, H, D)
    w = a.proj.weight.detach().view(-1, h, d)  # (C, H, D)
    size = torch.stack([(v[:, head] @ w[:, head].T).norm(dim=-1) for head in range(h)])  # (H, T)
    expected = tr.row_probs[layer][:, 0] * size  # (H, T)
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(got[layer, :, 0].float(), expected, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(()).double(), atol=1e-9)


def layer_one_values(model, ids) -> torch.Tensor:
    """Layer 1's value vectors (T, H, D): layer 0 by the model's own block, then the value third of qkv."""
    with torch.no_grad():
        x = model.tok_emb(torch.as_tensor(ids))[None]
        x, _ = model.blocks[0](x, None, 0, None, False)
        a = model.blocks[1].attn
        qkv = a.qkv(model.blocks[1].ln_1(x))[0].view(len(ids), 3, a.n_head, a.head_dim)
    return qkv[:, 2]


def test_segments_of_a_long_piece_give_valid_arcs_and_each_tokens_nll():
    model = tiny_model()
    ids = piece_ids(300)  # n_ctx 128: blocks of 64 query tokens
    stream = measure_stream(model, ids, TOK, "rollout", config=ArcsConfig())
    arcs = stream.result()
    assert len(arcs) and np.isnan(stream.token_nll[0]) and not np.isnan(stream.token_nll[1:]).any()
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.as_tensor(ids[:128])[None]).logits[0], -1)
    assert stream.token_nll[1:128] == pytest.approx(-ref[torch.arange(127), torch.as_tensor(ids[1:128])].numpy(),
                                                    abs=1e-4)
    with pytest.raises(ConfigError, match="measure_stream"):
        measure_stream(model, ids, TOK, "influence")


@pytest.mark.parametrize("measure", ["norm", "influence"])
def test_attend_and_generate_write_the_measure(tmp_path, measure):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["attend", str(ckpt), str(PRIMER), "--tokens", "90", "--measure", measure, "--out", str(tmp_path / "a"),
                 "--quiet", "--influence-candidates", "4"]) == 0
    doc = json.loads((tmp_path / "a" / f"{PRIMER.stem}.arcs.json").read_text())
    assert doc["measure"] == measure and doc["arcs"]
    if measure == "influence":  # a measure of the whole model: the last layer, head 0
        assert {(a["layer"], a["head"]) for a in doc["arcs"]} == {(1, 0)}
    assert main(["generate", str(ckpt), "--arcs", "--measure", measure, "--max-new-tokens", "40", "--seed", "1",
                 "--out", str(tmp_path / "g"), "--quiet"]) == 0
    assert json.loads((tmp_path / "g" / "sample_00.arcs.json").read_text())["measure"] == measure


def test_an_unknown_measure_is_refused_by_name(tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["attend", str(ckpt), str(PRIMER), "--measure", "saliency", "--out", str(tmp_path)]) != 0
    assert main(["generate", str(ckpt), "--measure", "norm", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "--measure: unknown measure 'saliency'" in err and "--measure: only with --arcs" in err


@needs_chromium
def test_the_viewer_says_which_measure_it_draws(tmp_path):
    from musicgpt.arcs.format import read_arcs
    from musicgpt.viz.viewer import write_html

    d = read_arcs(FIXTURES / "arcs_tiny.json")  # from before the measure key: attention
    pages = {"attention": write_html(d, tmp_path / "old.html"),
             "rollout": write_html(dict(d, measure="rollout"), tmp_path / "rollout.html")}
    with chromium("1000,700") as driver:
        for measure, page in pages.items():
            driver.get(page.resolve().as_uri())
            driver.find_element("css selector", "#notes rect")
            assert f" arcs by {measure} · " in driver.find_element("id", "stats").text
            assert console_errors(driver) == []
