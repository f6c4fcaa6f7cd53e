"""Per-note surprisal (issue 14): each note's NLL, the sum of -log p(token | everything before it) over its
tokens (NOTE_ON, the VELOCITY right before it, its NOTE_OFF), from `attend` (teacher forcing) and from
`generate` (each step's logits, the primer's from the prefill), against a full forward pass of the model;
arcs.json's optional "nll"; `musicgpt evaluate` with a sliding window gives the same mean."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import musicgpt
from musicgpt.arcs.capture import attend, attend_notes, note_nll, token_owners
from musicgpt.arcs.format import ArcsFormatError, build_arcs, read_arcs, validate_arcs, write_arcs
from musicgpt.cli import main
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import FIXTURES, PRIMER, tiny_checkpoint, tiny_model

TOK = PerformanceTokenizer()
CHOPIN = FIXTURES / "asap_chopin_etude_op25_8_Toscano02.mid"
TOL = 1e-4


def forward_nll(model, ids: np.ndarray, window: int | None) -> np.ndarray:
    """Per token: the cross-entropy of one forward pass over the whole sequence (NaN for the first token)."""
    x = torch.from_numpy(np.asarray(ids, np.int64))[None]
    with torch.no_grad():
        logits = model(x, window=window).logits[0]
    return np.r_[np.nan, F.cross_entropy(logits[:-1].float(), x[0, 1:], reduction="none").double().numpy()]


def notes_by_hand(ids: np.ndarray, token_nll: np.ndarray) -> dict[int, float]:
    """{note: sum of its tokens' NLL}, the tokens found here without the tokenizer's map: each NOTE_ON, the
    VELOCITY right before it, and the next NOTE_OFF of the same pitch."""
    kinds, values = TOK.token_type(ids), TOK.token_value(ids)
    on, off, vel = (TOK.type_names.index(n) for n in ("NOTE_ON", "NOTE_OFF", "VELOCITY"))
    notes, note_index, _, note_token = token_owners(TOK, ids)
    out = {}
    for i, t in enumerate(note_token.tolist()):
        tokens = [t] + ([t - 1] if t and kinds[t - 1] == vel else [])
        later = [u for u in range(t + 1, len(ids)) if values[u] == values[t] and kinds[u] in (on, off)]
        if later and kinds[later[0]] == off:
            tokens.append(later[0])
        out[i] = sum(0.0 if np.isnan(token_nll[u]) else token_nll[u] for u in tokens)
    return out


def test_note_nll_by_hand():
    # BOS, VEL, ON 60 (note 0), ON 64 (note 1), SHIFT, OFF 60, VEL, ON 67 (note 2), SHIFT, OFF 64, OFF 67
    ids = np.array([TOK.bos_id, TOK.velocity(5), TOK.note_on(60), TOK.note_on(64), TOK.time_shift(50),
                    TOK.note_off(60), TOK.velocity(9), TOK.note_on(67), TOK.time_shift(50), TOK.note_off(64),
                    TOK.note_off(67)])
    token_nll = np.r_[np.nan, 2.0 ** np.arange(1, len(ids))]  # each token's own bit
    token_nll[10] = np.nan  # say, a closing NOTE_OFF that the model did not predict
    notes, note_index, _, _ = token_owners(TOK, ids)
    got = note_nll(note_index, token_nll, len(notes))
    assert got.tolist() == [2 + 4 + 32, 8 + 512, 64 + 128]  # tokens 1, 2, 5 | 3, 9 | 6, 7 (10 counts 0)
    assert got.tolist() == list(notes_by_hand(ids, token_nll).values())
    assert np.isnan(note_nll(note_index, np.full(len(ids), np.nan), len(notes))).all()  # nothing predicted


@pytest.mark.parametrize("length", [100, 700], ids=["within-context", "window-slides"])
def test_attend_note_nll_equals_a_full_forward_pass(length):
    model = tiny_model()
    ids = np.r_[TOK.bos_id, TOK.encode(CHOPIN).ids].astype(np.int64)[:length]
    window = model.config.n_ctx if length > model.config.n_ctx else None  # model(ids) alone past n_ctx: no slide
    want = forward_nll(model, ids, window)
    by_hand = notes_by_hand(ids, want)
    for chunk in (256, 37, 1):
        stream = attend_notes(model, ids, TOK, chunk=chunk)
        assert np.isnan(stream.token_nll[0]) and not np.isnan(stream.token_nll[1:]).any()
        assert np.abs(stream.token_nll[1:] - want[1:]).max() < TOL
        got = stream.note_nll()
        assert len(got) == len(by_hand) > 20
        assert np.abs(got - np.array(list(by_hand.values()))).max() < TOL
    d = attend(model, ids, TOK)
    assert [n["nll"] for n in d["notes"]] == [float(f"{x:.4g}") for x in got]  # 4 significant digits
    validate_arcs(d)


def test_generate_note_nll_equals_attend_and_the_forward_pass():
    """Sampling filters, temperature and the grammar mask change which token is drawn, never its NLL."""
    model = tiny_model(seed=2)
    samples = musicgpt.generate(model, PRIMER, primer_tokens=150, max_new_tokens=250, seed=5, num_samples=2,
                                temperature=1.4, top_k=40, top_p=0.95, arcs=True, stop_at_eos=False)
    n_closed = 0
    for s in samples:
        assert len(s.ids) > 2 * model.config.n_ctx  # the window slid in the prefill and while sampling
        want = forward_nll(model, s.ids, model.config.n_ctx)
        missing = np.flatnonzero(np.isnan(s.token_nll))
        closing = len(s.ids) - len(missing) + 1  # BOS and the closing tokens generate appended, nothing else
        assert missing.tolist() == [0] + list(range(closing, len(s.ids)))
        assert closing <= s.primer_length + s.n_generated
        assert set(TOK.token_type(s.ids[closing:]).tolist()) <= {TOK.type_names.index(n) for n in ("NOTE_OFF", "TIME_SHIFT")}
        predicted = ~np.isnan(s.token_nll)
        assert np.abs(s.token_nll[predicted] - want[predicted]).max() < TOL
        stream = attend_notes(model, s.ids, TOK)
        _, note_index, _, _ = token_owners(TOK, s.ids)
        # attend predicts the closing NOTE_OFFs too; without them the notes' sums are generate's
        attended = note_nll(note_index, np.where(predicted, stream.token_nll, np.nan), len(s.notes))
        assert np.abs(s.note_nll - attended).max() < TOL
        assert np.abs(s.note_nll - list(notes_by_hand(s.ids, np.where(predicted, want, np.nan)).values())).max() < TOL
        assert [n["nll"] for n in s.arcs["notes"]] == [float(f"{x:.4g}") for x in s.note_nll]
        # the notes generate closed at the end miss their NOTE_OFF's NLL, the others are attend's sums
        closed = np.isin(np.arange(len(s.notes)), note_index[closing:])
        assert (~closed).sum() > 20
        assert np.abs(s.note_nll[~closed] - stream.note_nll()[~closed]).max() < TOL
        assert (s.note_nll[closed] < stream.note_nll()[closed]).all()
        n_closed += closed.sum()
    assert n_closed > 0
    (plain,) = musicgpt.generate(model, PRIMER, primer_tokens=150, max_new_tokens=30, seed=5, stop_at_eos=False)
    assert plain.arcs is None and len(plain.note_nll) == len(plain.notes)  # kept without --arcs too


def test_arcs_json_nll_is_optional_and_checked(tmp_path):
    notes = [{"pitch": 60, "start": 0.0, "end": 0.5, "velocity": 80, "token": 2, "primer": True, "nll": 3.14159265},
             {"pitch": 64, "start": 0.5, "end": 1.0, "velocity": 70, "token": 6, "primer": False, "nll": None},
             {"pitch": 67, "start": 1.0, "end": 1.5, "velocity": 90, "token": 9, "primer": False}]
    d = build_arcs(notes, [], n_layer=1, n_head=1)
    assert [n.get("nll", "absent") for n in d["notes"]] == [3.142, None, "absent"]
    assert build_arcs([{**notes[0], "nll": 0.000123456}], [], n_layer=1, n_head=1)["notes"][0]["nll"] == 0.0001235
    write_arcs(d, tmp_path / "a.json")
    assert read_arcs(tmp_path / "a.json") == d and d["version"] == 1
    assert '"primer":true,"nll":3.142}' in (tmp_path / "a.json").read_text()
    for bad in (-0.5, math.inf, math.nan, "3", True):
        broken = json.loads(json.dumps(d))
        broken["notes"][0]["nll"] = bad
        with pytest.raises(ArcsFormatError, match=r"notes\[0\] has nll .*; expected a finite number of nats >= 0"):
            validate_arcs(broken)


def test_cli_attend_writes_nll_and_its_mean_agrees_with_evaluate(tmp_path, capsys):
    """Within the context, `musicgpt evaluate` scores every token exactly as attend does: the same mean NLL.
    Past it they differ by design: attend's window slides over a KV cache, so the keys a token sees carry
    what their own windows saw (a layer-L model reaches back L x n_ctx tokens), while evaluate reads each
    window afresh (--stride 1: the last n_ctx tokens exactly; default: non-overlapping windows, whose first
    tokens see little context). On the tiny random model the means still agree closely."""
    from musicgpt.generation.primer import primer_ids
    from musicgpt.model import load_checkpoint
    from musicgpt.music.midi import read_midi, write_midi

    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    model, tok = load_checkpoint(checkpoint)
    notes = read_midi(CHOPIN)
    for n_notes, stride, tolerance in ((25, None, 1e-5), (120, "1", 2e-3), (120, None, 2e-3)):
        piece = tmp_path / f"piece{n_notes}.mid"
        write_midi(notes[np.arange(len(notes)) < n_notes], piece)
        assert main(["attend", str(checkpoint), str(piece), "--out", str(tmp_path), "--quiet"]) == 0
        printed = float(capsys.readouterr().out.split(" NLL ")[1].split(" nats a token")[0])
        d = read_arcs(tmp_path / f"piece{n_notes}.arcs.json")
        ids = np.r_[tok.bos_id, primer_ids(piece, tok)]
        assert (len(ids) <= model.config.n_ctx) == (n_notes == 25)
        stream = attend_notes(model, ids, tok)
        assert [n["nll"] for n in d["notes"]] == [float(f"{x:.4g}") for x in stream.note_nll()]
        mean = float(np.nanmean(stream.token_nll))
        assert abs(printed - mean) < 1e-4
        assert main(["evaluate", str(checkpoint), "--data", str(piece), "--context", str(model.config.n_ctx),
                     *(["--stride", stride] if stride else []), "--quiet", "--json", str(tmp_path / "eval.json")]) == 0
        capsys.readouterr()
        report = json.loads((tmp_path / "eval.json").read_text())
        assert report["n_tokens"] == len(ids) - 1  # every token but BOS is scored by both
        assert abs(report["nll"] - mean) < tolerance, (n_notes, stride)


def test_cli_generate_arcs_writes_each_notes_nll(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path / "tiny")
    assert main(["generate", str(checkpoint), "--primer", str(PRIMER), "--primer-tokens", "50", "--max-new-tokens",
                 "80", "--seed", "4", "--arcs", "--quiet", "--out", str(tmp_path / "out")]) == 0
    d = read_arcs(tmp_path / "out" / "sample_00.arcs.json")
    (s,) = musicgpt.generate(checkpoint, PRIMER, primer_tokens=50, max_new_tokens=80, seed=4)
    assert [n["nll"] for n in d["notes"]] == [float(f"{x:.4g}") for x in s.note_nll]
    assert all(n["nll"] > 0 for n in d["notes"])
    page = (tmp_path / "out" / "sample_00.html").read_text(encoding="utf-8")
    assert '"nll":[' in page  # the viewer gets the column
