"""bench/duet_latency.py at a tiny size, in real time: a scripted human plays two short phrases against a tiny model
through the engine's pump and through the studio's WebSocket; the figures are measured and the JSON is complete
(the targets are the benchmark's business, not this test's: a tiny model on a busy machine)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import duet_latency
from bench.report_live import section_duet

FIXTURES = Path(__file__).parent / "fixtures"


def test_the_duet_latency_benchmark_measures_both_paths(checkpoint, tmp_path):
    out = tmp_path / "duet.json"
    assert duet_latency.main(["--checkpoint", str(checkpoint), "--data", str(FIXTURES), "--phrases", "2",
                              "--phrase-seconds", "1.5", "--wait", "0.3", "--answer", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["phrases"] == 2 and set(result["paths"]) == {"engine", "websocket"}
    for path, f in result["paths"].items():
        assert f["human_note_ons"] >= 12 and f["not_echoed"] == 0 and f["dropped"] == 0, path
        assert f["takeover"]["n"] >= 1 and f["cache"]["n"] == f["human_note_ons"], path
        assert f["model_messages"] > 0 and f["jitter"]["n"] + f["note_off_late"]["n"] == f["model_messages"], path
        assert f["jitter"]["n"] >= 1, path  # the model's note-ons
        assert set(f["meets"]) == set(duet_latency.TARGETS), path
    lines, headline = section_duet(result, tmp_path)
    assert "engine: takeover" in headline and any("barge-in" in line for line in lines)


def test_a_phrase_sped_up_to_the_flood_rate_keeps_its_rhythm():
    phrase = [(0.0, [0x90, 60, 80]), (0.5, [0x80, 60, 0]), (1.0, [0x90, 62, 80]), (2.0, [0x90, 64, 80])]
    fast = duet_latency.flood(phrase)
    ons = [t for t, m in fast if m[0] == 0x90]
    assert abs(len(ons) / (ons[-1] - ons[0]) - duet_latency.FLOOD_RATE) < 1e-9
    assert [m for _, m in fast] == [m for _, m in phrase] and fast[1][0] == fast[2][0] / 2
