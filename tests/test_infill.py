"""Infilling: the layout of a training sequence (the suffix read first, then prefix and middle), and training
crops with CONTROL headers, control dropout and infilling."""

from __future__ import annotations

import numpy as np
import pytest

from musicgpt.tokens import infill
from musicgpt.training.conditioning import Conditioner

from tiny_models import PRIMER, steering_tokenizer

TOK = steering_tokenizer(("composer", "density", "dynamics"))


@pytest.fixture(scope="module")
def piece():
    enc = TOK.encode(PRIMER)
    return enc.ids, enc.notes


@pytest.mark.parametrize("start,end", [(3.0, 6.5), (0.0, 2.0), (3.333, 3.337)])
def test_infill_layout_keeps_prefix_and_middle_and_puts_the_suffix_at_end(piece, start, end):
    ids, notes = piece
    s, e = round(start / TOK.time_step), round(end / TOK.time_step)
    prefix, middle = infill.cut(ids, TOK, s, e)
    suffix = infill.suffix_tokens(notes, e * TOK.time_step, TOK)
    seq = np.r_[infill.layout(TOK, suffix, prefix, (e - s) * TOK.time_step, TOK.header({"composer": "Bach"})), middle]
    assert int(TOK.seconds_per_id()[prefix].sum() / TOK.time_step + 0.5) == s  # the prefix ends at START
    decoded, index = TOK.decode_with_index(seq)
    half = TOK.time_step / 2
    for lo, hi in ((0, s), (s, e), (e, 1e9)):  # prefix, middle and suffix notes: the piece's own onsets
        mine = decoded[(decoded.start >= lo * TOK.time_step - half) & (decoded.start < hi * TOK.time_step - half)]
        theirs = notes[(notes.start >= lo * TOK.time_step - half) & (notes.start < hi * TOK.time_step - half)]
        np.testing.assert_allclose(mine.start, theirs.start, atol=1e-9)
        np.testing.assert_array_equal(mine.pitch, theirs.pitch)
    spans = infill.spans(TOK, seq)
    assert seq[spans.gap] == TOK.gap_id((e - s) * TOK.time_step) and spans.part_of(len(seq) - 1) == "middle"
    on = np.flatnonzero(TOK.token_type(seq) == TOK.type_code("NOTE_ON"))
    assert (decoded.pitch[index[on]] == TOK.token_value(seq[on])).all()  # every NOTE_ON owns its note
    suffix_notes = {index[p] for p in on if spans.part_of(p) == "suffix"}
    assert all(decoded.start[k] >= end - half for k in suffix_notes)
    assert TOK.grammar().accepts(seq)
    assert len(infill.timeline(TOK, seq)) == len(seq) - len(suffix) - 2


def test_crops_get_headers_dropout_and_infilling(piece):
    ids, _ = piece
    cond = Conditioner(TOK, ["Chopin"], control_dropout=0.3, uncond_rate=0.2, infill_rate=0.5)
    rng = np.random.default_rng(0)
    n_none = n_infill = 0
    for _ in range(200):
        seq = cond.shape(ids[:300], 0, True, False, 257, rng)
        assert len(seq) <= 257
        head = [TOK.control_of(t) for t in seq if TOK.token_type(t) == TOK.type_code("CONTROL")]
        assert ("composer", "Bach") not in head and len(head) == len(set(head))
        n_none += not head
        spans = infill.spans(TOK, seq)
        if spans is None:
            assert seq[len(head)] == TOK.bos_id
        else:
            n_infill += 1
            assert spans.gap < len(seq) and TOK.token_type(seq[spans.gap]) == TOK.type_code("GAP")
            assert seq[spans.suffix[1]] == TOK.prefix_id and spans.suffix[0] == len(head) + 1
    assert 0.15 < n_infill / 200 < 0.85 and 0.15 < n_none / 200 < 0.45  # 0.2 + 0.8 * 0.3^3 ~ 0.22 get none
