"""arcs.json: attention arcs over the notes of a piece (build, validate, read, write, and stream-write; no torch).

The format is specified in docs/arcs-format.md (version 1: notes, arcs per layer and head, the optional
keys kind, measure, measures, head_names, infill, and per note nll and part); `validate_arcs` checks every rule there.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from musicgpt._io import atomic_write, atomic_write_text, read_json
from musicgpt.errors import MusicGPTError

ARCS_VERSION = 1
NOTE_KEYS = ("id", "pitch", "start", "end", "velocity", "token", "primer")
PARTS = ("prefix", "middle", "suffix")
ARC_KEYS = ("query", "key", "layer", "head", "weight")
# Rounding slack when checking that one softmax row's shares sum to at most 1.
_ROW_SUM_TOLERANCE = 1e-3
_BLOCK = 100_000  # arcs formatted per write by write_arcs_columns


class ArcsFormatError(MusicGPTError):
    """An arcs.json file or dict breaks the format; the message names the file and the problem."""


class ArcsDocument(dict):
    """An arcs.json dict as `build_arcs` and `read_arcs` return it: a plain dict, of a type of its own so that a
    notebook can show it as the viewer (`musicgpt.load_ipython_extension` registers it with IPython)."""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _round_weight(w: float) -> float:
    """4 significant digits: keeps files small and never turns a positive weight into 0."""
    return min(1.0, float(f"{w:.4g}"))


def round_nll(x: Any) -> float | None:
    """A note's NLL as arcs.json stores it: 4 significant digits (None stays None)."""
    return None if x is None else float(f"{float(x):.4g}")


def build_arcs(
    notes: Iterable[Mapping[str, Any]],
    arcs: Iterable[Mapping[str, Any]],
    *,
    n_layer: int,
    n_head: int,
    model: Mapping[str, Any] | None = None,
    tokenizer: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict:
    """Assemble (and validate) an arcs.json dict; times keep microseconds, weights 4 significant digits.

    `notes` need pitch, start, end, velocity, token and primer (id is set to the position), and may have
    "nll" (kept, 4 significant digits); `arcs` need query, key, layer, head and weight. Plain Python
    numbers or numpy scalars both work.
    """
    note_list = [
        {
            "id": i,
            "pitch": int(n["pitch"]),
            "start": round(float(n["start"]), 6),
            "end": round(float(n["end"]), 6),
            "velocity": int(n["velocity"]),
            "token": int(n["token"]),
            "primer": bool(n["primer"]),
            **({"nll": round_nll(n["nll"])} if "nll" in n else {}),
            **({"part": str(n["part"])} if "part" in n else {}),
        }
        for i, n in enumerate(notes)
    ]
    arc_list = [
        {
            "query": int(a["query"]),
            "key": int(a["key"]),
            "layer": int(a["layer"]),
            "head": int(a["head"]),
            "weight": _round_weight(float(a["weight"])),
        }
        for a in arcs
    ]
    d = ArcsDocument({
        "version": ARCS_VERSION,
        "n_layer": int(n_layer),
        "n_head": int(n_head),
        "model": dict(model or {}),
        "tokenizer": dict(tokenizer or {}),
        **extra,
        "notes": note_list,
        "arcs": arc_list,
    })
    validate_arcs(d, source="build_arcs")
    return d


def validate_arcs(d: Any, source: str = "arcs data") -> None:
    """Raise ArcsFormatError naming `source` and the first problem found; return None if `d` is valid."""

    def fail(msg: str) -> None:
        raise ArcsFormatError(f"{source}: {msg}")

    if not isinstance(d, dict):
        fail(f"expected a JSON object at the top level, got {type(d).__name__}")
    if "version" not in d:
        fail(f"missing 'version' (this musicgpt reads arcs.json version {ARCS_VERSION})")
    if d["version"] != ARCS_VERSION:
        fail(f"unsupported version {d['version']!r} (this musicgpt reads arcs.json version {ARCS_VERSION})")
    for key in ("n_layer", "n_head", "model", "tokenizer", "notes", "arcs"):
        if key not in d:
            fail(f"missing top-level key '{key}'")
    for key in ("n_layer", "n_head"):
        if not _is_int(d[key]) or d[key] < 1:
            fail(f"'{key}' must be a positive integer, got {d[key]!r}")
    for key in ("model", "tokenizer"):
        if not isinstance(d[key], dict):
            fail(f"'{key}' must be an object, got {type(d[key]).__name__}")
    notes, arcs = d["notes"], d["arcs"]
    if not isinstance(notes, list):
        fail(f"'notes' must be a list, got {type(notes).__name__}")
    if not isinstance(arcs, list):
        fail(f"'arcs' must be a list, got {type(arcs).__name__}")
    _validate_notes(notes, fail)
    _validate_arcs(arcs, notes, d["n_layer"], d["n_head"], fail)
    _validate_optional(d, fail)


KINDS = ("piece", "generated")
MAX_HEAD_NAME = 60
# What an arc's weight measures (docs/arcs-format.md); a file without "measure" holds attention.
MEASURES = ("attention", "norm", "rollout", "influence")
# The measure arcs are made with unless one is asked for (attend, generate --arcs): the one place it is set.
# bench/faithfulness.py measures which is most faithful; docs/benchmarks.md says why this one.
DEFAULT_MEASURE = "attention"


def document_measure(d: Mapping[str, Any]) -> str:
    """The measure of a document's arcs: its "measure" key, else "attention" (files written before the key)."""
    return d.get("measure", "attention")


def document_measures(d: Mapping[str, Any]) -> dict[str, list]:
    """Every measure's arcs in a document: its own ("arcs", by `document_measure`) first, then those of its optional
    "measures" object (files with arcs of several measures over the same notes)."""
    return {document_measure(d): d["arcs"], **d.get("measures", {})}


def _validate_optional(d: dict, fail) -> None:
    if "measure" in d and d["measure"] not in MEASURES:
        fail(f"'measure' must be one of {', '.join(map(repr, MEASURES))}, got {d['measure']!r}")
    if "measures" in d:  # arcs of other measures over the same notes, each list by the rules of "arcs"
        others = d["measures"]
        if not isinstance(others, dict):
            fail(f"'measures' must be an object (measure name -> list of arcs), got {type(others).__name__}")
        for name, arcs in others.items():
            if name not in MEASURES:
                fail(f"'measures' has {name!r}; measure names are {', '.join(map(repr, MEASURES))}")
            if name == document_measure(d):
                fail(f"'measures' repeats the file's own measure {name!r} (its arcs are 'arcs')")
            if not isinstance(arcs, list):
                fail(f"'measures'[{name!r}] must be a list of arcs, got {type(arcs).__name__}")
            _validate_arcs(arcs, d["notes"], d["n_layer"], d["n_head"],
                           lambda msg, name=name: fail(f"'measures'[{name!r}]: {msg}"))
    if "kind" in d and d["kind"] not in KINDS:
        fail(f"'kind' must be one of {', '.join(map(repr, KINDS))}, got {d['kind']!r}")
    if "infill" in d:
        gap = d["infill"]
        if not (isinstance(gap, list) and len(gap) == 2 and all(_is_number(t) for t in gap) and 0 <= gap[0] < gap[1]):
            fail(f"'infill' must be [start, end] seconds with 0 <= start < end, got {gap!r}")
    if "head_names" in d:
        names, n_layer, n_head = d["head_names"], d["n_layer"], d["n_head"]
        ok = lambda v: v is None or (isinstance(v, str) and 0 < len(v) <= MAX_HEAD_NAME)
        if not (isinstance(names, list) and len(names) == n_layer and all(
                isinstance(row, list) and len(row) == n_head and all(ok(v) for v in row) for row in names)):
            fail(f"'head_names' must be {n_layer} lists (layers) of {n_head} names (heads): strings of "
                 f"1..{MAX_HEAD_NAME} characters or null")


def document_kind(d: Mapping[str, Any]) -> str:
    """'piece' (an existing piece's notes: label them "piece") or 'generated' (primer and continuation).

    The "kind" key when there is one; else a file that `musicgpt attend` wrote ("source" starts with
    "musicgpt attend") without primer notes is a piece (files written before the key existed)."""
    if d.get("kind") in KINDS:
        return d["kind"]
    source = d.get("source")
    from_attend = isinstance(source, str) and source.startswith("musicgpt attend")
    return "piece" if from_attend and not any(n["primer"] for n in d["notes"]) else "generated"


def notes_label(d: Mapping[str, Any]) -> str:
    """What to call the non-primer notes of a document: 'piece' or 'continuation'."""
    return "piece" if document_kind(d) == "piece" else "continuation"


def _validate_notes(notes: list, fail) -> None:
    tokens: set[int] = set()
    previous_start = -math.inf
    for i, n in enumerate(notes):
        where = f"notes[{i}]"
        if not isinstance(n, dict):
            fail(f"{where} must be an object, got {type(n).__name__}")
        missing = [k for k in NOTE_KEYS if k not in n]
        if missing:
            fail(f"{where} is missing {', '.join(repr(k) for k in missing)}")
        if not _is_int(n["id"]) or n["id"] != i:
            fail(f"{where} has id {n['id']!r}; ids must be 0, 1, 2, ... in list order")
        if not _is_int(n["pitch"]) or not 0 <= n["pitch"] <= 127:
            fail(f"{where} has pitch {n['pitch']!r}; expected an integer 0..127")
        if not _is_int(n["velocity"]) or not 1 <= n["velocity"] <= 127:
            fail(f"{where} has velocity {n['velocity']!r}; expected an integer 1..127")
        if not _is_number(n["start"]) or n["start"] < 0:
            fail(f"{where} has start {n['start']!r}; expected a finite number of seconds >= 0")
        if not _is_number(n["end"]) or n["end"] < n["start"]:
            fail(f"{where} has end {n['end']!r}; expected a finite number of seconds >= start ({n['start']})")
        if n["start"] < previous_start:
            fail(f"{where} starts at {n['start']} s, before notes[{i - 1}] ({previous_start} s); notes must be sorted by start")
        previous_start = n["start"]
        if not _is_int(n["token"]) or n["token"] < 0:
            fail(f"{where} has token {n['token']!r}; expected the index (>= 0) of its NOTE_ON token")
        if n["token"] in tokens:
            fail(f"{where} has token {n['token']}, already used by another note")
        tokens.add(n["token"])
        if not isinstance(n["primer"], bool):
            fail(f"{where} has primer {n['primer']!r}; expected true or false")
        if "nll" in n and n["nll"] is not None and not (_is_number(n["nll"]) and n["nll"] >= 0):
            fail(f"{where} has nll {n['nll']!r}; expected a finite number of nats >= 0, or null")
        if "part" in n and n["part"] not in PARTS:
            fail(f"{where} has part {n['part']!r}; expected one of {', '.join(PARTS)}")


def _validate_arcs(arcs: list, notes: list, n_layer: int, n_head: int, fail) -> None:
    n_notes = len(notes)
    seen: set[tuple[int, int, int, int]] = set()
    row_sums: dict[tuple[int, int, int], float] = {}
    for i, a in enumerate(arcs):
        where = f"arcs[{i}]"
        if not isinstance(a, dict):
            fail(f"{where} must be an object, got {type(a).__name__}")
        missing = [k for k in ARC_KEYS if k not in a]
        if missing:
            fail(f"{where} is missing {', '.join(repr(k) for k in missing)}")
        q, k, layer, head, w = (a[key] for key in ARC_KEYS)
        for name, value in (("query", q), ("key", k)):
            if not _is_int(value) or not 0 <= value < n_notes:
                fail(f"{where} has {name} {value!r}; expected a note id 0..{n_notes - 1}")
        if not _is_int(layer) or not 0 <= layer < n_layer:
            fail(f"{where} has layer {layer!r}; expected 0..{n_layer - 1} (n_layer = {n_layer})")
        if not _is_int(head) or not 0 <= head < n_head:
            fail(f"{where} has head {head!r}; expected 0..{n_head - 1} (n_head = {n_head})")
        if not _is_number(w) or not 0 < w <= 1:
            fail(f"{where} has weight {w!r}; expected a number in (0, 1]")
        read_first = notes[k].get("part") == "suffix" and notes[k]["token"] < notes[q]["token"]
        if notes[k]["start"] > notes[q]["start"] and not read_first:
            fail(
                f"{where}: key note {k} starts at {notes[k]['start']} s, after its query note {q} "
                f"({notes[q]['start']} s); a note can only attend to notes that start no later"
            )
        ident = (q, k, layer, head)
        if ident in seen:
            fail(f"{where} repeats query {q}, key {k}, layer {layer}, head {head}")
        seen.add(ident)
        row = (q, layer, head)
        row_sums[row] = row_sums.get(row, 0.0) + w
        if row_sums[row] > 1.0 + _ROW_SUM_TOLERANCE:
            fail(
                f"{where}: the weights of query {q}, layer {layer}, head {head} sum to {row_sums[row]:.4f} > 1 "
                "(they are shares of one attention row)"
            )


def read_arcs(path: str | os.PathLike) -> dict:
    """Load and validate an arcs.json file; errors name the file and the problem."""
    d = read_json(path, ArcsFormatError)
    validate_arcs(d, source=str(path))
    return ArcsDocument(d)


def write_arcs(d: dict, path: str | os.PathLike) -> None:
    """Validate `d` and write it atomically: one note or arc per line, so diffs and greps stay readable."""
    path = Path(path)
    validate_arcs(d, source=f"{path} (not written)")
    head = {k: v for k, v in d.items() if k not in ("notes", "arcs", "measures")}
    others = list(d.get("measures", {}).items())
    lines = [json.dumps(head, separators=(", ", ": "))[:-1] + ","]

    def add(key: str, items: list, last: bool) -> None:
        lines.append(f"{key}: [")
        lines.extend(json.dumps(x, separators=(",", ":")) + ("," if i < len(items) - 1 else "") for i, x in enumerate(items))
        lines.append("]" if last else "],")

    add('"notes"', d["notes"], False)
    add('"arcs"', d["arcs"], not others)
    if others:  # arcs of other measures: one arc per line too
        lines.append('"measures": {')
        for j, (name, arcs) in enumerate(others):
            add(json.dumps(name), arcs, j == len(others) - 1)
        lines.append("}")
    lines.append("}")
    atomic_write_text(path, "\n".join(lines) + "\n", make_parents=True)


def write_arcs_columns(doc: dict, arcs, path: str | os.PathLike) -> None:
    """Write `doc` (an arcs.json dict, its arcs left out) with the arcs of the arrays `arcs` (a NoteArcs in file
    order: by query note, layer, head, heaviest first) to `path` atomically: the same bytes as
    `musicgpt.arcs.write_arcs` of the whole dict, a block of lines at a time. `arcs.weight` is rounded in place
    to what is written (4 significant digits, as `build_arcs` rounds). Each block of whole query notes is
    checked with numpy by the arc rules of `validate_arcs`; a broken rule raises ArcsFormatError and writes
    nothing. For pieces whose arcs would not fit as dicts in memory (`musicgpt attend` on an hour of music)."""
    path = Path(path)
    head = {k: v for k, v in doc.items() if k not in ("notes", "arcs")}
    start = np.array([n["start"] for n in doc["notes"]], np.float64)
    query = arcs.query
    if len(query) > 1 and (query[1:] < query[:-1]).any():
        raise ValueError("write_arcs_columns: the arcs must be sorted by query note")

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(head, separators=(", ", ": "))[:-1] + ",\n" + '"notes": [\n')
            notes = doc["notes"]
            for i, note in enumerate(notes):
                f.write(json.dumps(note, separators=(",", ":")) + (",\n" if i < len(notes) - 1 else "\n"))
            f.write('],\n"arcs": [\n')
            first = 0
            while first < len(query):  # blocks of whole query notes, so each row's sum is checked whole
                last = int(np.searchsorted(query, query[min(first + _BLOCK, len(query) - 1)], side="right"))
                weight = [min(1.0, float(f"{w:.4g}")) for w in arcs.weight[first:last].tolist()]
                arcs.weight[first:last] = weight
                block = slice(first, last)
                _check_block(doc, start, arcs, block, path)
                cols = (query[block].tolist(), arcs.key[block].tolist(), arcs.layer[block].tolist(),
                        arcs.head[block].tolist(), weight)
                f.write(",\n".join(f'{{"query":{q},"key":{k},"layer":{l},"head":{h},"weight":{w!r}}}'
                                   for q, k, l, h, w in zip(*cols)) + (",\n" if last < len(query) else "\n"))
                first = last
            f.write("]\n}\n")

    atomic_write(path, write, make_parents=True)


def _check_block(doc: dict, start: np.ndarray, arcs, block: slice, path: Path) -> None:
    """The arc rules of `validate_arcs` on the arcs of whole query notes (ArcsFormatError naming the file)."""
    n_notes, n_layer, n_head = len(start), doc["n_layer"], doc["n_head"]
    q, k = arcs.query[block].astype(np.int64), arcs.key[block].astype(np.int64)
    layer, head, weight = arcs.layer[block].astype(np.int64), arcs.head[block].astype(np.int64), arcs.weight[block]
    problems = [
        ("a note id out of range", (q < 0) | (q >= n_notes) | (k < 0) | (k >= n_notes)),
        ("a layer or head out of range", (layer < 0) | (layer >= n_layer) | (head < 0) | (head >= n_head)),
        ("a weight outside (0, 1]", ~((weight > 0) & (weight <= 1))),
    ]
    for what, bad in problems:
        if bad.any():
            raise ArcsFormatError(f"{path} (not written): arcs[{block.start + int(np.argmax(bad))}] has {what}")
    late = start[k] > start[q]
    if late.any():
        raise ArcsFormatError(f"{path} (not written): arcs[{block.start + int(np.argmax(late))}]: its key note "
                              "starts after its query note")
    row = (q * n_layer + layer) * n_head + head
    if len(np.unique(row * n_notes + k)) != len(q):
        raise ArcsFormatError(f"{path} (not written): an arc repeats its query, key, layer and head")
    rows, inverse = np.unique(row, return_inverse=True)
    if len(rows) and np.bincount(inverse.reshape(-1), weights=weight).max() > 1.0 + _ROW_SUM_TOLERANCE:
        raise ArcsFormatError(f"{path} (not written): the weights of one query, layer and head sum to more than 1")
