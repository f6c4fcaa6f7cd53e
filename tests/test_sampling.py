"""Sampling: filters, seeded draws, grammar masks, closing of sounding notes."""

import numpy as np
import pytest
import torch

from musicgpt.errors import ConfigError
from musicgpt.generation.constraints import GrammarMask, LongNoteLimit
from musicgpt.generation.sampling import SamplingConfig, filter_logits, keep_type_mass, make_generator, sample
from musicgpt.tokens import PerformanceTokenizer, Tokenizer

TOK = PerformanceTokenizer()


def kept(logits, **kw):
    return torch.isfinite(filter_logits(logits, SamplingConfig(**kw)))


def test_config_errors_name_the_setting():
    for kw, name in [({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"), ({"top_p": 0.0}, "top_p"),
                     ({"top_p": 1.5}, "top_p"), ({"min_p": 1.0}, "min_p")]:
        with pytest.raises(ConfigError, match=name):
            SamplingConfig(**kw)


def test_filters_keep_what_they_should():
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
    logits = probs.log()
    assert kept(logits, top_k=2).tolist() == [[True, True, False, False]]
    assert kept(logits, top_p=0.5).tolist() == [[True, False, False, False]]
    assert kept(logits, top_p=0.6).tolist() == [[True, True, False, False]]
    assert kept(logits, top_p=0.9).tolist() == [[True, True, True, False]]
    assert kept(logits, min_p=0.4).tolist() == [[True, True, False, False]]  # 0.15 < 0.4 * 0.5 <= 0.25
    assert kept(logits).all()
    # temperature sharpens: the same ranking, a larger gap
    sharp = torch.softmax(filter_logits(logits, SamplingConfig(temperature=0.5)), -1)
    assert sharp[0, 0] > 0.5 and sharp.argsort(descending=True).tolist() == [[0, 1, 2, 3]]


def test_seeded_draws_repeat_and_respect_the_mask():
    logits = torch.randn(3, 50)
    allowed = torch.zeros(3, 50, dtype=torch.bool)
    allowed[:, 10:20] = True
    cfg = SamplingConfig(temperature=1.5)
    a = [sample(logits, cfg, gen, allowed).tolist() for gen in [make_generator(7)] for _ in range(200)]
    b = [sample(logits, cfg, gen, allowed).tolist() for gen in [make_generator(7)] for _ in range(200)]
    assert a == b
    flat = np.array(a).ravel()
    assert flat.min() >= 10 and flat.max() < 20 and len(set(flat)) > 5
    greedy = sample(logits, SamplingConfig(temperature=0), make_generator(0), allowed)
    assert greedy.tolist() == (logits.masked_fill(~allowed, -1e9)).argmax(-1).tolist()


def test_grammar_masks():
    g = GrammarMask(TOK, batch=1, allow_eos=False)
    g.feed(0, [TOK.bos_id])
    m = g.allowed_row(0)
    assert not m[TOK.pad_id] and not m[TOK.bos_id] and not m[TOK.eos_id]
    assert not m[TOK.note_off(np.arange(128))].any()  # nothing sounds yet
    g.push(0, TOK.velocity(10))
    m = g.allowed_row(0)
    assert m[TOK.note_on(np.arange(128))].all() and m.sum() == 128  # after VELOCITY only NOTE_ON
    g.push(0, TOK.note_on(60))
    m = g.allowed_row(0)
    assert not m[TOK.note_on(60)] and not m[TOK.note_off(60)]  # sounding, and opened in this very step
    g.push(0, TOK.time_shift(5))
    m = g.allowed_row(0)
    assert m[TOK.note_off(60)] and m[TOK.note_off(np.arange(128))].sum() == 1
    assert GrammarMask(TOK, 1, allow_eos=True).allowed_row(0)[TOK.eos_id]


def test_velocity_is_masked_when_no_note_on_could_follow():
    g = GrammarMask(TOK, batch=1)
    g.feed(0, [TOK.bos_id, *TOK.note_on(np.arange(128))])
    m = g.allowed_row(0)
    assert not m[TOK.velocity(np.arange(32))].any() and m.any()


def test_closing_tokens_end_every_note():
    g = GrammarMask(TOK, batch=1)
    body = [TOK.velocity(20), TOK.note_on(60), TOK.time_shift(10), TOK.note_on(64), TOK.velocity(3)]
    g.feed(0, [TOK.bos_id, *body])
    closing, drop = g.closing_tokens(0, body)
    assert drop == 1  # the trailing VELOCITY has no NOTE_ON
    assert closing == [TOK.time_shift(1), TOK.note_off(60), TOK.note_off(64)]  # 64 began in this step
    ids = [TOK.bos_id, *body[:-1], *closing]
    notes = TOK.decode(ids)
    assert len(notes) == 2 and np.allclose(notes.end, [0.11, 0.11])
    assert TOK.grammar().accepts(ids)


def test_tokenizer_without_grammar_gets_the_generic_rule():
    class Plain(Tokenizer):  # declares no grammar: grammar() is None
        vocab_size, pad_id, bos_id, eos_id, type_names = 10, 0, 1, 2, ("PAD", "BOS", "EOS", "EVENT")

        def token_type(self, ids):
            return np.minimum(np.asarray(ids), 3)

        def encode(self, source, **read_kwargs):
            raise NotImplementedError

        def decode_with_index(self, ids):
            raise NotImplementedError

        def token_name(self, token):
            return str(token)

        def params(self):
            return {}

    g = GrammarMask(Plain(), batch=2, allow_eos=False)
    assert g.allowed([0, 1]).shape == (2, 10)
    assert g.allowed_row(0).tolist() == [False, False, False] + [True] * 7
    assert g.closing_tokens(0, [5]) == ([], 0)


@pytest.mark.parametrize("allow_eos", [False, True])
def test_incremental_mask_equals_the_grammar_state_at_every_step(allow_eos):
    """GrammarMask.blocked is updated in a few writes per token; it must equal the GrammarState's rows."""
    rng = np.random.default_rng(0)
    g = GrammarMask(TOK, batch=2, allow_eos=allow_eos)
    primer = [TOK.bos_id, TOK.velocity(3), TOK.note_on(60), TOK.note_on(62), TOK.velocity(9)]
    g.feed(0, primer)  # ends after a VELOCITY
    g.feed(1, [TOK.bos_id])
    ons = TOK.note_on(np.arange(128))
    full = 0
    for step in range(3000):
        for b in range(2):
            assert np.array_equal(~g.blocked[b].numpy(), g.allowed_row(b)), (step, b)
            row = g.allowed_row(b)
            if b == 1 and 200 <= step < 400 and row[ons].any():  # every pitch at once: VELOCITY closes, then reopens
                token = int(ons[row[ons]][0])
            else:
                token = int(rng.choice(np.flatnonzero(row)))
            full += b == 1 and not row[ons].any()
            if token == TOK.eos_id:
                token = TOK.time_shift(1)
            g.push(b, token)
    assert np.array_equal(~g.blocked.numpy(), np.stack([g.allowed_row(0), g.allowed_row(1)]))
    assert full > 0  # the all-pitches-sounding case happened
    g.push(0, TOK.note_off(5) if g.blocked[0, TOK.note_off(5)] else TOK.bos_id)  # a token it forbade
    assert np.array_equal(~g.blocked[0].numpy(), g.allowed_row(0))
    g.finish(1)
    assert not g.blocked[1, TOK.note_on(60)] and g.blocked[1, TOK.pad_id]


def test_long_note_limit_forces_the_overdue_note_off():
    limit = LongNoteLimit(TOK, batch=2, seconds=1.5)
    blocked = torch.zeros(2, TOK.vocab_size, dtype=torch.bool)
    for b in range(2):
        limit.feed(b, [TOK.bos_id, int(TOK.velocity(20)), int(TOK.note_on(60)), int(TOK.time_shift(100))])
    assert limit.apply(blocked, [0, 1]) is blocked  # 1 s: not yet
    limit.push(0, int(TOK.note_on(64)))
    limit.push(0, int(TOK.time_shift(50)))  # pitch 60 has sounded 1.5 s, pitch 64 0.5 s
    limit.push(1, int(TOK.note_off(60)))  # sequence 1 closed its note itself
    limit.push(1, int(TOK.time_shift(50)))
    forced = limit.apply(blocked, [0, 1])
    assert forced is not blocked and not blocked.any()  # the grammar's own mask is left alone
    assert torch.equal(torch.nonzero(~forced[0]).flatten(), torch.tensor([int(TOK.note_off(60))]))
    assert not forced[1].any()
    assert limit.apply(blocked, [1]) is blocked  # only active sequences are forced
    limit.push(0, int(TOK.velocity(20)))  # after a VELOCITY only a NOTE_ON may follow: wait a token
    assert limit.apply(blocked, [0]) is blocked
    limit.push(0, int(TOK.note_on(67)))
    limit.push(0, int(TOK.note_off(60)))
    assert limit.apply(blocked, [0]) is blocked
    assert LongNoteLimit(TOK, batch=1, seconds=0).apply(blocked, [0]) is blocked  # 0 = no limit


def test_masking_keeps_each_event_types_probability():
    mask = GrammarMask(TOK, batch=1)
    mask.feed(0, [TOK.bos_id, int(TOK.velocity(10)), int(TOK.note_on(60)), int(TOK.velocity(10)),
                  int(TOK.note_on(64)), int(TOK.time_shift(5))])
    logits = torch.randn(1, TOK.vocab_size, generator=torch.Generator().manual_seed(0)) * 2
    before = torch.softmax(logits, -1) @ mask.types  # (1, T) probability of each event type
    adjusted = keep_type_mass(logits, mask.blocked, mask.types).masked_fill(mask.blocked, float("-inf"))
    after = torch.softmax(adjusted, -1) @ mask.types
    off = TOK.type_names.index("NOTE_OFF")
    allowed_types = (((~mask.blocked).float() @ mask.types) > 0)[0]
    torch.testing.assert_close(after[0, allowed_types], before[0, allowed_types] / before[0, allowed_types].sum())
    assert allowed_types[off] and after[0, off] > torch.softmax(logits.masked_fill(mask.blocked, float("-inf")),
                                                                -1)[0, TOK.note_off([60, 64])].sum() * 1.5
    # within a type the allowed tokens keep their odds; the plain mask is still available
    p = torch.softmax(adjusted, -1)[0]
    q = torch.softmax(logits, -1)[0]
    a, b = (int(t) for t in TOK.note_off([60, 64]))
    torch.testing.assert_close(p[a] / p[b], q[a] / q[b])
    plain = sample(logits, SamplingConfig(temperature=0, keep_type_mass=False), None, blocked=mask.blocked,
                   types=mask.types)
    assert plain == logits.masked_fill(mask.blocked, float("-inf")).argmax(-1)
