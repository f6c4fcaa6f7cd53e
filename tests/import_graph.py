"""The import graph of the project's own modules, read from the source (ast), and its cycles.

Every `import` and `from ... import` counts, at module level or inside a function (a lazy import is
still a dependency), except under `if TYPE_CHECKING:`. A string constant that names one of the
modules by its dotted name (`importlib.import_module("musicgpt.x")`, a lazy-attribute table) counts too. Importing
`a.b.c` also imports the packages `a.b` runs through, so those are edges as well. Edges to a
package that contains the importing module are left out: it is always initialized before it.

    python tests/import_graph.py            # print the cycles of musicgpt/ and bench/
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_names(root: Path = ROOT, packages: tuple[str, ...] = ("musicgpt", "bench")) -> dict[str, Path]:
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


def _imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """(module, names, level) of every import statement outside `if TYPE_CHECKING:` blocks."""
    out: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, [], 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append((node.module or "", [alias.name for alias in node.names], node.level))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def _strings(tree: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _contains(package: str, module: str) -> bool:
    """Whether `module` is `package` or lies inside it (its package is initialized before it anyway)."""
    return module == package or module.startswith(package + ".")


def import_graph(modules: dict[str, Path] | None = None, strings: bool = True) -> dict[str, set[str]]:
    """module -> the set of our modules it imports (directly, lazily, or through package __init__s).

    strings=False leaves out the modules named only in string constants (lazy-attribute tables): the
    graph of what import statements load.
    """
    modules = module_names() if modules is None else modules
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for module, names, level in _imports(tree):
            if level:
                base = package.split(".")
                base = base[: len(base) - (level - 1)]
                module = ".".join(base + ([module] if module else []))
            for imported in [f"{module}.{n}" for n in names if n != "*"] or [module]:
                target = _resolve(imported, modules)
                if target is not None:
                    targets.add(target)
        for text in _strings(tree) if strings else ():
            if "." in text and text in modules:
                targets.add(text)
        for target in list(targets):
            parts = target.split(".")
            targets.update(".".join(parts[:end]) for end in range(1, len(parts)) if ".".join(parts[:end]) in modules)
        graph[name] = {t for t in targets if not _contains(t, name)}
    return graph


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
    g = import_graph()
    found = cycles(g)
    for component in found:
        print(f"{len(component)} modules: {describe(g, component)}")
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges, {len(found)} cycle(s)")
    sys.exit(1 if found else 0)
