"""Controls: the CONTROL tokens of a vocabulary (by name, unknown values, errors), the values computed from the
music, the printed layout of a steerable tokenizer; generation with controls and classifier-free guidance, the
header pinned in a window that slides, and the CLI's --list-controls, --control and --infill.

A tiny random model grown to a vocabulary with controls and infilling tokens stands in for a trained one:
these tests pin the mechanics (what the model reads, the clock, the files), not the music.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import musicgpt
from musicgpt.arcs.capture import ArcsConfig
from musicgpt.arcs.format import validate_arcs
from musicgpt.cli import main
from musicgpt.errors import ConfigError
from musicgpt.generation import Generation, GenerationSettings
from musicgpt.generation.sampling import SamplingConfig
from musicgpt.tokens.controls import computed_values, parse_controls
from musicgpt.tokens.performance import PerformanceTokenizer

from tiny_models import PRIMER, steering_model, steering_tokenizer, tiny_model

PLAIN = PerformanceTokenizer()
TOK = steering_tokenizer(("composer", "density", "dynamics"))  # the vocabulary's tests
STEERING = steering_tokenizer()  # the steering model's: composer and density, infilling


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


def test_the_layout_of_a_saved_steerable_tokenizer_prints_its_controls(tmp_path, capsys):
    from musicgpt.tokens.__main__ import main

    TOK.save(tmp_path / "tokenizer.json")
    assert main(["--tokenizer", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "composer: Bach, Chopin, unknown" in out and "INFILL_SUFFIX" in out and "GAP" in out
    assert f"vocab_size {TOK.vocab_size}" in out
    assert main(["--tokenizer", str(tmp_path / "missing")]) == 1
    assert "missing" in capsys.readouterr().err


# ---- generation with controls ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return steering_model()[0]


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "steer", tokenizer=STEERING)


def test_controls_open_the_prompt_and_guidance_one_changes_nothing(model):
    header = STEERING.header({"composer": "Chopin", "density": "high"})
    kw = dict(tokenizer=STEERING, max_new_tokens=20, seed=3, primer_tokens=30, stop_at_eos=False)
    (a,) = musicgpt.generate(model, PRIMER, controls=["composer=Chopin", "density=high"], **kw)
    (b,) = musicgpt.generate(model, PRIMER, controls={"composer": "chopin", "density": "high"}, guidance=1.0, **kw)
    (plain,) = musicgpt.generate(model, PRIMER, follow_primer=False, **kw)  # no controls, not even the primer's
    assert a.ids[: len(header)].tolist() == header.tolist() and a.ids[len(header)] == STEERING.bos_id
    assert a.ids.tolist() == b.ids.tolist()
    assert plain.ids[0] == STEERING.bos_id and len(plain.ids) == len(a.ids) - len(header)
    with torch.no_grad():  # the model reads the header: its next-token distribution moves
        after = model(torch.from_numpy(a.ids[: a.primer_length])[None]).logits[0, -1]
        without = model(torch.from_numpy(plain.ids[: plain.primer_length])[None]).logits[0, -1]
    assert not torch.allclose(after, without)
    assert len(a.notes) == len(STEERING.decode(a.ids))  # CONTROL tokens decode to nothing


def test_guidance_mixes_the_two_passes_as_full_forward_passes_say(model):
    header = STEERING.header({"composer": "Bach"})
    music = np.r_[STEERING.bos_id, STEERING.encode(PRIMER).ids[:40]]
    settings = GenerationSettings(max_new_tokens=5, seconds=None, sampling=SamplingConfig(), seed=1, num_samples=2,
                                  arcs=None, stop_at_eos=False, return_logits=False, chunk=16, max_note_seconds=0.0,
                                  guidance=2.5)
    g = Generation(model, STEERING, np.r_[header, music], settings, uncond_prompt=music)
    for _ in range(5):
        seqs = [np.asarray(s) for s in g.seqs]
        with torch.no_grad():
            cond = torch.log_softmax(model(torch.from_numpy(np.stack(seqs))).logits[:, -1], -1)
            uncond = torch.log_softmax(
                model(torch.from_numpy(np.stack([s[len(header):] for s in seqs]))).logits[:, -1], -1)
        torch.testing.assert_close(g.guidance.mix(g.logits), uncond + 2.5 * (cond - uncond), atol=2e-4, rtol=0)
        g.step()


def test_bad_controls_and_guidance_are_refused(model):
    with pytest.raises(ConfigError, match="trained without control tokens"):
        musicgpt.generate(tiny_model(), None, tokenizer=PLAIN, controls={"composer": "Bach"}, max_new_tokens=2)
    with pytest.raises(ConfigError, match="guidance: steers towards controls"):
        musicgpt.generate(model, None, tokenizer=STEERING, guidance=2.0, max_new_tokens=2)
    with pytest.raises(ConfigError, match="guidance: must be a positive number"):
        musicgpt.generate(model, None, tokenizer=STEERING, controls={"density": "low"}, guidance=0, max_new_tokens=2)
    with pytest.raises(ConfigError, match="density='fast': unknown value"):
        musicgpt.generate(model, None, tokenizer=STEERING, controls={"density": "fast"}, max_new_tokens=2)
    with pytest.raises(ConfigError, match="not trained for infilling"):
        musicgpt.infill(tiny_model(), PRIMER, 1.0, 2.0, tokenizer=PLAIN)
    with pytest.raises(ConfigError, match="0 <= START < END"):
        musicgpt.infill(model, PRIMER, 5.0, 5.0, tokenizer=STEERING)


def test_cli_lists_controls_generates_with_them_and_infills(checkpoint, tmp_path, capsys):
    assert main(["generate", str(checkpoint), "--list-controls"]) == 0
    out = capsys.readouterr().out
    assert "composer: Bach, Chopin, unknown" in out and "density: low, medium, high" in out and "infill: yes" in out
    assert main(["generate", str(checkpoint), "--primer", str(PRIMER), "--primer-tokens", "40", "--max-new-tokens",
                 "12", "--control", "composer=Chopin", "--guidance", "2", "--seed", "1", "--quiet", "--out",
                 str(tmp_path / "g")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", str(checkpoint), "--primer", str(PRIMER), "--infill", "2", "4", "--seed", "1", "--arcs",
                 "--quiet", "--out", str(tmp_path / "i")]) == 0
    assert "new notes in 2-4 s" in capsys.readouterr().out
    assert json.loads((tmp_path / "i" / "sample_00.arcs.json").read_text())["infill"] == [2.0, 4.0]
    html = (tmp_path / "i" / "sample_00.html").read_text()
    assert "suffix" in html
    assert main(["generate", str(checkpoint), "--infill", "2", "4", "--quiet"]) == 1
    assert "needs --primer FILE" in capsys.readouterr().err
    plain = tiny_model().save_pretrained(tmp_path / "plain", tokenizer=PLAIN)
    assert main(["generate", str(plain), "--control", "composer=Bach", "--max-new-tokens", "2", "--quiet",
                 "--out", str(tmp_path / "p")]) == 1
    assert "trained without control tokens" in capsys.readouterr().err


def test_controls_stay_in_the_window_of_a_generation_longer_than_the_context(model):
    """Past n_ctx the CONTROL header stays first in the window (as in every training crop), arcs included."""
    from musicgpt.generation.setup import pinned_header
    from test_kv_cache import pinned_reference

    header = STEERING.header({"composer": "Chopin", "density": "high"})
    music = np.r_[STEERING.bos_id, STEERING.encode(PRIMER).ids[:40]]
    assert pinned_header(STEERING, np.r_[header, music]) == 2 and pinned_header(STEERING, music) == 0
    assert pinned_header(PLAIN, music) == 0 and pinned_header(STEERING, header) == 2
    infill_prompt = np.r_[header, STEERING.suffix_id, music[1:5], STEERING.prefix_id, music]
    assert pinned_header(STEERING, infill_prompt) == 0  # its suffix block would not be kept: neither is its header
    settings = GenerationSettings(max_new_tokens=300, seconds=None, sampling=SamplingConfig(), seed=2, num_samples=1,
                                  arcs=ArcsConfig(), stop_at_eos=False, return_logits=False, chunk=16,
                                  max_note_seconds=0.0, guidance=1.0)
    g = Generation(model, STEERING, np.r_[header, music], settings)
    assert g.cache.pinned == 2
    while not g.done:
        g.step()
    seq = torch.tensor([g.seqs[0][: g.cache.length]])  # the last token is fed only when its arcs are wanted
    assert seq.shape[1] > 2 * model.config.n_ctx
    with torch.no_grad():
        expected = pinned_reference(model, seq, model.config.n_ctx, 2)[0, -1]
    assert (g.logits[0] - expected).abs().max() <= 1e-4  # the next token's distribution: header still read
    (sample,) = g.samples()
    validate_arcs(sample.arcs)
