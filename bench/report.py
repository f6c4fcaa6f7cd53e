"""Render docs/benchmarks.md (and PNG plots under docs/img/) from bench/results/*.json.

Every section reads one results file (bench/report_speed.py and bench/report_music.py render them). A
missing file is reported as "not measured" and a file whose layout the renderer does not know is reported
as "could not render": neither stops the rest of the report. Figures are shown as ratios against their
baseline from the same run, computed from the raw numbers in the JSON, because absolute timings from a
shared machine do not compare across runs.

    python -m bench.report [--results bench/results] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from bench.format import shown, table
from bench.plots import drawing
from bench.report_arcs import section_faithfulness
from bench.report_continuation import section_continuation
from bench.report_live import section_decode_speed, section_duet, section_soak
from bench.report_music import section_lengthgen, section_metrics
from bench.report_speed import (section_attend_memory, section_attention, section_generate, section_gpu,
                                section_roundtrip, section_studio, section_tokenize, section_train)
from musicgpt._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REPORT = ROOT / "docs" / "benchmarks.md"

CAVEAT = ("**Read the ratios, not the seconds.** The machine's speed drifts 2-4x within minutes (other jobs "
          "share its 2 cores; while these figures were taken a multi-hour training run of the bundled model "
          "was using them), so every comparison interleaves its contenders round by round in one process and "
          "is reported as a ratio against its baseline from that same run. Absolute seconds and tokens/s are "
          "listed for completeness; they do not compare across runs or machines.")
GPU_NOTE = ("Every figure is a CPU figure except the GPU section (`bench/gpu.py`, run on a lent H100 and kept in "
            "bench/results/gpu.json; the CPU suite does not re-run it).")


def load_json(path: Path) -> dict | None:
    """The parsed file, or None when it does not exist."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def machine_line(d: dict) -> str:
    """What a results file records about its machine, in one line."""
    m = d.get("machine_start") or d.get("machine") or {}
    parts = []
    cpu = m.get("cpu_model") or d.get("cpu")
    cores = m.get("cores") or m.get("cpus") or d.get("cpu_threads")
    torch_v = m.get("torch") or d.get("torch")
    load = m.get("load_average")
    date = m.get("date") or d.get("date")
    if cpu:
        parts.append(f"CPU {cpu}")
    if cores:
        parts.append(f"{cores} cores" if m.get("cores") or m.get("cpus") else f"{cores} threads")
    if torch_v:
        parts.append(f"torch {torch_v}")
    if load:
        parts.append("load average " + "/".join(f"{x:.2f}" for x in load) + " at the start")
    parts.append(f"date {date}" if date else "date not recorded in the file")
    return "Measured on: " + ", ".join(parts) + "."


# name -> (results file, title, renderer, how to run it alone)
SECTIONS: dict[str, tuple[str, str, Callable[..., tuple[list[str], str]], str]] = {
    "tokenize": ("tokenize.json", "Tokenizer speed", section_tokenize, "python -m bench.tokenizer_speed"),
    "roundtrip": ("roundtrip.json", "Codec round trip", section_roundtrip, "python -m bench.roundtrip"),
    "attention": ("attention.json", "Relative attention speed and memory", section_attention,
                  "python -m bench.attention"),
    "train": ("train.json", "Training throughput", section_train, "python -m bench.train"),
    "generate": ("generate.json", "Generation speed", section_generate, "python -m bench.generate"),
    "metrics": ("metrics.json", "Music metrics", section_metrics, "python -m bench.metrics"),
    "continuation": ("continuation.json", "Continuations against the real next seconds", section_continuation,
                     "python -m bench.continuation"),
    "attend_memory": ("attend_memory.json", "Attention arcs of a long piece: memory", section_attend_memory,
                      "python -m bench.attend_memory"),
    "faithfulness": ("faithfulness.json", "Which past notes shaped a note: faithfulness of the arc measures",
                     section_faithfulness, "python -m bench.faithfulness"),
    "studio": ("studio_latency.json", "Studio: first streamed note and streaming overhead", section_studio,
               "python -m bench.studio_latency"),
    "soak": ("studio_soak.json", "Studio: a long session (soak)", section_soak, "python -m bench.studio_soak"),
    "duet": ("duet_latency.json", "Duet: takeover, barge-in and timing in real time", section_duet,
             "python -m bench.duet_latency"),
    "decode_speed": ("decode_speed.json", "CPU decode speed against its bandwidth bound", section_decode_speed,
                     "python -m bench.decode_speed --threads 1"),
    "decode_speed_all_cores": ("decode_speed_all_cores.json", "CPU decode speed on all cores", section_decode_speed,
                               "python -m bench.decode_speed --threads all --out bench/results/decode_speed_all_cores.json"),
    "gpu": ("gpu.json", "GPU: relative attention and generation", section_gpu, "python -m bench.gpu (needs CUDA)"),
    "lengthgen-full": ("lengthgen-full.json", "Length generalization (full run)",
                       lambda d, img: section_lengthgen(d, img, "lengthgen-full"),
                       "python -m bench.length_generalization --size full"),
    "lengthgen": ("lengthgen.json", "Length generalization (quick suite run)",
                  lambda d, img: section_lengthgen(d, img, "lengthgen"), "python -m bench.length_generalization"),
}


def suite_lines(suite: dict | None, results: Path) -> list[str]:
    """The header's machine and suite-timing part, from suite.json."""
    if not suite:
        return ["No suite run is recorded (bench/results/suite.json is missing): each section states what its "
                "own file records about the machine.", ""]
    m = suite.get("machine_start", {})
    lines = [f"Last suite run (`{suite.get('command', 'python -m bench')}`, size **{suite.get('size')}**): "
             f"{suite.get('started')} to {suite.get('finished')}, on {m.get('cpu_model')}, {m.get('cores')} cores, "
             f"torch {m.get('torch')}, Python {m.get('python')}; load average "
             + "/".join(f"{x:.2f}" for x in (m.get("load_average") or [])) + " at the start, "
             + "/".join(f"{x:.2f}" for x in (suite.get("machine_end", {}).get("load_average") or [])) + " at the end. "
             f"{suite.get('note', '')}", ""]
    written = suite.get("results_dir")
    if written and written != shown(results):
        lines += [f"That run wrote its JSON to `{written}`, not to the folder this report was rendered from "
                  f"(`{shown(results)}`): its timings are below, but the sections may show other runs of each "
                  "benchmark (each states its own machine, date and size).", ""]
    entries = suite.get("benchmarks", {})
    rows = [[name, r.get("size"), r.get("seconds"), r.get("cpu_seconds"),
             "ok" if r.get("exit_code") == 0 else f"failed ({r.get('exit_code')})", f"`{r.get('command')}`"]
            for name, r in entries.items()]
    if rows:
        total = sum(r.get("seconds") or 0 for r in entries.values())
        cpu = sum(r.get("cpu_seconds") or 0 for r in entries.values())
        lines += table(["benchmark", "size", "wall seconds", "CPU seconds", "status", "command"], rows)
        lines += [f"Total: {total:.0f} s wall ({total / 60:.1f} min)"
                  + (f", {cpu:.0f} CPU seconds ({cpu / 60:.1f} CPU minutes)" if cpu else "")
                  + " on this machine while other jobs shared it (see the load averages). CPU seconds are what "
                  "the work itself costs; on an idle 2-core machine the wall time is roughly between half of them "
                  "(both cores busy) and all of them (one core busy).", ""]
    return lines


def render(results: Path = RESULTS, out: Path = REPORT, plots: bool = True) -> Path:
    """Write the report (and its plots under out.parent/img) from the JSON files in `results`."""
    drawing(plots)
    img = out.parent / "img"
    summary, body = [], []
    for name, (filename, title, renderer, command) in SECTIONS.items():
        path = results / filename
        body += [f"## {title}", ""]
        try:
            d = load_json(path)
        except (OSError, json.JSONDecodeError) as exc:
            d, error = None, f"unreadable: {exc}"
        else:
            error = None
        if d is None:
            status = error or "missing"
            body += [f"Not measured: `{shown(path)}` is {status}. Run `{command}` "
                     f"(or `python -m bench --only {name.split('-')[0]}`).", ""]
            summary.append([title, f"`{filename}`", f"**not measured** ({status})", "-"])
            continue
        try:
            lines, headline = renderer(d, img)
        except Exception as exc:  # a format this renderer does not know must not sink the report
            body += [f"Could not render `{filename}` ({type(exc).__name__}: {exc}); its layout differs from what "
                     "bench/report.py expects.", ""]
            summary.append([title, f"`{filename}`", "could not render", "-"])
            continue
        body += [machine_line(d), ""] + lines
        caveat = d.get("caveat") or d.get("note")
        if caveat:
            body += [f"*The file's own caveat: {caveat}*", ""]
        summary.append([title, f"`{filename}`", "measured", headline])
    suite = None
    try:
        suite = load_json(results / "suite.json")
    except (OSError, json.JSONDecodeError):
        pass
    head = ["# Benchmarks", "",
            "Generated by `python -m bench` (bench/report.py) from `bench/results/*.json`; do not edit by hand. "
            "Re-render without measuring: `python -m bench --report-only`.", "",
            CAVEAT, "", GPU_NOTE, ""]
    head += suite_lines(suite, results)
    head += ["## Summary", ""] + table(["benchmark", "results file", "status", "headline (ratio to its baseline)"],
                                       summary)
    return atomic_write_text(out, "\n".join(head + body).rstrip() + "\n", make_parents=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    print(f"wrote {render(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
