"""The attention-arcs viewer: one self-contained HTML file (inline JS, CSS and SVG; no network).

The arcs.json content is embedded as JSON inside a <script type="application/json"> tag, in a
columnar layout the page reads directly: note columns, and arc columns sorted by (query, layer,
head, -weight, key) with per-query offsets, so the page finds a note's arcs without scanning.
`label` names the non-primer notes ("piece" for an existing piece, else "continuation"), and
`head_names` (layers x heads, or null) are the tooltips of the model view. Notes with an "nll" (their
surprisal under the model) get a column `nll`: the page can shade notes by it and lists the most
surprising ones. An infilled piece's notes get a column `part` (prefix, middle, suffix) and `meta.infill`
the gap: the page shades the gap, colours suffix notes apart and dashes arcs that point forward in time.
A file with arcs of several measures (arcs.json "measures") gets their columns under `measures`: the page
switches between them.
The page plays the notes on a sampled piano (assets/piano.js): ten short samples embedded as data: URLs (about
190 KB; a page opened inside the studio fetches the studio's full set instead).
"""

from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np

from musicgpt._io import atomic_write_text
from musicgpt import __version__
from musicgpt.arcs.format import NOTE_KEYS, document_measure, notes_label, validate_arcs
from musicgpt.errors import printable
from musicgpt.viz.piano import ATTRIBUTION, lite_samples

_CORE_KEYS = {"version", "n_layer", "n_head", "model", "tokenizer", "notes", "arcs", "head_names", "measures"}
# Inside <script>, "</script" or "<!--" would end or confuse the block; JSON may spell any
# character as \uXXXX, so these never appear raw. U+2028/2029 are escaped for old JS parsers.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def arc_columns(arcs: list, n: int) -> tuple[dict, list]:
    """(arc columns sorted by (query, layer, head, -weight, key), per-query offsets) of one measure's arcs."""
    q = np.array([a["query"] for a in arcs], dtype=np.int64)
    k = np.array([a["key"] for a in arcs], dtype=np.int64)
    layer = np.array([a["layer"] for a in arcs], dtype=np.int64)
    head = np.array([a["head"] for a in arcs], dtype=np.int64)
    weight = np.array([a["weight"] for a in arcs], dtype=np.float64)
    order = np.lexsort((k, -weight, head, layer, q))  # last key sorts first
    offsets = np.searchsorted(q[order], np.arange(n + 1), side="left") if len(arcs) else np.zeros(n + 1, np.int64)
    cols = {"key": k[order].tolist(), "layer": layer[order].tolist(), "head": head[order].tolist(),
            "weight": weight[order].tolist()}
    return cols, offsets.tolist()


def viewer_payload(d: dict, title: str) -> dict:
    """The columnar form of an arcs.json dict that the page embeds."""
    notes = d["notes"]
    n = len(notes)
    cols = {k: [note[k] for note in notes] for k in NOTE_KEYS if k != "id"}
    cols["primer"] = [int(p) for p in cols["primer"]]
    if any("nll" in note for note in notes):  # the notes' surprisal (null where unknown)
        cols["nll"] = [note.get("nll") for note in notes]
    if any("part" in note for note in notes):  # an infilled piece: prefix, middle or suffix
        cols["part"] = [note.get("part") for note in notes]
    arcs, offsets = arc_columns(d["arcs"], n)
    others = {}  # the other measures' arcs (arcs.json "measures"): the page's measure switch
    for name, rows in d.get("measures", {}).items():
        other, other_offsets = arc_columns(rows, n)
        others[name] = {"arcs": other, "offsets": other_offsets}
    return {
        "title": title,
        "n_layer": d["n_layer"],
        "n_head": d["n_head"],
        "notes": cols,
        "arcs": arcs,
        "offsets": offsets,
        "measure": document_measure(d),
        "measures": others,
        "label": notes_label(d),
        "head_names": d.get("head_names"),
        "model": d["model"],
        "tokenizer": d["tokenizer"],
        "meta": {key: value for key, value in d.items() if key not in _CORE_KEYS},
    }


def _asset(name: str) -> str:
    return resources.files("musicgpt.viz").joinpath("assets", name).read_text(encoding="utf-8")


def script_json(obj) -> str:
    """JSON that is safe to place inside an HTML <script> element (and to encode as UTF-8)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_ESCAPES[m.group(0)], text)
    # a file name's undecodable bytes are lone surrogates in Python: JSON spells them \udcXX
    return re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group(0)):04x}", text)


def render_html(d: dict, title: str | None = None, source: str = "arcs data") -> str:
    """The viewer page for an arcs.json dict, as one self-contained HTML string."""
    validate_arcs(d, source=source)
    title = printable(title or "musicgpt · attention arcs")
    fills = {
        "{{TITLE}}": html.escape(title),
        "{{VERSION}}": html.escape(__version__),
        "/*{{CSS}}*/": _asset("viewer.css"),
        "/*{{JS}}*/": _asset("piano.js") + "\n" + _asset("viewer.js"),
        "{{DATA}}": script_json(viewer_payload(d, title)),
        "{{PIANO}}": script_json({"attribution": ATTRIBUTION, "samples": lite_samples()}),
    }
    # One pass, so text inside the data can never be taken for a placeholder.
    pattern = re.compile("|".join(re.escape(k) for k in fills))
    return pattern.sub(lambda m: fills[m.group(0)], _asset("viewer.html"))


def write_html(d: dict, path: str | os.PathLike, title: str | None = None, source: str = "arcs data") -> Path:
    """Write the viewer page for `d` to `path` atomically; returns the path."""
    path = Path(path)
    return atomic_write_text(path, render_html(d, title=title, source=source), make_parents=True)
