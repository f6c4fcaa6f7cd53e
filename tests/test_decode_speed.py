"""bench/decode_speed.py at a tiny size: its JSON, its NLL through the decode step, its verdict and report section."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import decode_speed
from tiny_models import tiny_checkpoint
from training_fixtures import prepare_fixtures

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decode_speed")
    ckpt, data, out = tiny_checkpoint(tmp / "tiny"), prepare_fixtures(tmp / "prepared"), tmp / "decode_speed.json"
    subprocess.run([sys.executable, "-m", "bench.decode_speed", "--checkpoint", str(ckpt), "--rounds", "2",
                    "--tokens", "4", "--contexts", "8,20", "--threads", "1", "--data", str(data), "--nll-docs", "1",
                    "--dram-mb", "4", "--out", str(out)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return json.loads(out.read_text())


def test_every_cell_is_measured_against_its_bound(result):
    assert list(result["summary"]) == ["1"] and list(result["summary"]["1"]) == ["8", "20"]
    for n, cells in result["summary"]["1"].items():
        assert list(cells) == ["float32", "bfloat16", "int8"] and cells["float32"]["step_vs_float32"] == 1.0
        for cell in cells.values():
            assert len(result["runs"]["1"][n]["int8"]["step"]) == 2  # one figure per round
            assert cell["step_tokens_per_s"]["median"] > 0 and cell["loop_tokens_per_s"]["median"] > 0
            assert cell["step_over_read_bound"] > 0 and cell["step_over_dram_bound"] > 0
    fp32 = result["summary"]["1"]["8"]["float32"]["bytes_per_token"]
    assert result["summary"]["1"]["8"]["bfloat16"]["bytes_per_token"] * 2 == fp32
    assert result["summary"]["1"]["20"]["float32"]["bytes_per_token"] > fp32  # the cache grows with the context
    assert [r["mb"] for r in result["bandwidth"]["sweep"]["1"]] == [1, 2, 4]
    assert set(result["matmuls"]["median_s"]) == {"float32", "bfloat16", "bfloat16_upcast", "int8"}
    assert "L3" in result["cpu"]["caches"] or not Path("/sys/devices/system/cpu/cpu0/cache").exists()


def test_nll_through_the_decode_step_equals_the_forward_pass_in_float32(result):
    nll = result["nll"]
    assert nll["windows"]["docs"] == [0] and nll["windows"]["scored_tokens"] == 128  # one window: [BOS] + 128 tokens
    assert abs(nll["decode"]["float32"] - nll["forward_float32"]) < 1e-4
    for p in ("bfloat16", "int8"):
        assert 0 < abs(nll["decode"][p] - nll["decode"]["float32"]) < 0.05
        assert result["verdict"][p]["nll_delta"] == pytest.approx(nll["decode"][p] - nll["decode"]["float32"])


def test_verdict_needs_both_the_speed_and_the_nll():
    def summary(int8_speedups):
        return {"1": {str(n): {"float32": {"loop_vs_float32": 1.0}, "bfloat16": {"loop_vs_float32": 0.7},
                               "int8": {"loop_vs_float32": s}} for n, s in zip((64, 512), int8_speedups)}}

    nll = {"decode": {"float32": 2.0, "bfloat16": 2.001, "int8": 2.005}}
    v = decode_speed.verdict(summary([1.6, 1.55]), nll)
    assert v["int8"]["pays"] and v["int8"]["min_loop_speedup_1_thread"] == 1.55 and not v["bfloat16"]["pays"]
    assert v["bfloat16"]["why"] == "loop speedup 0.70x < 1.5x"
    assert not decode_speed.verdict(summary([1.6, 1.4]), nll)["int8"]["pays"]  # slow at one context
    worse = {"decode": {**nll["decode"], "int8": 2.02}}
    assert decode_speed.verdict(summary([1.6, 1.55]), worse)["int8"]["why"] == "NLL +0.0200 outside 0.01"
    assert decode_speed.verdict(summary([1.6, 1.55]), None)["int8"]["why"] == "NLL not measured"


def test_the_report_section_renders_the_file(result, tmp_path):
    lines, headline = decode_speed.section_decode_speed(result, tmp_path)
    text = "\n".join(lines)
    assert "| context | precision | MB/token | step tok/s |" in text and "| 20 | int8 |" in text
    assert "Test NLL through the decode step, 128 tokens" in text and "- int8: " in text
    assert headline.endswith("of float32)") or headline.endswith("pays")
