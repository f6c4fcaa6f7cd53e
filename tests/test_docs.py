"""Every Python import and every dotted musicgpt name that the README and docs/ mention resolves."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "datasets" / "README.md"]
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
