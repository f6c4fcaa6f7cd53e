"""The benchmark suite: which benchmarks run, at which size, then the report.

`python -m bench` and `musicgpt bench` land here. Each benchmark is its own module, run in its
own process as `python -m bench.NAME` from the repository root (a crash or a leak in one does not
touch the next), writing JSON to the results folder; the suite times each, records the machine
before and after in suite.json, and renders docs/benchmarks.md from whatever JSON files are there
(bench/report.py).

Sizes: `default` fits a quiet 2-core CPU in under 20 minutes in total; `quick` is a smoke run of a few
minutes; `full` runs each benchmark at its own full size and trains the full length-generalization
models (hours on a CPU). Without ../shared/corpora and data/asap, benchmarks fall back to the repo's
fixtures and say so in their JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.format import shown
from musicgpt._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Context:
    """What this checkout has to measure with."""

    root: Path
    shared: bool  # ../shared/corpora/{asap,pop909} exist
    asap_prepared: bool  # data/asap holds a prepared ASAP

    @classmethod
    def detect(cls, root: Path) -> "Context":
        corpora = root.parent / "shared" / "corpora"
        return cls(root, (corpora / "asap").is_dir() and (corpora / "pop909").is_dir(),
                   (root / "data" / "asap" / "manifest.json").is_file())


@dataclass(frozen=True)
class Benchmark:
    """One module of bench/, the JSON it writes, and its arguments at each size."""

    name: str
    module: str  # run as `python -m MODULE` from the repository root
    output: str
    args: Callable[[str, Context], list[str]]

    def command(self, size: str, ctx: Context, results: Path) -> list[str]:
        """The argv that runs it at `size` (from the repository root), writing into `results`."""
        output = self.output if size != "full" or self.name != "lengthgen" else "lengthgen-full.json"
        return [sys.executable, "-m", self.module, *self.args(size, ctx), "--out", str(results / output)]


def _by_size(quick: list[str], default: list[str], full: list[str]) -> Callable[[str, Context], list[str]]:
    return lambda size, ctx: {"quick": quick, "default": default, "full": full}[size]


def _roundtrip(size: str, ctx: Context) -> list[str]:
    corpora = [] if ctx.shared else ["tests/fixtures"]
    limit = {"quick": ["--limit", "30"], "default": ["--limit", "300"], "full": []}[size]
    return corpora + limit


def _train(size: str, ctx: Context) -> list[str]:
    data = ["--data", "data/asap"] if ctx.asap_prepared else ["--data", "tests/fixtures"] if size != "full" else []
    return data + {"quick": ["--config", "tiny", "--rounds", "2", "--no-compile"],
                   "default": ["--config", "small-cpu", "--rounds", "3", "--no-compile"],
                   "full": []}[size]


def _duet(size: str, ctx: Context) -> list[str]:
    data = [] if ctx.shared else ["--data", "examples"]
    return data + {"quick": ["--phrases", "4", "--paths", "engine"], "default": ["--phrases", "12"],
                   "full": ["--phrases", "24"]}[size]


def _continuation(size: str, ctx: Context) -> list[str]:
    data = [] if ctx.shared else ["--asap", "examples", "--pop909", "-", "--split", "train", "--copies", "examples"]
    return data + {"quick": ["--primers", "8", "--seeds", "1", "--seconds", "10", "--no-copies"], "default": [],
                   "full": ["--primers", "80", "--seeds", "4"]}[size]


def _decode_speed(size: str, ctx: Context) -> list[str]:
    if size == "quick":
        return ["--threads", "1", "--rounds", "2", "--tokens", "32", "--nll-docs", "0"]
    nll = [] if ctx.asap_prepared else ["--nll-docs", "0"]  # test NLL needs the prepared ASAP split
    return nll + {"default": ["--threads", "1"], "full": ["--threads", "1,all"]}[size]


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("tokenize", "bench.tokenizer_speed", "tokenize.json",
              _by_size(["--every", "50", "--rounds", "2", "--crops", "500"],
                       ["--every", "20", "--rounds", "3", "--crops", "2000"], [])),
    Benchmark("roundtrip", "bench.roundtrip", "roundtrip.json", _roundtrip),
    Benchmark("attention", "bench.attention", "attention.json",
              _by_size(["--quick", "--rounds", "1", "--no-compile", "--no-naive"], ["--quick", "--no-compile"], [])),
    Benchmark("train", "bench.train", "train.json", _train),
    Benchmark("generate", "bench.generate", "generate.json", _by_size(["--quick"], ["--quick"], [])),
    Benchmark("metrics", "bench.metrics", "metrics.json",
              _by_size(["--files", "12", "--rounds", "2"], ["--files", "40", "--rounds", "3"],
                       ["--files", "150", "--rounds", "3"])),
    Benchmark("continuation", "bench.continuation", "continuation.json", _continuation),
    Benchmark("attend_memory", "bench.attend_memory", "attend_memory.json",
              _by_size(["--minutes", "1"], ["--minutes", "5"], [])),
    Benchmark("lengthgen", "bench.length_generalization", "lengthgen.json",
              _by_size(["--size", "quick", "--steps", "100"], ["--size", "quick"], ["--size", "full", "--reuse"])),
    Benchmark("studio", "bench.studio_latency", "studio_latency.json",
              _by_size(["--rounds", "1", "--seconds", "10"], ["--rounds", "5"], ["--rounds", "9"])),
    Benchmark("soak", "bench.studio_soak", "studio_soak.json",
              _by_size(["--takes", "20", "--broken", "4", "--warmup", "5", "--idle", "5"],
                       ["--takes", "200", "--broken", "20"], ["--takes", "500", "--broken", "50"])),
    Benchmark("duet", "bench.duet_latency", "duet_latency.json", _duet),
    Benchmark("decode_speed", "bench.decode_speed", "decode_speed.json", _decode_speed),
)}


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m bench` and `musicgpt bench` (which finds this module in the checkout)."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", const="quick", dest="size",
                      help="smoke sizes: every benchmark in a few minutes, figures only roughly stable")
    size.add_argument("--full", action="store_const", const="full", dest="size",
                      help="each script's full size, and the full length-generalization run (hours on a CPU)")
    parser.set_defaults(size="default")
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"run only these benchmarks (comma-separated): {', '.join(BENCHMARKS)}")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: re-render docs/benchmarks.md from the existing JSON files")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run, run nothing")
    parser.add_argument("--results", type=Path, metavar="DIR",
                        help="where the JSON files go and the report reads them (default: bench/results)")
    parser.add_argument("--report", type=Path, metavar="FILE",
                        help="the rendered report (default: docs/benchmarks.md; plots go to its img/ folder)")


def build_parser() -> argparse.ArgumentParser:
    """`python -m bench`'s parser: the same options as `musicgpt bench`."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    configure(parser)
    return parser


def parse_only(text: str | None) -> list[str]:
    """The benchmarks named by --only, in suite order; all of them when None."""
    from musicgpt.errors import MusicGPTError

    if text is None:
        return list(BENCHMARKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise MusicGPTError(f"--only {text!r}: unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                            f"known: {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes so far (what the work costs, load aside)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _record(results: Path, size: str, entries: dict, started: str, machine_start: dict, command: str) -> Path:
    """Merge this invocation's runs into results/suite.json (runs of other benchmarks are kept)."""
    from bench.machine import NO_GPU, machine_info

    path = results / "suite.json"
    previous = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("benchmarks", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            previous = {}
    suite = {"command": command, "size": size, "results_dir": shown(results), "started": started,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "machine_start": machine_start, "machine_end": machine_info(), "gpu": NO_GPU,
             "benchmarks": {**previous, **entries},
             "note": "Each benchmark entry records its own date and size; entries from earlier invocations "
                     "(python -m bench --only ...) are kept."}
    return atomic_write_text(path, json.dumps(suite, indent=1) + "\n", make_parents=True)


def run_suite(args: argparse.Namespace, root: Path = ROOT) -> int:
    """Run the chosen benchmarks at the chosen size, record suite.json, render the report; 1 if any failed."""
    from bench.machine import machine_info
    from bench.report import render

    results = (args.results or root / "bench" / "results").resolve()
    report = (args.report or root / "docs" / "benchmarks.md").resolve()
    names = parse_only(args.only)
    if args.report_only:
        print(f"wrote {render(results, report)}")
        return 0
    ctx = Context.detect(root)
    plan = [(name, BENCHMARKS[name].command(args.size, ctx, results)) for name in names]
    if args.dry_run:
        for name, cmd in plan:
            print(f"{name}: {shlex.join(cmd)}")
        return 0
    started, machine_start = time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine_info()
    invocation = "python -m bench" + (f" --{args.size}" if args.size != "default" else "") \
        + (f" --only {','.join(names)}" if args.only else "")
    entries, failed = {}, []
    try:
        for i, (name, cmd) in enumerate(plan, 1):
            print(f"\n=== [{i}/{len(plan)}] {name}: {shlex.join(cmd)}", flush=True)
            t0, cpu0 = time.perf_counter(), _children_cpu()
            code = subprocess.run(cmd, cwd=root).returncode
            seconds = round(time.perf_counter() - t0, 1)
            cpu = round(_children_cpu() - cpu0, 1)
            command = shlex.join(["python", *cmd[1:-2]])  # without the interpreter's path and --out
            entries[name] = {"size": args.size, "command": command, "seconds": seconds, "cpu_seconds": cpu,
                             "exit_code": code,
                             "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "output": Path(cmd[-1]).name,
                             "load_average_after": machine_info()["load_average"]}
            print(f"=== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f} s", flush=True)
            if code != 0:
                failed.append(name)
    finally:
        if entries:
            _record(results, args.size, entries, started, machine_start, invocation)
    total = sum(e["seconds"] for e in entries.values())
    print(f"\nsuite: {len(entries)} benchmark(s) in {total:.0f} s ({total / 60:.1f} min)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(f"wrote {render(results, report)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench`."""
    from musicgpt.errors import MusicGPTError

    args = build_parser().parse_args(argv)
    try:
        return run_suite(args, ROOT)
    except MusicGPTError as exc:
        print(f"python -m bench: error: {exc}", file=sys.stderr)
        return 1
