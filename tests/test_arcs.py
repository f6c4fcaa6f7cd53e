"""Attention arcs: aggregation to notes by hand, capture during generation equal to teacher forcing, schema;
each note's surprisal (NLL: the sum of -log p(token | everything before it) over its tokens, NOTE_ON, the VELOCITY
right before it, its NOTE_OFF) from `attend` (teacher forcing) and from `generate` (each step's logits, the
primer's from the prefill) against a full forward pass of the model, and arcs.json's optional "nll"."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import musicgpt
from musicgpt.arcs.capture import (ArcsConfig, AttentionRecorder, aggregate, attend, attend_notes, note_arcs, note_nll,
                                   query_rows, token_owners)
from musicgpt.arcs.format import ArcsFormatError, build_arcs, read_arcs, validate_arcs, write_arcs
from musicgpt.errors import ConfigError
from musicgpt.model.prefill import teacher_force
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import FIXTURES, PRIMER, tiny_model

TOK = PerformanceTokenizer()
DENSE = ArcsConfig(row_top_k=None, top_n=10_000, min_weight=0.0)
CHOPIN = FIXTURES / "asap_chopin_etude_op25_8_Toscano02.mid"
TOL = 1e-4


def arcs_table(d):
    return {(a["query"], a["key"], a["layer"], a["head"]): a["weight"] for a in d["arcs"]}


def without_nll(notes):
    return [{k: v for k, v in n.items() if k != "nll"} for n in notes]


def test_aggregation_by_hand():
    # BOS, VEL, ON 60 (note 0), ON 64 (note 1), SHIFT, OFF 60, VEL, ON 67 (note 2)
    ids = [TOK.bos_id, TOK.velocity(5), TOK.note_on(60), TOK.note_on(64), TOK.time_shift(50), TOK.note_off(60),
           TOK.velocity(9), TOK.note_on(67), TOK.time_shift(50), TOK.note_off(64), TOK.note_off(67)]
    rec = AttentionRecorder(ArcsConfig(row_top_k=None, top_n=2, min_weight=0.0))
    probs = torch.zeros(1, 1, 1, 8)  # one layer, one row (the NOTE_ON of 67 at position 7), one head
    probs[0, 0, 0] = torch.tensor([0.05, 0.1, 0.2, 0.15, 0.05, 0.25, 0.1, 0.1])
    rec.add([7], 0, probs)
    notes, arcs = note_arcs(TOK, ids, rec, n_layer=1, n_head=1)
    assert notes.pitch.tolist() == [60, 64, 67] and arcs.note_token.tolist() == [2, 3, 7]
    # note 0 owns VEL@1 and ON@2 (0.1 + 0.2); its NOTE_OFF@5 (0.25) counts for nothing; note 1 owns ON@3;
    # the query's own VELOCITY@6 and NOTE_ON@7 are self-attention, left out.
    got = {(int(q), int(k)): round(float(w), 6) for q, k, w in zip(arcs.query, arcs.key, arcs.weight)}
    assert got == {(2, 0): 0.3, (2, 1): 0.15}
    small = aggregate(rec.arrays(), token_owners(TOK, ids)[2], np.array([-1, -1, 0, 1, -1, -1, -1, 2, -1, -1, -1]),
                      1, 1, ArcsConfig(row_top_k=None, top_n=1, min_weight=0.0))
    assert small.key.tolist() == [0]  # top_n = 1 keeps the heaviest


def test_recorder_memory_is_linear_in_rows():
    cfg = ArcsConfig(row_top_k=4)
    rec = AttentionRecorder(cfg)
    for t, n in enumerate([3, 50, 500]):
        rec.add([t], 0, torch.rand(2, 1, 3, n).softmax(-1))
    a = rec.arrays()
    assert len(a["weight"]) == 2 * 3 * (3 + 4 + 4)  # k per row, layer and head, whatever the row length
    with pytest.raises(ConfigError, match="row_top_k"):
        ArcsConfig(row_top_k=0)


@pytest.mark.parametrize("config", [DENSE, ArcsConfig()], ids=["dense", "default"])
def test_generation_arcs_equal_teacher_forced_arcs(config):
    """Dense rows: the same arcs, to float precision. Top-k rows: a token exactly tied with another at the
    row's k-th place (identical tokens past the relative range look identical in layer 0) may be kept by
    one path and not the other, so a few arcs near the boundary may differ."""
    model = tiny_model()
    samples = musicgpt.generate(model, PRIMER, primer_tokens=60, max_new_tokens=200, seed=8, num_samples=2,
                                arcs=True, arcs_config=config, stop_at_eos=False, temperature=1.2)
    for s in samples:
        assert len(s.ids) > 2 * model.config.n_ctx  # the window slid during prefill and generation
        forced = attend(model, s.ids, TOK, config=config, primer_length=s.primer_length)
        # "nll" differs where generate closed a note at the end (its NOTE_OFF was not predicted: see below)
        assert without_nll(forced["notes"]) == without_nll(s.arcs["notes"])
        a, b = arcs_table(s.arcs), arcs_table(forced)
        assert len(a) > 1000
        same = [abs(a[k] - b[k]) / a[k] < 1e-3 for k in a.keys() & b.keys()]  # the file keeps 4 digits
        if config is DENSE:
            assert a.keys() == b.keys() and all(same)
        else:  # a tie at a row's k-th place moves a token's weight to another note, or out of the row
            assert len(a.keys() ^ b.keys()) <= 0.02 * len(a) and sum(same) >= 0.98 * len(same)


def test_chunked_teacher_forcing_matches_generation():
    model = tiny_model(seed=1)
    (s,) = musicgpt.generate(model, PRIMER, primer_tokens=30, max_new_tokens=150, seed=2, arcs=True,
                             arcs_config=DENSE, stop_at_eos=False)
    rec = AttentionRecorder(DENSE)
    teacher_force(model, torch.from_numpy(s.ids)[None], model.new_cache(), [rec], query_rows(TOK, s.ids)[None],
                  chunk=37)  # chunks that straddle the window's slide
    _, forced = note_arcs(TOK, s.ids, rec, 2, 2)
    table = {(q, k, l, h): w for q, k, l, h, w in zip(forced.query, forced.key, forced.layer, forced.head, forced.weight)}
    gen = arcs_table(s.arcs)
    assert gen.keys() == set(table)
    assert max(abs(gen[k] - table[k]) / table[k] for k in gen) < 1e-3  # the file keeps 4 significant digits


def test_arcs_schema_and_primer_flags():
    model = tiny_model()
    (s,) = musicgpt.generate(model, PRIMER, primer_tokens=50, max_new_tokens=100, seed=4, arcs=True,
                             stop_at_eos=False)
    d = s.arcs
    validate_arcs(d)
    notes = d["notes"]
    assert [n["primer"] for n in notes] == (s.note_token < s.primer_length).tolist()
    assert any(n["primer"] for n in notes) and not all(n["primer"] for n in notes)
    assert all(notes[a["key"]]["start"] <= notes[a["query"]]["start"] and a["key"] != a["query"] for a in d["arcs"])
    per_row = {}
    for a in d["arcs"]:
        per_row[(a["query"], a["layer"], a["head"])] = per_row.get((a["query"], a["layer"], a["head"]), 0) + 1
    assert max(per_row.values()) <= ArcsConfig().top_n
    assert {n["id"] for n in notes if n["primer"]} & {a["query"] for a in d["arcs"]}  # primer notes have arcs too


# ---- each note's surprisal ---------------------------------------------------------------------------------

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
