"""The benchmark runner and report: rendering from synthetic results, option parsing, `musicgpt bench`; and
the benchmarks' own checks at a tiny size (the steering benchmark's, the attend-memory benchmark's).

No full benchmark is run here: the report is rendered from small hand-written result files, the
runner is exercised through --dry-run, --report-only and a stubbed subprocess, and the benchmarks
that do run read tiny random models or a 6-second piece.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import report, suite  # noqa: E402
from musicgpt.commands import bench as bench_command  # noqa: E402
from musicgpt.errors import MusicGPTError  # noqa: E402

MACHINE = {"cpu_model": "Test CPU", "cores": 2, "torch": "2.13.0+cpu", "python": "3.11.7",
           "date": "2026-01-01T00:00:00+0000", "load_average": [1.0, 2.0, 3.0]}


def lengthgen_result(size: str) -> dict:
    """A length-generalization result: relative improves a little, clamped absolute degrades."""
    def ok(nll):
        return {"status": "ok", "nll": nll}
    refused = {"status": "not evaluable", "reason": "absolute positions end at 512"}
    curve = [2.0] * 8 + [2.4] * 24
    return {
        "benchmark": "length_generalization", "size": size, "machine_start": MACHINE, "contexts": [512, 1024, 2048],
        "configs": {"relative": "configs/lengthgen-rel.toml", "absolute": "configs/lengthgen-abs.toml"},
        "same_budget": {"steps": 10, "batch_size": 4, "context": 512, "seed": 1},
        "evaluation": {"data": "synthetic", "split": "test", "docs": 3, "tokens": 9000, "note": "synthetic"},
        "models": {"relative": {"parameters": 100, "steps": 10, "train_seconds": 120.0,
                                "nll": {"512": ok(2.0), "1024": ok(1.95), "2048": ok(1.9)}},
                   "absolute": {"parameters": 90, "nll": {"512": ok(2.5), "1024": refused, "2048": refused}},
                   "absolute_clamped": {"how": "last row repeated", "nll": {"1024": ok(3.0), "2048": ok(3.5)}}},
        "nll_by_position": {"relative": {"docs": 3, "window": 2048, "bin": 64, "curve": [2.0] * 32,
                                         "buckets": {"0-511": 2.0, "512-1023": 2.0, "1024-2047": 2.0}},
                            "absolute_clamped": {"docs": 3, "window": 2048, "bin": 64, "curve": curve,
                                                 "buckets": {"0-511": 2.0, "512-1023": 2.4, "1024-2047": 2.4}}},
        "verdict": {"summary": "synthetic verdict"},
    }


def write_results(directory: Path, skip: tuple[str, ...] = ()) -> None:
    """Small synthetic result files for every section except those in `skip`."""
    feature = {"pitch_range": {"overlap": 0.8, "kl": 0.1}, "velocity_histogram": {"overlap": 0.9, "kl": 0.05}}
    across = {"pitch_range": {"overlap": 0.4, "kl": 1.0}, "velocity_histogram": {"overlap": 0.9, "kl": 0.05}}
    files = {
        "tokenize.json": {"machine": {"cpus": 2}, "files": 3, "notes": 1000, "file_selection": "synthetic",
                          "rounds": [{"ours": {"notes_per_s": 1000.0}, "miditok_midilike": {"notes_per_s": 100.0}},
                                     {"ours": {"notes_per_s": 1200.0}, "miditok_midilike": {"notes_per_s": 100.0}},
                                     {"ours": {"notes_per_s": 800.0}, "miditok_midilike": {"notes_per_s": 100.0}}]},
        "roundtrip.json": {"corpora": [{"corpus": "/x/asap", "files": 2, "notes_read": 10, "notes_kept_pct": 100.0,
                                        "exact_decode_files": 2, "exact_midi_file_round_trip_files": 2,
                                        "onset_error_ms": {"max": 5.0, "mean": 2.5}, "seconds": 1.0}]},
        "attention.json": {"machine_start": {"cpus": 2, "torch": "2.13.0+cpu"},
                           "train_step": {"length": 64, "seconds": {"absolute": {"median_s": 2.0, "min_s": 1.9},
                                                                    "relative": {"median_s": 3.0, "min_s": 2.9}}},
                           "peak_memory": {"length": 64, "absolute": {"peak_mb": 100.0},
                                           "relative": {"peak_mb": 125.0}}},
        "train.json": {"config": "configs/tiny.toml", "date": "2026-01-01 00:00:00",
                       "variants": {"fp32-eager": {"tokens_per_s_best": 1000.0, "memory": {"peak_rss_mb": 200.0}},
                                    "bf16-eager": {"tokens_per_s_best": 1500.0, "memory": {"peak_rss_mb": 150.0}}}},
        "generate.json": {"threads": 1, "tokens_per_s_by_length": {"128": {"tokens_per_s": 400.0, "ms_per_token": 2.5},
                                                                   "256": {"tokens_per_s": 200.0, "ms_per_token": 5.0}},
                          "vs_hf_transformers": {"tokens": 100, "ours_tokens_per_s": 300.0, "hf_tokens_per_s": 100.0},
                          "arcs_overhead": {"tokens": 100, "off_s": 1.0, "on_s": 1.25}},
        "metrics.json": {"machine_start": MACHINE, "files": "synthetic", "files_per_set": {"asap_a": 2},
                         "speed": {"files": 4, "notes": 100, "rounds": 2, "read_s": [1.0, 1.0],
                                   "read_and_features_s": [4.0, 6.0], "compare_sets_s": 0.1},
                         "reference": {"asap_a_vs_asap_b": {"features": feature, "mean_overlap": 0.85,
                                                            "mean_kl": 0.075},
                                       "pop909_a_vs_asap_b": {"features": across, "mean_overlap": 0.65,
                                                              "mean_kl": 0.525}}},
        "attend_memory.json": {"machine": MACHINE, "piece": {"source": "tests/fixtures/x.mid", "minutes": 60.0,
                                                             "notes": 78000, "tokens": 294000},
                               "attend": {"exit_code": 0, "wall_s": 250.0, "cpu_s": 400.0, "peak_rss_mb": 1700,
                                          "arcs": 17900000, "rss_mb_timeline": [[0.0, 50], [1.0, 900], [2.0, 1700]]},
                               "outputs": {"arcs_json_bytes": 1161510864, "html_bytes": 19652191},
                               "before_streaming": {"commit": "abc1234", "runs": [
                                   {"minutes": 10, "notes": 13089, "peak_rss_mb": 6725, "wall_s": 94.1},
                                   {"minutes": 60, "peak_rss_mb": 12297, "outcome": "killed at the cap"}]}},
        "lengthgen.json": lengthgen_result("quick"),
        "lengthgen-full.json": lengthgen_result("full"),
        "studio_latency.json": {"machine": {"cpus": 2}, "model": "bundled", "primer": "examples/x.mid", "primer_seconds": 20,
                                "seconds": 30, "rounds": [{}, {}, {}], "targets": {"first_note_s": 0.5, "overhead": 0.1},
                                "first_note_s": {"median": 0.2, "min": 0.19, "max": 0.7},
                                "tokens_per_s_ratio": {"median": 0.95, "min": 0.9, "max": 1.02}},
        "gpu.json": {"device": "Test GPU", "torch": "2.11.0+cu130", "date": "2026-01-01T00:00:00",
                     "shape": {"n_layer": 1}, "precision": "bf16",
                     "train": [{"length": 64, "batch": 2, "errors": {},
                                "median_seconds": {"absolute": 0.01, "relative": 0.03},
                                "tokens_per_s": {"absolute": 12800, "relative": 4267},
                                "ratio_to_absolute": {"absolute": 1.0, "relative": 3.0},
                                "peak_bytes": {"absolute": 2**30, "relative": 2**31},
                                "peak_ratio_to_absolute": {"absolute": 1.0, "relative": 2.0}}],
                     "generation": {"tokens": 10, "model": "tiny",
                                    "batches": {"1": {"ours_tokens_per_s": 300, "hf_tokens_per_s": 100,
                                                      "speedup_vs_hf": 3.0}}}},
    }
    figures = {"takeover": {"n": 4, "median_ms": 31.0, "p95_ms": 48.0, "max_ms": 50.0},
               "cache": {"n": 90, "median_ms": 4.0, "p95_ms": 9.0, "max_ms": 12.0},
               "cache_flood": {"n": 30, "median_ms": 6.0, "p95_ms": 15.0, "max_ms": 18.0},
               "barge_in": {"n": 3, "median_ms": 2.0, "p95_ms": 3.0, "max_ms": 3.0},
               "jitter": {"n": 80, "median_ms": 0.0, "p95_ms": 1.5, "max_ms": 7.0}, "dropped": 0, "not_echoed": 0,
               "human_note_ons": 90, "model_messages": 80, "errors": [],
               "meets": {"takeover_median_ms": True, "takeover_p95_ms": True, "cache_p95_ms": True,
                         "barge_in_ms": True, "jitter_p95_ms": True, "dropped": True}}
    files["duet_latency.json"] = {"machine_start": MACHINE, "model": "bundled", "data": "asap", "split": "test",
                                  "phrases": 4, "phrase_s": 4.0, "wait": 1.0, "answer": 4.0, "flood_rate": 20.0,
                                  "targets": {"takeover_median_ms": 50, "takeover_p95_ms": 100, "cache_p95_ms": 20,
                                              "barge_in_ms": 30, "jitter_p95_ms": 5, "dropped": 0},
                                  "paths": {"engine": figures, "websocket": figures}}
    for name in ("decode_speed.json", "decode_speed_all_cores.json", "studio_soak.json", "continuation.json",
                 "faithfulness.json"):  # real runs' files
        files[name] = json.loads((ROOT / "bench" / "results" / name).read_text(encoding="utf-8"))
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name not in skip:
            (directory / name).write_text(json.dumps(content), encoding="utf-8")


def section(text: str, title: str) -> str:
    """The markdown of one '## title' section."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end > 0 else len(text)]


# ---- the report -------------------------------------------------------------------------------------


def test_report_renders_tables_ratios_and_plots(tmp_path):
    results, out = tmp_path / "results", tmp_path / "docs" / "benchmarks.md"
    write_results(results)
    report.render(results, out)
    text = out.read_text(encoding="utf-8")
    assert "except the GPU section" in text and "ratios" in text.lower()
    gpu = section(text, "GPU: relative attention and generation")
    assert "| 64 | 2 | relative | 30 | 4,267 | 3.00x | 2 | 2.00x |" in gpu and "| 1 | 300 | 100 | 3.00x |" in gpu
    assert "**not measured**" not in text.lower() and "could not render" not in text.lower()
    # tokenize: per-round ratios 10, 12, 8 -> median 10
    assert "**ours vs miditok MIDILike: 10.0x**" in section(text, "Tokenizer speed")
    assert "| Tokenizer speed | `tokenize.json` | measured | 10.0x miditok MIDILike |" in text
    # attention: 3.0 / 2.0 s and 125 / 100 MB
    attention = section(text, "Relative attention speed and memory")
    assert "| relative | 3 | 2.9 | 1.50x |" in attention and "| relative | 125 | 1.25x |" in attention
    # train: 1500 / 1000 tokens/s, 150 / 200 MB
    assert "| bf16-eager | 1,500 | - | 1.50x | 150 | 0.75x |" in section(text, "Training throughput")
    generate = section(text, "Generation speed")
    assert "| 256 | 200 | 5 | 2.00x |" in generate and "3.00x" in generate and "1.25x" in generate
    # metrics: features cost (4/1, 6/1 -> median 5); cross/within overlap 0.4/0.8
    metrics = section(text, "Music metrics")
    assert "5.00x" in metrics and "| pitch_range | 0.8 | 0.4 | 0.50x | 0.1 | 1 | 10.00x |" in metrics
    assert "lower than the within-corpus one on 1 of 2 features" in metrics
    attend = section(text, "Attention arcs of a long piece: memory")
    assert "| now | 60 | 78,000 | 17,900,000 | 250 | 400 | 1,700 | 1,108 | 18.7 |" in attend
    assert "| before (abc1234) | 10 | 13,089 | - | 94.1 | - | 6,725 | - | - |" in attend
    assert "- before, 60 minutes: killed at the cap" in attend
    assert "| `attend_memory.json` | measured | peak RSS 1,700 MB on 60 min (78,000 notes) |" in text
    full = section(text, "Length generalization (full run)")
    assert "| relative | 2.0000 (1.000x) | 1.9500 (0.975x) | 1.9000 (0.950x) |" in full
    assert "not evaluable" in full and "3.5000 (1.400x)" in full  # clamped 3.5 against absolute's 2.5 at 512
    assert "| absolute, positions clamped past its table | 3 | 2 | 2.4 | 2.4 | 1.20x |" in full
    assert "| relative | 100 | 10 | - | 2 | - |" in full  # the training table: 120 s = 2 minutes
    for png in ("lengthgen-full.png", "lengthgen-full-position.png", "lengthgen.png", "train-tokens-per-s.png",
                "generate-tokens-per-s.png", "metrics-overlap.png", "attend-memory-rss.png"):
        assert (out.parent / "img" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"(img/{png})" in text
    assert "Measured on: CPU Test CPU, 2 cores" in text
    studio = section(text, "Studio: first streamed note and streaming overhead")
    assert "| POST -> first new note (s) | 0.2 | 0.19 - 0.7 | <= 0.5 |" in studio and "3 interleaved rounds" in studio
    duet = section(text, "Duet: takeover, barge-in and timing in real time")
    assert "| engine | silence of `wait` -> the model's first note sounds | 4 | 31 | 48 | 50 | median <= 50, p95 <= 100 |" \
        in duet
    assert "| Duet: takeover, barge-in and timing in real time | `duet_latency.json` | measured | engine: takeover 31 ms, " \
           "6/6 targets; websocket: takeover 31 ms, 6/6 targets |" in text
    assert "| CPU decode speed against its bandwidth bound | `decode_speed.json` | measured | no precision pays" in text
    assert "| uploaded primers left behind | 0 | 0 |" in section(text, "Studio: a long session (soak)")
    assert "**What the figures say**" in section(text, "Which past notes shaped a note: faithfulness of the arc measures")


def test_missing_and_malformed_results_are_reported_not_fatal(tmp_path):
    results, out = tmp_path / "results", tmp_path / "benchmarks.md"
    write_results(results, skip=("generate.json", "lengthgen-full.json"))
    (results / "train.json").write_text(json.dumps({"variants": "not a dict"}), encoding="utf-8")
    (results / "metrics.json").write_text("{ not json", encoding="utf-8")
    report.render(results, out, plots=False)
    text = out.read_text(encoding="utf-8")
    assert "| Generation speed | `generate.json` | **not measured** (missing) | - |" in text
    assert "| Length generalization (full run) | `lengthgen-full.json` | **not measured** (missing) | - |" in text
    assert "Run `python -m bench.generate`" in section(text, "Generation speed")
    assert "Could not render `train.json`" in section(text, "Training throughput")
    assert "**not measured** (unreadable" in text  # metrics.json is not JSON
    assert "| Tokenizer speed | `tokenize.json` | measured | 10.0x miditok MIDILike |" in text


def test_report_of_an_empty_results_folder(tmp_path):
    out = report.render(tmp_path / "nothing", tmp_path / "benchmarks.md", plots=False)
    text = out.read_text(encoding="utf-8")
    assert text.count("**not measured** (missing)") == len(report.SECTIONS)
    assert "No suite run is recorded" in text


def test_report_states_the_suite_run(tmp_path):
    results = tmp_path / "results"
    write_results(results)
    suite._record(results, "quick", {"metrics": {"size": "quick", "command": "python -m bench.metrics",
                                                 "seconds": 90.0, "cpu_seconds": 120.0, "exit_code": 0}},
                  "2026-01-01T00:00:00", MACHINE, "python -m bench --quick")
    text = report.render(results, tmp_path / "b.md", plots=False).read_text(encoding="utf-8")
    assert "on Test CPU, 2 cores, torch 2.13.0+cpu" in text and "1.00/2.00/3.00 at the start" in text
    assert "| metrics | quick | 90 | 120 | ok | `python -m bench.metrics` |" in text
    assert "Total: 90 s wall (1.5 min), 120 CPU seconds (2.0 CPU minutes)" in text
    assert "not to the folder this report was rendered from" not in text
    other = report.render(tmp_path / "elsewhere", tmp_path / "c.md", plots=False).read_text(encoding="utf-8")
    assert "No suite run is recorded" in other


# ---- the runner -------------------------------------------------------------------------------------


def test_option_parsing():
    parser = suite.build_parser()
    args = parser.parse_args(["--quick", "--only", "metrics,tokenize"])
    assert args.size == "quick" and suite.parse_only(args.only) == ["tokenize", "metrics"]
    assert parser.parse_args([]).size == "default" and parser.parse_args(["--full"]).size == "full"
    assert suite.parse_only(None) == list(suite.BENCHMARKS)
    assert list(suite.BENCHMARKS) == ["tokenize", "roundtrip", "attention", "train", "generate", "metrics",
                                      "continuation", "attend_memory", "lengthgen", "studio", "soak", "duet",
                                      "decode_speed"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--quick", "--full"])
    for bad in ("attention,nope", ",", ""):
        with pytest.raises(MusicGPTError, match="known: tokenize"):
            suite.parse_only(bad)


def test_dry_run_lists_commands_per_size(tmp_path, capsys):
    parser = suite.build_parser()
    assert suite.run_suite(parser.parse_args(["--dry-run", "--results", str(tmp_path)])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(suite.BENCHMARKS)
    assert all(f"--out {tmp_path}" in line for line in lines)
    assert "-m bench.tokenizer_speed --every" in lines[0]
    suite.run_suite(parser.parse_args(["--dry-run", "--full", "--only", "lengthgen", "--results", str(tmp_path)]))
    assert capsys.readouterr().out.strip().endswith(f"--size full --reuse --out {tmp_path / 'lengthgen-full.json'}")
    no_corpus = suite.Context(ROOT, shared=False, asap_prepared=False)
    assert suite.BENCHMARKS["roundtrip"].args("quick", no_corpus)[0] == "tests/fixtures"
    assert suite.BENCHMARKS["train"].args("default", no_corpus)[:2] == ["--data", "tests/fixtures"]


def test_report_only_measures_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--report-only must not run a benchmark")

    monkeypatch.setattr(subprocess, "run", refuse)
    write_results(tmp_path / "results", skip=tuple(f for f, *_ in report.SECTIONS.values() if f != "tokenize.json"))
    args = suite.build_parser().parse_args(["--report-only", "--results", str(tmp_path / "results"),
                                            "--report", str(tmp_path / "r.md")])
    assert suite.run_suite(args) == 0
    assert "## Summary" in (tmp_path / "r.md").read_text(encoding="utf-8")


def test_runner_records_each_benchmark_and_failures(tmp_path, monkeypatch):
    ran, real_run = [], subprocess.run

    def fake_run(cmd, *args, **kwargs):  # the benchmarks' runs; anything else (torch's own probes) runs for real
        if not (isinstance(cmd, list) and cmd[1:2] == ["-m"] and str(cmd[2]).startswith("bench.")):
            return real_run(cmd, *args, **kwargs)
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 3 if cmd[2] == "bench.metrics" else 0)

    monkeypatch.setattr(suite.subprocess, "run", fake_run)
    args = suite.build_parser().parse_args(["--only", "tokenize,metrics", "--results", str(tmp_path / "res"),
                                            "--report", str(tmp_path / "r.md")])
    assert suite.run_suite(args) == 1  # metrics "failed"
    assert [c[1:3] for c in ran] == [["-m", "bench.tokenizer_speed"], ["-m", "bench.metrics"]]
    suite_json = json.loads((tmp_path / "res" / "suite.json").read_text())
    recorded = suite_json["benchmarks"]
    assert recorded["tokenize"]["exit_code"] == 0 and recorded["metrics"]["exit_code"] == 3
    assert recorded["tokenize"]["cpu_seconds"] >= 0 and suite_json["results_dir"] == str((tmp_path / "res").resolve())
    assert "failed (3)" in (tmp_path / "r.md").read_text(encoding="utf-8")
    assert recorded["metrics"]["command"].startswith("python -m bench.metrics --files")


def test_benchmarks_and_tools_run_as_modules_without_path_edits():
    """`python -m bench.NAME` and `python -m tools.NAME` from the repository root: no file edits sys.path."""
    for b in suite.BENCHMARKS.values():
        assert (ROOT / f"{b.module.replace('.', '/')}.py").is_file(), b.module
    sources = sorted((ROOT / "bench").glob("*.py")) + sorted((ROOT / "tools").glob("*.py"))
    assert [p.name for p in sources if "sys.path" in p.read_text(encoding="utf-8")] == []
    for module, option in (("bench.metrics", "--rounds"), ("tools.install_pretrained", "--max-bytes")):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0 and option in done.stdout, (module, done.stderr[-2000:])


def test_musicgpt_bench_help_and_missing_checkout(monkeypatch, capsys):
    out = subprocess.run([sys.executable, "-m", "musicgpt", "bench", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "--report-only" in out.stdout and "--only" in out.stdout
    from musicgpt.cli import main

    monkeypatch.setattr(bench_command, "checkout_root", lambda: None)
    assert main(["bench", "--report-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "source checkout" in err


# ---- the length-generalization helpers --------------------------------------------------------------


def test_lengthgen_configs_differ_in_position_only_and_clamped_copy_is_exact(tmp_path):
    import torch

    from bench import length_generalization as lg
    from musicgpt.model import GPTConfig, MusicGPT, load_model, save_model
    from musicgpt.tokens.performance import PerformanceTokenizer

    configs = lg.load_pair(lg.QUICK)
    assert configs["relative"].model.position == "relative" and configs["absolute"].model.position == "absolute"
    assert configs["relative"].model.n_ctx == lg.CONTEXTS[0]

    torch.manual_seed(0)
    model = MusicGPT(GPTConfig.preset("tiny", position="absolute", n_ctx=16, dropout=0.0)).eval()
    save_model(model, tmp_path / "abs", PerformanceTokenizer())
    path, diff = lg.clamped_copy(tmp_path / "abs", tmp_path / "clamped", 64)
    longer = load_model(path)
    assert diff == 0.0 and longer.config.n_ctx == 64
    table = longer.pos_emb.weight
    assert torch.equal(table[:16], model.pos_emb.weight) and torch.equal(table[16:], table[15:16].expand(48, -1))
    with torch.no_grad():
        assert longer(torch.randint(3, 300, (1, 40))).logits.shape == (1, 40, model.config.vocab_size)


def test_lengthgen_verdict_and_sample(tmp_path):
    from bench import length_generalization as lg

    models = lengthgen_result("full")["models"]
    v = lg.verdict(models, lg.CONTEXTS)
    assert v["ratios_to_training_context"]["relative"]["2048"] == 0.95
    assert v["ratios_to_training_context"]["absolute_clamped"]["2048"] == 1.4
    assert v["claim_reproduced"] and "claim reproduced" in v["summary"]
    models["relative"]["nll"]["2048"]["nll"] = 2.2  # relative degrades 10%: the claim fails
    v = lg.verdict(models, lg.CONTEXTS)
    assert not v["claim_reproduced"] and v["relative_degrades_less"] and "in part" in v["summary"]
    models["relative"]["nll"]["2048"]["nll"] = 4.0  # worse than clamped absolute: not even in part
    v = lg.verdict(models, lg.CONTEXTS)
    assert not v["relative_degrades_less"] and "NOT reproduced" in v["summary"]

    src = tmp_path / "prepared"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    np.arange(10, dtype="<u2").tofile(src / "test.tokens.bin")
    np.save(src / "test.offsets.npy", np.array([0, 6, 10], dtype=np.int64))
    out, info = lg.write_sample(src, tmp_path / "sample", ["test"], max_docs=5, max_tokens=4)
    from musicgpt.corpus.shards import load_split

    tokens, offsets = load_split(out, "test")
    assert info == {"docs": 2, "tokens": 8} and list(offsets) == [0, 4, 8]
    assert list(tokens) == [0, 1, 2, 3, 6, 7, 8, 9]


# ---- the steering benchmark's checks, on the tiny steerable model -----------------------------------

@pytest.fixture(scope="module")
def steerable():
    """(model, tokenizer): the tiny model grown to a vocabulary with controls and infilling tokens."""
    from tiny_models import steering_model

    return steering_model()


def test_the_steering_benchmark_accepts_a_true_infill_and_catches_a_moved_kept_note(steerable, tmp_path):
    import musicgpt
    from bench import steering as bench
    from musicgpt.music.scores import read_notes
    from tiny_models import PRIMER

    model, tok = steerable
    original = read_notes(PRIMER)
    (s,) = musicgpt.infill(model, PRIMER, 3.0, 6.5, tokenizer=tok, seed=4)
    path = s.save(tmp_path, "x")[0]
    problems, error = bench._check_infill(path, original, 3.0, 6.5)
    assert problems == [] and error <= 0.25e-3 + 1e-9  # ticks are 0.5 ms: writing rounds by at most half of one
    moved = original.start.copy()
    moved[np.flatnonzero(original.start >= 6.5)[0]] += 0.005
    shifted = type(original)(moved, original.end + (moved - original.start), original.pitch, original.velocity)
    problems, error = bench._check_infill(path, shifted, 3.0, 6.5)
    assert problems == ["a kept note moved by 5.00 ms"], problems


def test_the_long_controls_benchmark_compares_a_pinned_header_with_one_that_slides_out(steerable):
    from bench import steering as bench
    from musicgpt.generation import loop
    from tiny_models import PRIMER

    model, tok = steerable
    original = loop.pinned_header
    out = bench.long_controls(model, tok, PRIMER, 1, 6.0)
    assert loop.pinned_header is original  # switched back after the unpinned runs
    assert [(r["pinned"], r["asked"]) for r in out["runs"]] == [(True, "low"), (True, "high"), (False, "low"),
                                                                  (False, "high")]
    assert all(r["notes_per_second_first_third"] >= 0 for r in out["runs"]) and "high_minus_low_last_third_pinned" in out


# ---- the attend-memory benchmark, at a tiny size ----------------------------------------------------

def test_attend_memory_benchmark_runs_at_a_tiny_size(tmp_path):
    out = tmp_path / "attend_memory.json"
    subprocess.run([sys.executable, "-m", "bench.attend_memory", "--minutes", "0.1", "--out", str(out)], cwd=ROOT,
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["piece"]["notes"] > 50 and result["attend"]["exit_code"] == 0
    assert result["attend"]["peak_rss_mb"] > 50 and result["attend"]["arcs"] > 0
    assert result["outputs"]["arcs_json_bytes"] > 0 and result["before_streaming"]["runs"]
    assert "caveat" in result and result["machine"]["cores"]
