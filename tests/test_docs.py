"""Every Python import and every dotted musicgpt name that the README and docs/ mention resolves; relative links
resolve; docs/cli.md names every option of every command and docs/python.md every public name."""

import argparse
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "datasets").glob("*.md"))]
IMPORT = re.compile(r"^\s*(from musicgpt[\w.]* import [\w, ]+|import musicgpt[\w.]*)", re.M)
DOTTED = re.compile(r"\bmusicgpt(?:\.\w+)+")
PATH = re.compile(r"\bmusicgpt/[\w/]+\.(?:py|cpp|json|md)\b")


def _mentions(pattern: re.Pattern) -> list[tuple[str, str]]:
    return sorted({(doc.name, m.group(0).split("#")[0].strip()) for doc in DOCS
                   for m in pattern.finditer(doc.read_text(encoding="utf-8"))})


def _resolve(dotted: str):
    """The object a dotted name stands for: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError:
            continue
        for attr in parts[end:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("doc,statement", _mentions(IMPORT))
def test_documented_imports_work(doc, statement):
    exec(statement, {})


@pytest.mark.parametrize("doc,dotted", [m for m in _mentions(DOTTED) if not m[1].endswith((".py", ".md"))])
def test_documented_names_exist(doc, dotted):
    assert _resolve(dotted) is not None


@pytest.mark.parametrize("doc,path", _mentions(PATH))
def test_documented_files_exist(doc, path):
    assert (ROOT / path).exists(), f"{doc} names {path}"


# --- the reference pages cover the code they document -------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "datasets").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _sections(text: str) -> dict[str, str]:
    """The `## musicgpt NAME` sections of docs/cli.md, each up to the next `## ` heading."""
    parts = re.split(r"^## ", text, flags=re.M)
    return {m.group(1): part for part in parts if (m := re.match(r"musicgpt (\w+)\n", part))}


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc):
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.exists(), f"{doc.name} links to {target}: no such file"
        if anchor:
            assert anchor in _anchors(path), f"{doc.name} links to {target}: no such heading"


def test_cli_reference_names_every_option_of_every_command():
    from musicgpt.cli import COMMANDS, build_parser

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    sections, intro = _sections(text), text.split("\n## ")[0]  # the intro documents what all commands share
    assert sorted(sections) == sorted(COMMANDS), "docs/cli.md needs one '## musicgpt NAME' section per command"
    for name in COMMANDS:
        parser, _ = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        options = {o for action in sub._actions for o in action.option_strings if o.startswith("--") and o != "--help"}
        missing = sorted(o for o in options if not any(re.search(rf"{re.escape(o)}\b(?!-)", where)
                                                       for where in (sections[name], intro)))
        assert not missing, f"docs/cli.md's section on musicgpt {name} does not mention {missing}"


def test_python_reference_names_every_public_name():
    import musicgpt

    text = (ROOT / "docs" / "python.md").read_text(encoding="utf-8")
    missing = [n for n in musicgpt.__all__ if not n.startswith("__") and not re.search(rf"\b{n}\b", text)]
    assert not missing, f"docs/python.md does not mention musicgpt.{missing}"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: the reference belongs in docs/"
