"""Infilling: the layout of a training sequence (the suffix read first, then prefix and middle), training crops
with CONTROL headers, control dropout and infilling; `musicgpt.infill` keeping the rest of a piece exactly and
filling only the gap, valid MIDI for random spans, and the PNG of an infilled piece."""

from __future__ import annotations

import mido
import numpy as np
import pretty_midi
import pytest

import musicgpt
from musicgpt.arcs.format import validate_arcs
from musicgpt.music.scores import read_notes
from musicgpt.tokens import infill
from musicgpt.training.conditioning import Conditioner

from tiny_models import PRIMER, steering_model, steering_tokenizer

TOK = steering_tokenizer(("composer", "density", "dynamics"))  # the layout's and the crops' tests
STEERING = steering_tokenizer()  # the steering model's: composer and density, infilling


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


# ---- musicgpt.infill ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return steering_model()[0]


@pytest.mark.parametrize("start,end", [(3.0, 6.5), (0.0, 1.5), (60.0, 90.0)])
def test_infill_keeps_the_rest_exactly_and_fills_only_the_gap(model, start, end, tmp_path):
    original = read_notes(PRIMER)
    samples = musicgpt.infill(model, PRIMER, start, end, tokenizer=STEERING, seed=2, num_samples=2, arcs=True,
                              controls={"composer": "Bach"}, guidance=1.5)
    outside = (original.start < start) | (original.start >= end)
    for s in samples:
        assert s.stop_reason == "end" and s.infill == (start, end)
        kept, new = s.notes[s.primer_notes], s.notes[~s.primer_notes]
        np.testing.assert_array_equal(kept.start, original.start[outside])  # exact: not re-quantized
        np.testing.assert_array_equal(kept.pitch, original.pitch[outside])
        assert (kept.end <= original.end[outside]).all()  # cut only where a new note of the pitch begins
        assert len(new) and (new.start >= start).all() and (new.start < end).all() and (new.end <= end + 1e-9).all()
        assert np.isfinite(s.note_nll[~s.primer_notes]).all() and np.isnan(s.note_nll[s.primer_notes]).all()
        validate_arcs(s.arcs)
        notes = s.arcs["notes"]
        assert s.arcs["infill"] == [start, end] and {n["part"] for n in notes} <= {"prefix", "middle", "suffix"}
        assert all(n["start"] >= end - 0.006 for n in notes if n["part"] == "suffix")
        forward = [a for a in s.arcs["arcs"] if notes[a["key"]]["start"] > notes[a["query"]]["start"]]
        assert all(notes[a["key"]]["part"] == "suffix" != notes[a["query"]]["part"] for a in forward)
        assert bool(forward) == any(n["part"] == "suffix" for n in notes)  # read first, attended to
        path = s.save(tmp_path, "x")[0]
        midi = pretty_midi.PrettyMIDI(str(path))
        assert [i.name for i in midi.instruments] == ["piece", "infill"]
        assert sum(len(i.notes) for i in midi.instruments) == len(s.notes)
        mido.MidiFile(path)  # parses


def test_every_infill_of_random_spans_is_valid_midi(model, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        start = float(rng.uniform(0, 70))
        end = start + float(rng.uniform(0.2, 8))
        (s,) = musicgpt.infill(model, PRIMER, start, end, tokenizer=STEERING, seed=i, temperature=1.3)
        path = s.save(tmp_path, f"s{i}")[0]
        notes = pretty_midi.PrettyMIDI(str(path)).instruments
        for pitch in range(128):  # no two notes of one pitch overlap
            spans = sorted((n.start, n.end) for inst in notes for n in inst.notes if n.pitch == pitch)
            assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:]))


def test_the_png_of_an_infilled_piece_shades_the_gap_and_dashes_arcs_to_later_notes(model, tmp_path):
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch

    from musicgpt.viz.png import SUFFIX_COLOR, draw_arcs, render_png

    (s,) = musicgpt.infill(model, PRIMER, 3.0, 6.5, tokenizer=STEERING, seed=2, arcs=True)
    d, notes = s.arcs, s.arcs["notes"]
    forward = [a for a in d["arcs"] if notes[a["key"]]["start"] > notes[a["query"]]["start"]]
    q = forward[0]["query"]
    ax = Figure().add_subplot()
    assert draw_arcs(ax, d, q, layers=[forward[0]["layer"]], top=None, threshold=0.0) == q
    dashed = [p for p in ax.patches if isinstance(p, PathPatch) and p.get_linestyle() not in ("-", "solid")]
    assert dashed, "an arc to a later (suffix) note is drawn dashed"
    role = {"prefix": "kept, before the gap", "middle": "infilled"}[notes[q]["part"]]  # the suffix is read first
    assert role in ax.get_title(loc="left") and [t.get_text() for t in ax.texts] == [" infill ▸"]
    faces = [tuple(round(c, 3) for c in fc[:3]) for coll in ax.collections for fc in coll.get_facecolors()]
    assert tuple(round(int(SUFFIX_COLOR[i:i + 2], 16) / 255, 3) for i in (1, 3, 5)) in faces
    assert render_png(d, tmp_path / "infill.png", q).__eq__(q) and (tmp_path / "infill.png").stat().st_size > 0
