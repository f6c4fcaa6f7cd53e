"""Controls and infilling in the vocabulary, the corpus and training crops (issue #15): no model needed but the last two."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from musicgpt.corpus.recipes import collect
from musicgpt.errors import CheckpointError, ConfigError
from musicgpt.tokens import infill
from musicgpt.tokens.controls import computed_values, controls_vocabulary, parse_controls
from musicgpt.tokens.performance import PerformanceTokenizer
from musicgpt.training.conditioning import Conditioner, carry_over, token_sources

from tiny_models import FIXTURES, PRIMER, tiny_model

PLAIN = PerformanceTokenizer()
TOK = PerformanceTokenizer(controls=controls_vocabulary(["composer", "density", "dynamics"], ["Bach", "Chopin"]),
                           infill=True)


def test_a_plain_tokenizer_is_unchanged_and_new_tokens_come_after_the_old_ones():
    assert PLAIN.to_dict() == {"type": "performance", "version": 1, "time_step": 0.01, "max_shift_steps": 100,
                               "velocity_bins": 32, "max_unclosed_duration": 5.0, "vocab_size": 391}
    assert [TOK.token_name(i) for i in range(391)] == [PLAIN.token_name(i) for i in range(391)]
    assert TOK.ranges["CONTROL"] == (391, 9) and TOK.ranges["INFILL"] == (400, 2) and TOK.ranges["GAP"] == (402, 40)
    assert TOK.vocab_size == 442
    assert PerformanceTokenizer.from_dict(TOK.to_dict()) == TOK and TOK.fingerprint() != PLAIN.fingerprint()
    assert TOK.token_name(391) == "CONTROL_composer=Bach" and TOK.token_name(TOK.gap_id(2.4)) == "GAP_2.5s"
    layout = TOK.layout()
    assert "composer: Bach, Chopin, unknown; density: low, medium, high" in layout and "INFILL_SUFFIX" in layout


def test_control_ids_by_name_unknown_values_and_errors():
    assert TOK.control_of(TOK.control_id("composer", "chopin")) == ("composer", "Chopin")  # case-insensitive
    assert TOK.control_of(TOK.control_id("composer", "Grieg")) == ("composer", "unknown")
    header = TOK.header({"dynamics": "loud", "composer": "Bach"})  # written in the tokenizer's order
    assert [TOK.token_name(t) for t in header] == ["CONTROL_composer=Bach", "CONTROL_dynamics=loud"]
    with pytest.raises(ConfigError, match="density='very high': unknown value .*low, medium, high"):
        TOK.control_id("density", "very high")
    with pytest.raises(ConfigError, match="'genre': this tokenizer has no such control"):
        TOK.header({"genre": "pop"})
    with pytest.raises(ConfigError, match="no such control .*none"):
        PLAIN.control_id("composer", "Bach")
    with pytest.raises(ConfigError, match="no infilling tokens"):
        PLAIN.gap_id(1.0)
    assert parse_controls(["composer=Chopin", " density = high "]) == {"composer": "Chopin", "density": "high"}
    for bad, message in ((["composer"], "expected NAME=VALUE"), (["a=1", "A=2"], "given twice")):
        with pytest.raises(ConfigError, match=message):
            parse_controls(bad)
    with pytest.raises(ConfigError, match="unknown control 'tempo'"):
        PerformanceTokenizer(controls={"tempo": ["fast"]})


def test_computed_controls_measure_the_music():
    from musicgpt.music.notes import Notes

    def values(n, seconds, velocity):  # n notes spread over `seconds`
        start = np.linspace(0, seconds, n, endpoint=False)
        return computed_values(PLAIN.encode(Notes(start, start + 0.05, np.full(n, 60), np.full(n, velocity))).ids, PLAIN)

    assert values(40, 10, 40) == {"density": "low", "dynamics": "soft"}
    assert values(120, 10, 66) == {"density": "medium", "dynamics": "medium"}
    assert values(200, 10, 100) == {"density": "high", "dynamics": "loud"}
    assert computed_values(np.zeros(0, np.int64), PLAIN) == {}


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


def test_recipes_record_composers(tmp_path):
    corpus = tmp_path / "corpus"
    for sub in ("Chopin", "Bach"):
        (corpus / sub).mkdir(parents=True)
        shutil.copy(PRIMER, corpus / sub / "a.mid")
    assert {s.rel: s.composer for s in collect(corpus, "folder", composer_from="folder")[1]} == \
        {"Chopin/a.mid": "Chopin", "Bach/a.mid": "Bach"}
    assert {s.composer for s in collect(corpus, "folder")[1]} == {None}
    with open(corpus / "metadata.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "composer"], ["Chopin/a.mid", "F. Chopin"]])
    assert {s.rel: s.composer for s in collect(corpus, "folder")[1]} == {"Chopin/a.mid": "F. Chopin", "Bach/a.mid": None}
    with pytest.raises(ConfigError, match="only with the folder recipe"):
        collect(FIXTURES, "pop909", composer_from="folder")


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


def test_new_embeddings_leave_old_logits_unchanged():
    model = tiny_model()
    source = token_sources(PLAIN, TOK)
    assert (source[:391] == np.arange(391)).all() and (source[391:] == -1).all()
    grown, note = carry_over(model, PLAIN, TOK, "test")
    assert note == "51 token embeddings added (CONTROL, GAP, INFILL), 391 carried over"
    ids = torch.from_numpy(PLAIN.encode(PRIMER).ids[:64])[None]
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(ids).logits[..., :391], model(ids).logits)
    with pytest.raises(CheckpointError, match="does not fit .*velocity_bins"):
        carry_over(model, PerformanceTokenizer(velocity_bins=16), TOK, "test")


def test_fine_tuning_adds_the_steering_tokens_and_records_the_model(tmp_path, capsys):
    import tomllib

    from musicgpt.model.gpt import load_checkpoint
    from musicgpt.training.loop import train

    from training_fixtures import micro_config, prepare_fixtures

    data = prepare_fixtures(tmp_path / "data")
    base = tmp_path / "base"
    train(micro_config(train={"steps": 2}), base, data=data)
    config = micro_config(data={"controls": ["density", "dynamics"], "infill_rate": 0.5}, finetune={"steps": 2})
    result = train(config, tmp_path / "ft", data=data, init_from=base)
    assert "token embeddings added (CONTROL, GAP, INFILL), 391 carried over" in capsys.readouterr().err
    model, tokenizer = load_checkpoint(result.last_checkpoint)
    assert list(tokenizer.controls) == ["density", "dynamics"] and tokenizer.infill
    assert model.config.vocab_size == tokenizer.vocab_size == 391 + 6 + 2 + 40
    written = tomllib.loads((tmp_path / "ft" / "config.toml").read_text())
    assert written["model"]["vocab_size"] == tokenizer.vocab_size and written["data"]["infill_rate"] == 0.5
    resumed = train(micro_config(data={"controls": ["density", "dynamics"], "infill_rate": 0.5},
                                 finetune={"steps": 3}), tmp_path / "ft", resume=True)
    assert load_checkpoint(resumed.last_checkpoint)[1] == tokenizer


def test_the_layout_of_a_saved_steerable_tokenizer_prints_its_controls(tmp_path, capsys):
    from musicgpt.tokens.__main__ import main

    TOK.save(tmp_path / "tokenizer.json")
    assert main(["--tokenizer", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "composer: Bach, Chopin, unknown" in out and "INFILL_SUFFIX" in out and "GAP" in out
    assert f"vocab_size {TOK.vocab_size}" in out
    assert main(["--tokenizer", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


def test_prompt_tuning_moves_only_the_control_rows_and_needs_a_trained_model(tmp_path):
    from musicgpt.model.gpt import load_checkpoint
    from musicgpt.training.conditioning import control_rows
    from musicgpt.training.loop import train

    from training_fixtures import micro_config, prepare_fixtures

    data = prepare_fixtures(tmp_path / "data")
    steer = {"controls": ["density", "dynamics"], "uncond_rate": 0.0, "control_dropout": 0.0}
    base = train(micro_config(data=steer, train={"steps": 2}), tmp_path / "base", data=data).last_checkpoint
    tuned = train(micro_config(data=steer, finetune={"steps": 3, "lr": 0.05, "trainable": "controls"}),
                  tmp_path / "tuned", data=data, init_from=base)
    (before, tokenizer), (after, _) = load_checkpoint(base), load_checkpoint(tuned.last_checkpoint)
    rows = control_rows(tokenizer)
    assert [tokenizer.token_name(i).split("=")[0] for i in rows] == ["CONTROL_density"] * 3 + ["CONTROL_dynamics"] * 3
    old, new = before.state_dict(), after.state_dict()
    assert after.tied_weights() == {"lm_head.weight"}  # the same tensor as tok_emb.weight
    for name in old:
        if name not in ("tok_emb.weight", "lm_head.weight"):
            assert torch.equal(old[name], new[name]), name
    others = np.setdiff1d(np.arange(tokenizer.vocab_size), rows)
    assert torch.equal(old["tok_emb.weight"][others], new["tok_emb.weight"][others])
    assert not torch.equal(old["tok_emb.weight"][rows], new["tok_emb.weight"][rows])
    assert tuned.best_valid_nll is not None
    with pytest.raises(ConfigError, match="needs --init-from"):
        train(micro_config(data=steer, finetune={"trainable": "controls"}), tmp_path / "fresh", data=data)
    with pytest.raises(ConfigError, match="needs data.controls"):
        train(micro_config(finetune={"trainable": "controls"}), tmp_path / "plain", data=data, init_from=base)
