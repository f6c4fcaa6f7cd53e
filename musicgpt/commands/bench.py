"""`musicgpt bench`: run the project's benchmarks and render docs/benchmarks.md (needs a source checkout).

The benchmarks live in the repository's `bench/` folder, which is not part of the installed package;
this command finds the checkout the package was installed from (an editable install) or the current
directory, and hands over to its `bench.suite` (options and all), exactly as `python -m bench` does.
The library never imports bench/ otherwise, and bench/ never imports the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

from musicgpt.errors import MusicGPTError

NO_CHECKOUT = ("the benchmarks are not installed with the package: run `musicgpt bench` (or "
               "`python -m bench`) from a source checkout of musicgpt")


def checkout_root() -> Path | None:
    """The source checkout holding bench/suite.py: the package's parent folder, else the current directory."""
    import musicgpt

    for root in (Path(musicgpt.__file__).resolve().parents[1], Path.cwd()):
        if (root / "bench" / "suite.py").is_file() and (root / "musicgpt").is_dir():
            return root
    return None


def _suite(root: Path) -> ModuleType:
    """The checkout's bench.suite module."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("bench.suite")


def configure(parser: argparse.ArgumentParser) -> None:
    """The suite's own options (a MusicGPTError without a checkout: there is nothing to run)."""
    _suite(_root()).configure(parser)


def run(args: argparse.Namespace) -> int:
    """Find the checkout's bench/ folder and run the suite from it."""
    root = _root()
    return _suite(root).run_suite(args, root)


def _root() -> Path:
    root = checkout_root()
    if root is None:
        raise MusicGPTError(NO_CHECKOUT)
    return root
