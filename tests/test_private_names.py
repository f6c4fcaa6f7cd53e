"""No private names across rooms: a module imports an underscore name only from its own room.

A room here is a module's first two dotted parts (musicgpt.arcs, musicgpt.model, musicgpt.commands;
the package itself for musicgpt/__init__.py). What counts as importing a private name:
`from P import _name`, `from P._mod import name`, `import P._mod`, `alias._name` where alias was
imported as one of our modules, and a lazy-attribute table entry (`_LAZY`) pointing at a private
module or attribute. Dunder names are not private. musicgpt._io and musicgpt._lazy are shared
helpers: their module names carry the underscore, the names they hand out are public.
"""

from __future__ import annotations

import ast
from pathlib import Path

from import_graph import PACKAGES, ROOT, lazy_table, module_names

SHARED = ("musicgpt._io", "musicgpt._lazy")


def room_of(module: str) -> str:
    """First two dotted parts: musicgpt.arcs.format -> musicgpt.arcs."""
    return ".".join(module.split(".")[:2])


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _crossing(importer: str, dotted: str) -> bool:
    """Whether `importer` reaching the module or attribute `dotted` uses a private name of another room."""
    if room_of(dotted) == room_of(importer) or dotted.split(".")[0] not in PACKAGES:
        return False
    for shared in SHARED:
        if dotted == shared or dotted.startswith(shared + "."):
            dotted = dotted[len(shared):].lstrip(".")  # the helper's own path is fine; check what it hands out
            break
    return any(_private(p) for p in dotted.split(".") if p)


def private_imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """'module:line imports dotted.name' for every private name a module takes from another room."""
    modules = module_names(root, packages)
    found: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for a in node.names:
                    targets.append(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".")
                    module = ".".join(base[: len(base) - (node.level - 1)] + ([module] if module else []))
                for a in node.names:
                    dotted = f"{module}.{a.name}" if a.name != "*" else module
                    targets.append(dotted)
                    aliases[a.asname or a.name] = dotted
            for dotted in targets:
                if _crossing(name, dotted):
                    found.append(f"{name}:{node.lineno} imports {dotted}")
        for node in ast.walk(tree):  # alias._name, the alias one of our modules (a private module alias: above)
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] in modules
                    and _crossing(name, f"{aliases[node.value.id]}.{node.attr}")):
                found.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
        table, _ = lazy_table(tree)
        for entry in ast.walk(tree):  # a lazy table hands out (module, attribute): both must be public
            if isinstance(entry, ast.Tuple) and len(entry.elts) == 2 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in entry.elts):
                module, attribute = (e.value for e in entry.elts)
                if module in table.values() and _crossing(name, f"{module}.{attribute}"):
                    found.append(f"{name}:{entry.lineno} hands out {module}.{attribute}")
    return sorted(set(found))


def test_no_module_takes_a_private_name_from_another_room():
    found = private_imports(packages=("musicgpt", "bench", "tools"))
    assert not found, "private names imported across rooms:\n" + "\n".join(found)


def test_the_scan_sees_every_form(tmp_path):
    files = {
        "musicgpt/__init__.py": '_LAZY = {"thing": ("musicgpt.b.m", "_thing"), "ok": ("musicgpt.b.m", "ok")}',
        "musicgpt/_io.py": "def write(): ...",
        "musicgpt/a/__init__.py": "",
        "musicgpt/a/x.py": ("from musicgpt.b.m import _hidden, shown\nfrom musicgpt.b import _priv\n"
                            "import musicgpt.b._priv as p\nfrom musicgpt._io import write\nfrom musicgpt import __doc__\n"
                            "from musicgpt.a.y import _own\nfrom . import y\ny._own\n"
                            "import musicgpt.b.m as m\ndef f():\n    return m._late, m.shown\n"),
        "musicgpt/a/y.py": "from ..b.m import _rel\n_own = 1",
        "musicgpt/b/__init__.py": "", "musicgpt/b/_priv.py": "", "musicgpt/b/m.py": "_hidden = _thing = _rel = _late = 1",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert private_imports(tmp_path, ("musicgpt",)) == [
        "musicgpt.a.x:1 imports musicgpt.b.m._hidden",
        "musicgpt.a.x:11 uses musicgpt.b.m._late",
        "musicgpt.a.x:2 imports musicgpt.b._priv",
        "musicgpt.a.x:3 imports musicgpt.b._priv",
        "musicgpt.a.y:1 imports musicgpt.b.m._rel",
        "musicgpt:1 hands out musicgpt.b.m._thing",
    ]
