"""The import graph of the project's own modules, read from the source (ast), and its cycles.

What counts as module A importing module B:
- an `import` or `from ... import` of B anywhere in A, at module level or inside a function (a lazy
  import is still a dependency); under `if TYPE_CHECKING:` it is a type-only edge (`Scan.type_only`): no
  room rule applies to it, but it counts for cycles (an annotation naming a module is still an arrow to it);
- `from P import name` or `P.name` (P imported as a module) where the package P lists `name` in its
  lazy-attribute table (`_LAZY = {"name": ("B", "attr"), ...}` in P's __init__): the table is how P
  hands out B, so the edge goes from A to B, not from P to B;
- a string constant naming B by its dotted name (`importlib.import_module("musicgpt.x")`), or an
  f-string starting with a package's dotted name and a dot (an edge to every module of that package);
- the packages an import of B runs through (their __init__ runs), except packages that contain A
  (they are always initialized before it).
Imports under our top-level packages that name no module of ours, or a name the module does not
define, are reported as unresolved (an old module path, a name that moved elsewhere).

    python tests/import_graph.py            # print the cycles of musicgpt/ and bench/
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("musicgpt", "bench", "tools")


def module_names(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under the given top-level packages."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST):
    """Every node outside `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def lazy_table(tree: ast.AST) -> tuple[dict[str, str], set[int]]:
    """(name -> module) of a module's top-level `_LAZY = {...}` literal, and the ids of its string nodes."""
    for node in getattr(tree, "body", []):
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            table = {}
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Tuple) and value.elts:
                    first = value.elts[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        table[key.value] = first.value
            return table, {id(n) for n in ast.walk(node.value)}
    return {}, set()


def defined_names(tree: ast.AST) -> set[str] | None:
    """Names a module defines or imports at its top level (None: it has a module __getattr__, so any)."""
    names: set[str] = set()
    stack = list(getattr(tree, "body", []))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            stack.extend(ast.iter_child_nodes(node))
    return names


@dataclass
class Scan:
    """What one module imports."""

    targets: set[str] = field(default_factory=set)  # our modules
    unresolved: set[str] = field(default_factory=set)  # names under our packages that are no module of ours
    external: set[str] = field(default_factory=set)  # top-level names of other packages (torch, numpy, ...)
    type_only: set[str] = field(default_factory=set)  # our modules imported under `if TYPE_CHECKING:` only


def _contains(package: str, module: str) -> bool:
    """Whether `module` is `package` or lies inside it."""
    return module == package or module.startswith(package + ".")


def scan_all(modules: dict[str, Path] | None = None) -> dict[str, Scan]:
    """module -> Scan, for every module of ours."""
    modules = module_names() if modules is None else modules
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in modules.items()}
    lazy = {name: lazy_table(tree) for name, tree in trees.items()}
    defined = {name: defined_names(tree) for name, tree in trees.items()}
    ours = lambda dotted: dotted.split(".")[0] in PACKAGES  # noqa: E731

    def resolve(package: str, name: str | None) -> str | None:
        """`from package import name` (or `import package` when name is None) -> one of our modules."""
        if package not in modules:
            return None
        if name is not None:
            if f"{package}.{name}" in modules:
                return f"{package}.{name}"
            if name in lazy[package][0]:
                return lazy[package][0][name]
            if defined[package] is not None and name not in defined[package]:
                return None
        return package

    scans: dict[str, Scan] = {}
    for name, tree in trees.items():
        path = modules[name]
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        scan = Scan()
        aliases: dict[str, str] = {}  # local name -> our package it stands for (import P / import P as A)
        _, own_lazy_strings = lazy[name]
        for node in _nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if not ours(alias.name):
                        scan.external.add(alias.name.split(".")[0])
                    elif alias.name in modules:
                        scan.targets.add(alias.name)
                        aliases[alias.asname or alias.name] = alias.name
                    else:
                        scan.unresolved.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".")
                    module = ".".join(base[: len(base) - (node.level - 1)] + ([module] if module else []))
                if not ours(module):
                    scan.external.add(module.split(".")[0])
                    continue
                for alias in node.names:
                    target = resolve(module, None if alias.name == "*" else alias.name)
                    if target is None:
                        scan.unresolved.add(f"{module}.{alias.name}")
                    else:
                        scan.targets.add(target)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in own_lazy_strings:
                if "." in node.value and node.value in modules:
                    scan.targets.add(node.value)
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                prefix = str(node.values[0].value)
                if prefix.endswith(".") and prefix[:-1] in modules:
                    scan.targets.update(m for m in modules if m.startswith(prefix))
        for node in _nodes(tree):  # P.name where P was imported as a module and lists name as lazy
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                target = resolve(aliases[node.value.id], node.attr)
                if target is not None:
                    scan.targets.add(target)
        for target in list(scan.targets):
            parts = target.split(".")
            scan.targets.update(".".join(parts[:end]) for end in range(1, len(parts)) if ".".join(parts[:end]) in modules)
        scan.targets = {t for t in scan.targets if not _contains(t, name)}
        for block in ast.walk(tree):
            if isinstance(block, ast.If) and _is_type_checking(block):
                for node in (n for stmt in block.body for n in ast.walk(stmt)):
                    if isinstance(node, ast.ImportFrom) and ours(node.module or ""):
                        scan.type_only.update(t for a in node.names if (t := resolve(node.module, a.name)))
                    elif isinstance(node, ast.Import):
                        scan.type_only.update(a.name for a in node.names if a.name in modules)
        scan.type_only -= scan.targets
        scans[name] = scan
    return scans


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> the set of our modules it imports (see the module docstring)."""
    return {name: scan.targets for name, scan in scan_all(modules).items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (each a set of modules importing each other)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan, iterative over successors to stay shallow
        nonlocal counter
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, successors = work[-1]
            advanced = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def path_between(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """One shortest import path start -> ... -> goal, or None."""
    previous: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for w in sorted(graph.get(node, ())):
                if w not in previous:
                    previous[w] = node
                    if w == goal:
                        path = [w]
                        while previous[path[-1]] is not None:
                            path.append(previous[path[-1]])
                        return path[::-1]
                    following.append(w)
        frontier = following
    return None


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    """A cycle through the first module of a component, as 'a -> b -> a'."""
    first = component[0]
    for w in sorted(graph[first]):
        if w in component:
            back = path_between({k: v & set(component) for k, v in graph.items()}, w, first)
            if back:
                return " -> ".join([first, *back])
    return ", ".join(component)


if __name__ == "__main__":
    g = {name: scan.targets | scan.type_only for name, scan in scan_all().items()}  # type-only imports count
    found = cycles(g)
    for component in found:
        print(f"{len(component)} modules: {describe(g, component)}")
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges, {len(found)} cycle(s)")
    sys.exit(1 if found else 0)
