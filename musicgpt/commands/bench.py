"""`musicgpt bench`: run the project's benchmarks and render docs/benchmarks.md (needs a source checkout).

The benchmarks live in the repository's `bench/` folder, which is not part of the installed package;
this command finds the checkout the package was installed from (an editable install) or the current
directory, and runs `bench.suite` from there, exactly as `python -m bench` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from musicgpt.errors import MusicGPTError

BENCHMARKS = ("tokenize", "roundtrip", "attention", "train", "generate", "metrics", "lengthgen")


def configure(parser: argparse.ArgumentParser) -> None:
    """Options of `musicgpt bench` and `python -m bench` (bench/suite.py builds its parser with this)."""
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


def parse_only(text: str | None) -> list[str]:
    """The benchmarks named by --only, in suite order; all of them when None."""
    if text is None:
        return list(BENCHMARKS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise MusicGPTError(f"--only {text!r}: unknown benchmark(s) {', '.join(unknown) or '(none given)'}; "
                            f"known: {', '.join(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]


def checkout_root() -> Path | None:
    """The source checkout holding bench/suite.py: the package's parent folder, else the current directory."""
    import musicgpt

    for root in (Path(musicgpt.__file__).resolve().parents[1], Path.cwd()):
        if (root / "bench" / "suite.py").is_file() and (root / "musicgpt").is_dir():
            return root
    return None


def run(args: argparse.Namespace) -> int:
    """Find the checkout's bench/ folder and run the suite from it."""
    root = checkout_root()
    if root is None:
        raise MusicGPTError("the benchmarks are not installed with the package: run `musicgpt bench` (or "
                            "`python -m bench`) from a source checkout of musicgpt")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench.suite import run_suite

    return run_suite(args, root)
