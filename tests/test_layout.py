"""The package's layout rules, enforced: no import cycles, imports point from later pipeline stages to earlier
ones, the torch-free rooms import without torch, and the old 0.1.0 module paths still import (deprecated)."""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from import_graph import ROOT, cycles, describe, module_names, path_between, scan_all

SCANS = scan_all()
GRAPH = {name: scan.targets for name, scan in SCANS.items()}
LIBRARY = sorted(m for m in GRAPH if m == "musicgpt" or m.startswith("musicgpt."))

# Each module's room: the longest prefix found here (musicgpt.arcs.format and .capture are rooms of their own).
ROOMS = {
    "musicgpt": "facade", "musicgpt.__main__": "cli", "musicgpt.cli": "cli", "musicgpt.commands": "cli",
    "musicgpt.errors": "base", "musicgpt._io": "base", "musicgpt._lazy": "base",
    "musicgpt.music": "music", "musicgpt.tokens": "tokens", "musicgpt.corpus": "corpus",
    "musicgpt.checkpoint": "checkpoint", "musicgpt.device": "device", "musicgpt.model": "model",
    "musicgpt.training": "training", "musicgpt.training.log": "training.log",
    "musicgpt.generation": "generation",
    "musicgpt.arcs": "arcs.format", "musicgpt.arcs.format": "arcs.format", "musicgpt.arcs.select": "arcs.format",
    "musicgpt.arcs.capture": "arcs.capture", "musicgpt.arcs.forward": "arcs.capture",
    "musicgpt.arcs.measures": "arcs.capture", "musicgpt.arcs.influence": "arcs.capture",
    "musicgpt.viz": "viz", "musicgpt.metrics": "metrics", "musicgpt.analysis": "analysis",
    "musicgpt.studio": "studio", "musicgpt.duet": "duet", "musicgpt.live": "live",
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
    "model": {"base", "checkpoint", "device"},
    "training.log": {"base"},
    "training": {"base", "music", "tokens", "corpus", "checkpoint", "device", "model", "training.log"},
    "arcs.format": {"base"},
    "arcs.capture": {"base", "music", "tokens", "model", "arcs.format"},
    "viz": {"base", "arcs.format", "training.log"},
    "generation": {"base", "music", "tokens", "checkpoint", "model", "arcs.format", "arcs.capture"},
    "metrics": {"base", "music", "tokens", "corpus"},  # a copy check decodes a prepared split (all torch-free)
    "analysis": {"base", "music", "tokens", "checkpoint", "model", "arcs.format", "arcs.capture", "generation", "viz"},
    "duet": {"base", "music", "tokens", "model", "generation", "arcs.format", "arcs.capture"},
    # the studio (a web app) serves generation live; only the command line starts it
    "studio": {"base", "music", "tokens", "checkpoint", "device", "model", "generation", "arcs.format", "arcs.capture",
               "viz", "duet"},
    # musicgpt live: the duet on the system's MIDI ports; only the command line starts it
    "live": {"base", "music", "tokens", "checkpoint", "device", "model", "generation", "arcs.format", "arcs.capture",
             "duet"},
    "cli": {"base", "music", "tokens", "corpus", "checkpoint", "device", "model", "training", "training.log",
            "generation", "arcs.format", "arcs.capture", "viz", "metrics", "analysis", "studio", "cli", "bench", "duet",
            "live"},
    "facade": {"base", "music", "tokens", "corpus", "checkpoint", "device", "model", "training", "training.log",
               "generation", "arcs.format", "arcs.capture", "viz", "metrics", "analysis"},
}
TORCH_FREE = ("base", "music", "tokens", "corpus", "arcs.format", "viz", "metrics", "training.log")


def room(module: str) -> str:
    """The room of one of our modules ('bench' for the benchmarks, 'tools' for the maintainer tools)."""
    for outside in ("bench", "tools"):
        if module == outside or module.startswith(outside + "."):
            return outside
    parts = module.split(".")
    for end in range(len(parts), 1, -1):  # the package itself ("musicgpt") is the facade, not a catch-all
        prefix = ".".join(parts[:end])
        if prefix in ROOMS:
            return ROOMS[prefix]
    if module in ROOMS:
        return ROOMS[module]
    raise AssertionError(f"{module}: in no room; add its package to ROOMS in tests/test_layout.py")


def test_no_import_cycles_in_the_library_or_the_benchmarks():
    """Type-only imports (under TYPE_CHECKING) count: an annotation naming a module still points at it."""
    graph = {name: scan.targets | scan.type_only for name, scan in SCANS.items()}
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_the_graph_sees_lazy_imports_and_cycles(tmp_path):
    """A cycle closed by a function-level import, one through a package's lazy-attribute table, one through an
    f-string import_module, one through a type-only import, and an import of a module that does not exist."""
    files = {
        "musicgpt/__init__.py": '_LAZY = {"thing": ("musicgpt.b", "thing")}',
        "musicgpt/a.py": "from musicgpt import thing",
        "musicgpt/b.py": "def f():\n    import musicgpt.a\nthing = 1",
        "musicgpt/c.py": "import importlib\ndef f(n):\n    return importlib.import_module(f'musicgpt.sub.{n}')",
        "musicgpt/sub/__init__.py": "", "musicgpt/sub/d.py": "from musicgpt import c",
        "musicgpt/e.py": "import musicgpt.gone\nfrom musicgpt.sub import nothing",
        "musicgpt/f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from musicgpt.g import G\nx = 1",
        "musicgpt/g.py": "from musicgpt.f import x\nclass G: ...",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    scans = scan_all(module_names(tmp_path, ("musicgpt",)))
    graph = {name: scan.targets for name, scan in scans.items()}
    assert cycles(graph) == [["musicgpt.a", "musicgpt.b"], ["musicgpt.c", "musicgpt.sub.d"]]
    assert describe(graph, ["musicgpt.a", "musicgpt.b"]) == "musicgpt.a -> musicgpt.b -> musicgpt.a"
    assert "musicgpt.b" not in graph["musicgpt"]  # the table hands b out; the package does not import it
    assert scans["musicgpt.e"].unresolved == {"musicgpt.gone", "musicgpt.sub.nothing"}
    assert scans["musicgpt.f"].type_only == {"musicgpt.g"} and "musicgpt.g" not in graph["musicgpt.f"]
    typed = {name: scan.targets | scan.type_only for name, scan in scans.items()}
    assert ["musicgpt.f", "musicgpt.g"] in cycles(typed)  # a type-only import back still closes a cycle
    # and in the real tree: the CLI reaches each command only through an f-string, inside a function
    assert {"musicgpt.commands.prepare", "musicgpt.commands.bench"} <= GRAPH["musicgpt.cli"]


def test_every_import_of_ours_names_a_module_of_ours():
    """An import of an old 0.1.0 path (served by the deprecation shim) or of a name that is not there."""
    unresolved = {name: sorted(scan.unresolved) for name, scan in SCANS.items() if scan.unresolved}
    assert not unresolved


def test_every_module_is_in_a_room():
    assert len(LIBRARY) > 60
    for module in GRAPH:
        room(module)


def _runs_code(module: str) -> bool:
    """Whether importing a module imports any of ours (a package __init__ holding only a docstring does not)."""
    return bool(GRAPH[module])


def test_imports_point_from_later_stages_to_earlier_ones():
    wrong = [f"{m} ({room(m)}) imports {t} ({room(t)})" for m in LIBRARY for t in sorted(GRAPH[m])
             if room(t) != room(m) and room(t) not in ALLOWED[room(m)] and _runs_code(t)]
    assert not wrong, "imports against the layout:\n" + "\n".join(wrong)


def test_the_model_knows_token_ids_only():
    """model/ imports nothing from tokens/, not even for type checking (a loaded model carries its tokenizer as an
    opaque attribute); generation writes data and never imports viz (the CLI, the studio and notebooks draw)."""
    model_edges = {m: sorted(t for t in SCANS[m].targets | SCANS[m].type_only if room(t) == "tokens")
                   for m in LIBRARY if room(m) == "model"}
    assert not {m: t for m, t in model_edges.items() if t}
    generation_edges = {m: sorted(t for t in SCANS[m].targets | SCANS[m].type_only if room(t) == "viz")
                        for m in LIBRARY if room(m) == "generation"}
    assert not {m: t for m, t in generation_edges.items() if t}


def test_viz_and_metrics_never_reach_the_model():
    for module in LIBRARY:
        if room(module) in ("viz", "metrics", "arcs.format", "training.log"):
            assert path_between(GRAPH, module, "musicgpt.model") is None, module


def test_benchmarks_use_the_library_not_the_command_line():
    for module, targets in GRAPH.items():
        if room(module) == "bench":
            assert not any(room(t) == "cli" for t in targets), (module, sorted(targets))
        elif module != "musicgpt.commands.bench":  # the one that locates bench/ and hands over
            assert not any(room(t) == "bench" for t in targets), module


# torch-free modules that may still use torch inside a function, and why
TORCH_WHEN_CALLED = {
    "musicgpt.training.log": "MetricsLog mirrors rows to TensorBoard (torch.utils.tensorboard) while training",
}


def test_torch_free_rooms_name_no_torch_anywhere():
    """Not even inside a function: the subprocess test below would only see module-level imports."""
    offenders = {m: sorted(SCANS[m].external & {"torch", "safetensors"}) for m in LIBRARY
                 if room(m) in TORCH_FREE and m not in TORCH_WHEN_CALLED}
    assert not {m: names for m, names in offenders.items() if names}


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
    """The one check that the torch-free rooms (and the package, the CLI, prepare, view, metrics) import without
    torch: with torch made unimportable, not just absent from sys.modules."""
    modules = [m for m in LIBRARY if room(m) in TORCH_FREE and not m.endswith("__main__")]
    assert {"musicgpt.music.midi", "musicgpt.tokens.performance", "musicgpt.corpus.prepare", "musicgpt.arcs.format",
            "musicgpt.viz.curves", "musicgpt.metrics.report"} <= set(modules)
    done = _without_torch(f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
        import musicgpt, musicgpt.arcs, musicgpt.cli  # and the commands that need no model:
        import musicgpt.commands.prepare, musicgpt.commands.view, musicgpt.commands.metrics
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


@pytest.mark.parametrize("name", importlib.import_module("musicgpt").__all__)
def test_public_names_of_the_package_resolve(name):
    import musicgpt

    assert getattr(musicgpt, name) is not None and name in dir(musicgpt)


def test_the_package_root_holds_the_entry_points_only():
    """Besides __init__ and __main__: the command line, errors, checkpoints, the device, and two private helpers."""
    root = sorted(p.stem for p in (ROOT / "musicgpt").glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert root == ["_io", "_lazy", "checkpoint", "cli", "device", "errors"]
    assert not (ROOT / "configs").exists()  # the presets live in musicgpt/configs/ (`--config NAME` finds them)


def test_files_stay_small():
    """One responsibility per file: ~400 lines at most in the library, the benchmarks and the tools."""
    files = [p for folder in ("musicgpt", "bench", "tools") for p in sorted((ROOT / folder).rglob("*.py"))]
    big = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text(encoding="utf-8").splitlines())) > 420}
    assert not big, big
