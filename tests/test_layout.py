"""The package's layout rules, enforced: no import cycles, imports point from later pipeline stages to earlier
ones, the torch-free rooms import without torch, and the old 0.1.0 module paths still import (deprecated)."""

import importlib
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from import_graph import ROOT, cycles, describe, import_graph, module_names, path_between

GRAPH = import_graph()
STATEMENTS = import_graph(strings=False)  # without the modules named only in lazy-attribute tables
LIBRARY = sorted(m for m in GRAPH if m == "musicgpt" or m.startswith("musicgpt."))

# Each module's room: the longest prefix found here (musicgpt.arcs.format and .capture are rooms of their own).
ROOMS = {
    "musicgpt": "facade", "musicgpt._moved": "facade", "musicgpt.__main__": "cli", "musicgpt.cli": "cli",
    "musicgpt.commands": "cli",
    "musicgpt._version": "base", "musicgpt.errors": "base", "musicgpt._atomic": "base", "musicgpt._cpuinfo": "base",
    "musicgpt.music": "music", "musicgpt.tokens": "tokens", "musicgpt.corpus": "corpus",
    "musicgpt.checkpoint": "checkpoint", "musicgpt.device": "device", "musicgpt.model": "model",
    "musicgpt.training": "training", "musicgpt.training.log": "training.log",
    "musicgpt.generation": "generation",
    "musicgpt.arcs": "arcs.format", "musicgpt.arcs.format": "arcs.format", "musicgpt.arcs.capture": "arcs.capture",
    "musicgpt.viz": "viz", "musicgpt.metrics": "metrics",
}
# room -> the rooms it may import (besides itself). Later pipeline stages import earlier ones, never the
# reverse; the model knows token ids only (no tokens room); viz and metrics draw plain data (no model, no torch);
# nothing but the command line imports the command line.
ALLOWED = {
    "base": set(),
    "music": {"base"},
    "tokens": {"base", "music"},
    "corpus": {"base", "music", "tokens"},
    "checkpoint": {"base", "tokens"},
    "device": {"base"},
    "model": {"base", "checkpoint"},
    "training.log": {"base"},
    "training": {"base", "music", "tokens", "corpus", "checkpoint", "device", "model", "training.log"},
    "arcs.format": {"base"},
    "arcs.capture": {"base", "music", "tokens", "model", "arcs.format"},
    "viz": {"base", "arcs.format", "training.log"},
    "generation": {"base", "music", "tokens", "checkpoint", "model", "arcs.format", "arcs.capture", "viz"},
    "metrics": {"base", "music"},
    "cli": {"base", "music", "tokens", "corpus", "checkpoint", "device", "model", "training", "training.log",
            "generation", "arcs.format", "arcs.capture", "viz", "metrics", "cli", "bench"},
    "facade": {"base", "music", "tokens", "corpus", "checkpoint", "device", "model", "training", "training.log",
               "generation", "arcs.format", "arcs.capture", "viz", "metrics"},
}
TORCH_FREE = ("base", "music", "tokens", "corpus", "arcs.format", "viz", "metrics", "training.log")


def room(module: str) -> str:
    """The room of one of our modules ('bench' for the benchmarks)."""
    if module == "bench" or module.startswith("bench."):
        return "bench"
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in ROOMS:
            return ROOMS[prefix]
    raise AssertionError(f"{module}: in no room; add its package to ROOMS in tests/test_layout.py")


def test_no_import_cycles_in_the_library_or_the_benchmarks():
    found = cycles(GRAPH)
    assert not found, "import cycles:\n" + "\n".join(describe(GRAPH, c) for c in found)


def test_the_graph_sees_lazy_imports_and_cycles():
    fake = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(fake) == [["a", "b", "c"]] and describe(fake, ["a", "b", "c"]) == "a -> b -> c -> a"
    # a function-level import is an edge: the CLI reaches each command only inside functions
    assert "musicgpt.tokens.registry" in GRAPH["musicgpt.commands.prepare"]
    assert "musicgpt.model.gpt" in GRAPH["musicgpt.generation.generate"]


def test_every_module_is_in_a_room():
    assert len(LIBRARY) > 60
    for module in GRAPH:
        room(module)


def _runs_code(module: str) -> bool:
    """Whether importing a module imports any of ours (a package __init__ holding only a docstring does not)."""
    return bool(STATEMENTS[module])


def test_imports_point_from_later_stages_to_earlier_ones():
    """Checked on import statements; names a package only lists for lazy loading (musicgpt.arcs's capture
    names, the package's public API) are checked by the cycle test instead."""
    wrong = [f"{m} ({room(m)}) imports {t} ({room(t)})" for m in LIBRARY for t in sorted(STATEMENTS[m])
             if room(t) != room(m) and room(t) not in ALLOWED[room(m)] and _runs_code(t)]
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_viz_and_metrics_never_reach_the_model():
    for module in LIBRARY:
        if room(module) in ("viz", "metrics", "arcs.format", "training.log"):
            assert path_between(STATEMENTS, module, "musicgpt.model") is None, module


def test_benchmarks_use_the_library_not_the_command_line():
    for module, targets in GRAPH.items():
        if room(module) == "bench":
            assert not any(room(t) == "cli" for t in targets), (module, sorted(targets))
        elif module != "musicgpt.commands.bench":  # the one that locates bench/ and hands over
            assert not any(room(t) == "bench" for t in targets), module


def _without_torch(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where importing torch (or safetensors.torch) fails."""
    blocker = textwrap.dedent("""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch.") or name == "safetensors.torch":
                    raise ImportError(f"torch is blocked in this test ({name})")
                return None

        sys.meta_path.insert(0, NoTorch())
    """)
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}, timeout=300)


def test_torch_free_rooms_import_without_torch(tmp_path):
    modules = [m for m in LIBRARY if room(m) in TORCH_FREE and not m.endswith("__main__")]
    assert {"musicgpt.music.midi", "musicgpt.tokens.performance", "musicgpt.corpus.prepare", "musicgpt.arcs.format",
            "musicgpt.viz.curves", "musicgpt.metrics.report"} <= set(modules)
    done = _without_torch(f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
        import musicgpt, musicgpt.arcs
        assert "torch" not in sys.modules
        print(len({modules!r}), "modules")
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    blocked = _without_torch("import musicgpt.model", tmp_path)  # the blocker itself works
    assert blocked.returncode != 0 and "torch is blocked" in blocked.stderr


def test_commands_that_need_no_model_run_without_torch(tmp_path):
    """prepare, view and metrics on real files, and the tokenizer's layout, with torch unimportable."""
    fixtures = ROOT / "tests" / "fixtures"
    done = _without_torch(f"""
        from musicgpt.cli import main
        assert main(["prepare", {str(ROOT / "datasets" / "sample")!r}, "--out", "prepared", "--jobs", "1", "--quiet"]) == 0
        assert main(["view", {str(fixtures / "arcs_tiny.json")!r}, "--out", "tiny.html"]) == 0
        assert main(["metrics", {str(fixtures)!r}, {str(ROOT / "examples")!r}, "--quiet"]) == 0
        from musicgpt.tokens.__main__ import main as tokens_main
        assert tokens_main([]) == 0
        assert "torch" not in sys.modules
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "prepared" / "manifest.json").is_file() and (tmp_path / "tiny.html").is_file()


def test_old_module_paths_still_import_with_a_deprecation_warning():
    from musicgpt._moved import MOVED

    names = module_names()
    for old, new in MOVED.items():
        assert new in names and old not in names, (old, new)  # the old file is gone, the new one exists
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("musicgpt.midi")
        from musicgpt.tokenizer import PerformanceTokenizer
    assert old is importlib.import_module("musicgpt.music.midi")
    assert PerformanceTokenizer is importlib.import_module("musicgpt.tokens").PerformanceTokenizer
    assert any(issubclass(w.category, DeprecationWarning) and "musicgpt.music.midi" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", importlib.import_module("musicgpt").__all__)
def test_public_names_of_the_package_resolve(name):
    import musicgpt

    assert getattr(musicgpt, name) is not None and name in dir(musicgpt)


def test_files_stay_small():
    """One responsibility per file: ~400 lines at most (attention.py keeps its three paths together)."""
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "musicgpt").rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert set(big) <= {"musicgpt/model/attention.py"}, big
