"""musicgpt.tokens.augment: transposition and time stretch on token ids."""

from pathlib import Path

import numpy as np
import pytest

from musicgpt.tokens.augment import allowed_shifts, make_augmenter, pitch_bounds, stretch, transpose
from musicgpt.music.notes import Notes
from musicgpt.tokens.performance import PerformanceTokenizer

FIXTURES = Path(__file__).parent / "fixtures"
TOK = PerformanceTokenizer()
ENC = TOK.encode(FIXTURES / "asap_chopin_etude_op25_8_Toscano02.mid")


def test_transpose_moves_only_note_tokens():
    up = transpose(ENC.ids, 2, TOK)
    kinds = TOK.token_type(ENC.ids)
    is_note = (kinds == 3) | (kinds == 4)
    assert np.array_equal(up[~is_note], ENC.ids[~is_note]) and np.all(up[is_note] == ENC.ids[is_note] + 2)
    notes = TOK.decode(up)
    assert np.array_equal(notes.pitch, ENC.notes.pitch + 2) and np.array_equal(notes.start, ENC.notes.start)
    assert np.array_equal(transpose(ENC.ids.astype(np.uint16), -1, TOK).dtype, np.uint16)
    with pytest.raises(ValueError):
        transpose(np.array([TOK.note_on(127)]), 1, TOK)


def test_allowed_shifts_keep_the_piano_range():
    ids = np.array([TOK.note_on(23), TOK.time_shift(5), TOK.note_off(106)])
    assert pitch_bounds(ids, TOK) == (23, 106)
    assert allowed_shifts(ids, TOK).tolist() == [-2, -1, 0, 1, 2]
    assert allowed_shifts(np.array([TOK.note_off(108), TOK.note_on(21)]), TOK).tolist() == [0]
    assert allowed_shifts(np.array([TOK.time_shift(3)]), TOK).tolist() == [-3, -2, -1, 0, 1, 2, 3]
    outside = np.array([TOK.note_on(110)])  # already outside: 0, or a shift that brings it inside
    assert allowed_shifts(outside, TOK).tolist() == [-3, -2, 0]


@pytest.mark.parametrize("factor", [0.95, 0.97, 1.03, 1.05])
def test_stretch_scales_times_and_keeps_every_note(factor):
    out = stretch(ENC.ids, factor, TOK)
    notes = TOK.decode(out)
    assert len(notes) == len(ENC.notes)
    order = np.lexsort((ENC.notes.pitch, ENC.notes.start))
    assert np.array_equal(notes.pitch, ENC.notes.pitch[order]) and np.array_equal(notes.velocity, ENC.notes.velocity[order])
    assert np.abs(notes.start - ENC.notes.start[order] * factor).max() <= 0.02
    assert TOK.grammar(canonical=True).accepts(out)


def test_stretch_identity_and_exact_doubling():
    assert np.array_equal(stretch(ENC.ids, 1.0, TOK), ENC.ids)
    doubled = TOK.decode(stretch(ENC.ids, 2.0, TOK))
    assert np.allclose(doubled.start, ENC.notes.start * 2) and np.allclose(doubled.end, ENC.notes.end * 2)


def test_stretch_never_merges_time_steps():
    # one-step gaps cannot shrink to nothing: a 10 ms note stays 10 ms at factor 0.95
    notes = Notes(np.arange(20) * 0.01, np.arange(20) * 0.01 + 0.01, np.full(20, 60), np.full(20, 80))
    ids = TOK.encode(notes).ids
    out = TOK.decode(stretch(ids, 0.95, TOK))
    assert len(out) == 20 and np.all(out.duration > 0)


def test_stretch_keeps_trailing_silence_and_splits_long_gaps():
    ids = np.array([TOK.velocity(10), TOK.note_on(60), TOK.time_shift(100), TOK.time_shift(90), TOK.note_off(60),
                    TOK.time_shift(40)])
    out = stretch(ids, 1.05, TOK)
    names = [TOK.token_name(t) for t in out]
    assert names == ["VELOCITY_10", "NOTE_ON_60", "TIME_SHIFT_100", "TIME_SHIFT_100", "NOTE_OFF_60", "TIME_SHIFT_42"]


def test_random_crops_stay_decodable():
    rng = np.random.default_rng(0)
    augment = make_augmenter(TOK)
    for _ in range(200):
        start = int(rng.integers(0, len(ENC.ids) - 1024))
        crop = ENC.ids[start:start + 1024].astype(np.uint16)
        out = augment(crop, rng)
        assert out.dtype == np.uint16 and 0.9 * len(crop) < len(out) < 1.1 * len(crop)
        assert out.min() >= 3 and out.max() < TOK.vocab_size
        TOK.decode(out)


def test_make_augmenter_is_reproducible_and_can_be_disabled():
    a = make_augmenter(TOK)
    first = a(ENC.ids[:500], np.random.default_rng(5))
    assert np.array_equal(first, a(ENC.ids[:500], np.random.default_rng(5)))
    assert make_augmenter(TOK, transpose=0, stretch=0) is None
    only_transpose = make_augmenter(TOK, stretch=0)
    out = only_transpose(ENC.ids[:500], np.random.default_rng(1))
    assert len(out) == 500 and np.array_equal(TOK.token_type(out), TOK.token_type(ENC.ids[:500]))
