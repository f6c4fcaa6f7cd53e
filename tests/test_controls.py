"""Controls: the CONTROL tokens of a vocabulary (by name, unknown values, errors), the values computed from the
music, and the printed layout of a steerable tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from musicgpt.errors import ConfigError
from musicgpt.tokens.controls import computed_values, parse_controls
from musicgpt.tokens.performance import PerformanceTokenizer

from tiny_models import steering_tokenizer

PLAIN = PerformanceTokenizer()
TOK = steering_tokenizer(("composer", "density", "dynamics"))


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
