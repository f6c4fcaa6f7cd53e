"""Generation: the fast decoder against the model, cached logits against a full forward pass, the sliding
window, seeds, grammar, primers, MIDI output in every parser, and the CLI end to end on a tiny model (its
arcs.json with each note's NLL)."""

import filecmp
import json

import mido
import numpy as np
import pretty_midi
import pytest
import torch

import musicgpt
from musicgpt.arcs.format import read_arcs
from musicgpt.cli import main
from musicgpt.model.decode_step import Decoder
from musicgpt.errors import ConfigError
from musicgpt.music.midi import read_midi
from musicgpt.generation.primer import primer_ids
from musicgpt.tokens.performance import PerformanceTokenizer
from tiny_models import PRIMER, tiny_checkpoint, tiny_model

TOK = PerformanceTokenizer()


@pytest.mark.parametrize("position", ["relative", "absolute", "both"])
@pytest.mark.parametrize("batch", [1, 2])
def test_decoder_steps_match_the_models_forward(position, batch):
    model = tiny_model(position)
    length = 200 if position == "relative" else 128  # relative: past n_ctx=128, the window slides
    x = torch.randint(0, 391, (batch, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x, window=model.config.n_ctx).logits
        cache = model.new_cache()
        parts = [model(x[:, :7], cache=cache).logits]
        decoder = Decoder(model)
        for t in range(7, length):
            logits, att = decoder.step(x[:, t], cache, need_attention=t == length - 1)
            parts.append(logits[:, None])
    assert (torch.cat(parts, 1) - full).abs().max() <= 1e-4
    assert len(att) == model.config.n_layer and att[0].shape == (batch, 2, min(length, 128))
    torch.testing.assert_close(att[0].sum(-1), torch.ones(batch, 2))


def test_absolute_positions_stop_at_the_context():
    model = tiny_model("absolute")
    with pytest.raises(ConfigError, match="n_ctx"):
        musicgpt.generate(model, max_new_tokens=200, seed=0, stop_at_eos=False)


@pytest.mark.parametrize("primer", [None, "file"])
def test_every_steps_logits_equal_a_full_forward_pass_past_the_context(primer):
    model = tiny_model()
    (s,) = musicgpt.generate(model, PRIMER if primer else None, primer_tokens=40, max_new_tokens=300, seed=3,
                             stop_at_eos=False, return_logits=True, temperature=1.3)
    n = s.n_generated
    assert n == 300 and len(s.ids) > model.config.n_ctx * 2  # far past the 128-token context
    ids = torch.from_numpy(s.ids[: s.primer_length + n])[None]
    with torch.no_grad():
        full = model(ids, window=model.config.n_ctx).logits[0]  # every token sees the last 128
    expected = full[s.primer_length - 1 : s.primer_length - 1 + n]
    assert (s.logits - expected).abs().max() <= 1e-4
    assert s.primer_length == (41 if primer else 1)


def test_same_seed_same_samples_and_batches():
    model = tiny_model()
    a = musicgpt.generate(model, max_new_tokens=120, seed=11, num_samples=3, stop_at_eos=False)
    b = musicgpt.generate(model, max_new_tokens=120, seed=11, num_samples=3, stop_at_eos=False)
    c = musicgpt.generate(model, max_new_tokens=120, seed=12, num_samples=3, stop_at_eos=False)
    assert [x.ids.tolist() for x in a] == [x.ids.tolist() for x in b]
    assert a[0].ids.tolist() != c[0].ids.tolist()
    assert len({tuple(x.ids) for x in a}) == 3  # the samples of one batch differ
    assert all(x.seed == 11 for x in a)
    drawn = musicgpt.generate(model, max_new_tokens=5)[0].seed
    assert isinstance(drawn, int)


def test_outputs_obey_the_grammar_and_close_every_note():
    model = tiny_model()
    for s in musicgpt.generate(model, PRIMER, primer_tokens=33, max_new_tokens=250, seed=5, num_samples=2,
                               stop_at_eos=False, temperature=2.0):
        assert s.ids[0] == TOK.bos_id
        state = TOK.grammar()
        assert state.accepts(s.ids[1:])
        assert not state.sounding.any()  # every note got its NOTE_OFF
        notes, index = TOK.decode_with_index(s.ids)
        n_on = int((TOK.token_type(s.ids) == TOK.type_names.index("NOTE_ON")).sum())
        assert len(notes) == n_on == len(s.notes)  # no note dropped or merged


def test_eos_stops_a_sample_unless_masked():
    model = tiny_model()
    with torch.no_grad():  # make EOS the argmax everywhere
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(model.tok_emb.weight[TOK.eos_id] * 10)
    # plain masking: with keep_type_mass the 128 NOTE_OFFs' summed mass would go to the sounding notes' ones
    (s,) = musicgpt.generate(model, PRIMER, primer_tokens=20, max_new_tokens=50, temperature=0, seed=0,
                             keep_type_mass=False)
    assert s.stop_reason == "eos" and s.n_generated == 0 and TOK.eos_id not in s.ids
    (s,) = musicgpt.generate(model, max_new_tokens=50, temperature=0, seed=0, stop_at_eos=False)
    assert s.stop_reason == "length" and s.n_generated == 50 and TOK.eos_id not in s.ids


def test_seconds_of_new_music():
    model = tiny_model()
    (s,) = musicgpt.generate(model, PRIMER, primer_seconds=3.0, seconds=2.0, seed=2, stop_at_eos=False)
    primer = TOK.decode(s.ids[: s.primer_length])
    assert primer.start.max() < 3.0
    new = s.ids[s.primer_length :]
    new_time = TOK.token_value(new)[TOK.token_type(new) == TOK.type_names.index("TIME_SHIFT")].sum() * TOK.time_step
    assert s.stop_reason == "seconds" and 2.0 <= new_time < 2.0 + 1.0 + 0.011  # the last shift may overshoot


def test_max_note_seconds_bounds_every_new_note():
    model = tiny_model()
    kw = dict(primer_seconds=3.0, seconds=6.0, seed=5, stop_at_eos=False, num_samples=2, temperature=1.5)
    free = musicgpt.generate(model, PRIMER, max_note_seconds=0, **kw)
    capped = musicgpt.generate(model, PRIMER, max_note_seconds=0.5, **kw)
    for s in capped:
        new = s.notes[~s.primer_notes]
        assert len(new) and (new.end - new.start).max() <= 0.5 + 1.0 + 1e-6  # one TIME_SHIFT (<= 1 s) late at most
    longest = max(float((s.notes.end - s.notes.start)[~s.primer_notes].max()) for s in free)
    assert longest > 1.5  # the random tiny model does hold notes longer when nothing stops it
    with pytest.raises(ConfigError, match="max_note_seconds"):
        musicgpt.generate(model, max_new_tokens=4, max_note_seconds=-1)


def test_primer_sources_and_cuts(tmp_path):
    notes = read_midi(PRIMER)
    ids = TOK.encode(notes).ids
    assert primer_ids(PRIMER, TOK).tolist() == ids.tolist()
    for n in range(1, 12):  # a VELOCITY cut off from its NOTE_ON is dropped
        expected = ids[: n - 1] if TOK.token_name(ids[n - 1]).startswith("VELOCITY") else ids[:n]
        assert primer_ids(notes, TOK, tokens=n).tolist() == expected.tolist()
    cut = primer_ids(notes, TOK, seconds=2.0)
    assert TOK.decode(cut).start.max() < 2.0 and len(cut) < len(ids)
    assert primer_ids([TOK.bos_id, *ids[:5]], TOK).tolist() == ids[:5].tolist()
    with pytest.raises(ConfigError):
        primer_ids(notes, TOK, seconds=1, tokens=3)
    abc = tmp_path / "tune.abc"
    abc.write_text("X:1\nT:scale\nM:4/4\nL:1/4\nQ:1/4=120\nK:C\nC D E F | G A B c |\n")
    from_abc = TOK.decode(primer_ids(abc, TOK))
    assert from_abc.pitch.tolist() == [60, 62, 64, 65, 67, 69, 71, 72]
    assert np.allclose(np.diff(from_abc.start), 0.5)


def test_midi_output_parses_everywhere(tmp_path):
    model = tiny_model()
    (s,) = musicgpt.generate(model, PRIMER, primer_seconds=4, max_new_tokens=150, seed=9, stop_at_eos=False)
    path = s.to_midi(tmp_path / "x.mid")
    names = [t.name for t in mido.MidiFile(path).tracks if t.name]
    assert names == ["primer", "continuation"]
    pm = pretty_midi.PrettyMIDI(str(path))
    assert [(i.name, len(i.notes)) for i in pm.instruments] == [
        ("primer", int(s.primer_notes.sum())), ("continuation", int((~s.primer_notes).sum()))]
    import music21

    assert len(music21.converter.parse(str(path)).flatten().notes) > 0
    back = read_midi(path)
    assert back.pitch.tolist() == s.notes.pitch.tolist()
    assert np.abs(back.start - s.notes.start).max() < 1e-6 and np.abs(back.end - s.notes.end).max() < 1e-6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def test_cli_generate_with_arcs_is_reproducible_and_attend_reads_it(checkpoint, tmp_path, capsys):
    args = ["generate", "--checkpoint", str(checkpoint), "--primer", str(PRIMER), "--primer-seconds", "3",
            "--max-new-tokens", "200", "--seed", "4", "--arcs", "--num-samples", "2", "--ignore-eos", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "sample_01.html" in out and "seed 4" in out
    for name in ("sample_00.mid", "sample_00.arcs.json", "sample_00.html", "sample_01.mid"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    d = read_arcs(tmp_path / "a" / "sample_00.arcs.json")  # validates the schema
    assert d["seed"] == 4 and any(n["primer"] for n in d["notes"]) and not all(n["primer"] for n in d["notes"])
    assert len(d["arcs"]) > 0 and d["n_layer"] == 2 and d["n_head"] == 2
    assert main(["attend", str(checkpoint), str(tmp_path / "a" / "sample_00.mid"), "--out", str(tmp_path / "c")]) == 0
    e = read_arcs(tmp_path / "c" / "sample_00.arcs.json")
    assert (tmp_path / "c" / "sample_00.html").is_file()
    assert [n["primer"] for n in e["notes"]] == [n["primer"] for n in d["notes"]]  # the "primer" track
    assert [n["pitch"] for n in e["notes"]] == [n["pitch"] for n in d["notes"]]


def test_cli_errors_are_one_line(tmp_path, capsys, checkpoint):
    assert main(["generate", "--checkpoint", str(tmp_path / "nope"), "--quiet"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(checkpoint), "--primer", str(tmp_path / "no.mid"), "--quiet",
                 "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "no.mid" in err and len(err.splitlines()) == 1
    assert main(["generate", "--checkpoint", str(checkpoint), "--top-p", "0", "--quiet", "--out", str(tmp_path)]) == 1
    assert "top_p" in capsys.readouterr().err


def test_arcs_document_fields(checkpoint):
    from musicgpt.model import load_checkpoint

    model, tok = load_checkpoint(checkpoint)
    (s,) = musicgpt.generate(model, PRIMER, tokenizer=tok, primer_tokens=30, max_new_tokens=60, seed=1, arcs=True,
                             stop_at_eos=False)
    d = s.arcs
    assert json.loads(json.dumps(d)) == d
    assert d["model"]["n_ctx"] == 128 and d["tokenizer"]["type"] == "performance"
    assert [n["token"] for n in d["notes"]] == s.note_token.tolist()


def test_the_decoder_is_kept_until_the_weights_change():
    model = tiny_model()
    first = Decoder.for_model(model)
    assert Decoder.for_model(model) is first
    (a,) = musicgpt.generate(model, max_new_tokens=40, seed=2, stop_at_eos=False, return_logits=True)
    with torch.no_grad():
        model.blocks[1].mlp.fc.weight.mul_(3.0)  # in place: the version counter moves
    assert Decoder.for_model(model) is not first
    (b,) = musicgpt.generate(model, max_new_tokens=40, seed=2, stop_at_eos=False, return_logits=True)
    with torch.no_grad():
        full = model(torch.from_numpy(b.ids[: b.primer_length + 39])[None]).logits[0, b.primer_length - 1 :]
    assert (b.logits - full).abs().max() <= 1e-4 and (a.logits - b.logits).abs().max() > 1e-3


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
