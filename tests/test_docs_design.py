"""docs/design.md's module tree names every module and folder of musicgpt/, and nothing that is not there."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "musicgpt"
MODULE = re.compile(r"^\w+\.py$")
FOLDER = re.compile(r"^\w+/$")


def tree_block(text: str) -> list[str]:
    """The lines of design.md's fenced block that starts with `musicgpt/`."""
    match = re.search(r"^```\w*\nmusicgpt/\n(.*?)^```", text, re.M | re.S)
    assert match, "docs/design.md has no fenced block starting with the line 'musicgpt/'"
    return match.group(1).splitlines()


def parse_tree(lines: list[str]) -> tuple[set[str], set[str]]:
    """(modules, folders) the tree names, as paths relative to musicgpt/.

    A line indented by two spaces either opens a folder (its first word ends in '/') or lists modules of
    the package root; a deeper-indented line goes on with the folder above. Words ending in '.py' are
    modules, words ending in '/' after a folder's name are its sub-folders; other words are comments.
    """
    modules, folders, room = set(), set(), ""
    for line in lines:
        words = line.split()
        if not words:
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 2:
            room = words[0] if FOLDER.match(words[0]) else ""
            if room:
                folders.add(room.rstrip("/"))
                words = words[1:]
        for word in words:
            if MODULE.match(word):
                modules.add(room + word)
            elif FOLDER.match(word):
                folders.add(room + word.rstrip("/"))
    return modules, folders


def package_tree() -> tuple[set[str], set[str]]:
    """(modules, folders) under musicgpt/; a folder's __init__.py goes with the folder, and a folder that
    is not a room of its own (assets/, csrc/) stands for everything in it."""
    folders = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
               if p.is_dir() and "__pycache__" not in p.parts
               and len(p.relative_to(PACKAGE).parts) <= 2}  # assets/piano/ goes with assets/
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if "__pycache__" in rel.parts or (rel.name == "__init__.py" and len(rel.parts) > 1):
            continue
        if len(rel.parts) > 2:  # inside a sub-folder of a room (assets/): the folder stands for it
            continue
        modules.add(rel.as_posix())
    return modules, folders


def test_design_tree_matches_the_package():
    listed_modules, listed_folders = parse_tree(tree_block((ROOT / "docs" / "design.md").read_text(encoding="utf-8")))
    modules, folders = package_tree()
    assert sorted(modules - listed_modules) == [], "modules missing from docs/design.md's tree"
    assert sorted(listed_modules - modules) == [], "docs/design.md's tree names modules that do not exist"
    assert sorted(folders - listed_folders) == [], "folders missing from docs/design.md's tree"
    assert sorted(listed_folders - folders) == [], "docs/design.md's tree names folders that do not exist"


def test_tree_parser_reads_rooms_continuations_and_comments():
    modules, folders = parse_tree(["  __init__.py  the API (no torch)", "  model/  gpt.py csrc/  the model",
                                   "               vocab.py  more of it", "  configs/  presets, TOML files"])
    assert modules == {"__init__.py", "model/gpt.py", "model/vocab.py"}
    assert folders == {"model", "model/csrc", "configs"}
