"""`describe_controls` (tokens/controls.py): what `musicgpt generate --list-controls` prints, from a tokenizer."""

from pathlib import Path

import musicgpt
from musicgpt.tokens import PerformanceTokenizer, load_tokenizer
from musicgpt.tokens.controls import controls_vocabulary, describe_controls

BUNDLED = Path(musicgpt.__file__).parent / "pretrained" / "tokenizer.json"


def test_the_bundled_tokenizer_lists_its_controls_in_order_and_infills():
    lines = describe_controls(load_tokenizer(BUNDLED)).splitlines()
    assert lines[0].startswith("composer: Bach, ") and lines[0].endswith(", Scriabin, unknown")
    assert lines[1:] == ["density: low, medium, high", "dynamics: soft, medium, loud",
                         "infill: yes (--infill START END)"]


def test_a_plain_tokenizer_says_how_to_add_controls_and_infilling():
    assert describe_controls(PerformanceTokenizer()).splitlines() == [
        "no controls (a plain model: train with data.controls to add them)",
        "infill: no (train with data.infill_rate > 0)",
    ]


def test_controls_without_infilling():
    tokenizer = PerformanceTokenizer(controls=controls_vocabulary(["dynamics", "composer"], ["Chopin", "Bach"]))
    assert describe_controls(tokenizer).splitlines() == [
        "dynamics: soft, medium, loud", "composer: Bach, Chopin, unknown", "infill: no (train with data.infill_rate > 0)"]
