"""heads.json, the head atlas of a model (`musicgpt heads`), and its pictures (numpy and matplotlib; no torch).

    {"format": "musicgpt-heads", "version": 1, "n_layer": 6, "n_head": 8, "model": {...}, "tokenizer": {...},
     "checkpoint": "...", "max_tokens": 2048, "window": 1024,
     "queries": {measure: which query tokens its mean is over}, "averaged": "...",
     "thresholds": {...}, "rule": "...",
     "measures": {measure: [[value per head] per layer] or null}, "names": [[name or null per head] per layer],
     "pieces": [{"file": ..., "tokens": ..., "rows": {measure: rows}, "measures": {...}}, ...],
     "excerpt": [token names of the pattern grid's excerpt],
     "importance": [[NLL rise per head] per layer], "importance_rule": "...", "importance_tokens": 512,
     "importance_base_nll": 2.1}   (the importance keys only with `musicgpt heads --importance`)

The measures (MEASURES) and the naming rule are defined and computed in `musicgpt.analysis.heads`;
this module reads, checks and writes the file and draws it: one layers x heads heatmap per measure,
and a layers x heads grid of attention patterns over a short excerpt (a bertviz-style model view as
a picture). No pyplot: figures are built on the object API.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from musicgpt._io import atomic_savefig, atomic_write_text, read_json
from musicgpt.errors import MusicGPTError

HEADS_VERSION = 1
MEASURES = ("previous", "first", "self", "same_pitch", "same_class", "distance_tokens", "distance_seconds", "entropy")
TITLES = {
    "previous": "share on the previous token", "first": "share on the first token (BOS)", "self": "share on itself",
    "same_pitch": "share on earlier notes of the same pitch",
    "same_class": "share on the same pitch class in another octave",
    "distance_tokens": "mean attention distance (tokens)", "distance_seconds": "mean attention distance (seconds)",
    "entropy": "entropy of the attention row (nats)",
}
SHORT = {"previous-token head": "prev", "first-token head": "first", "self head": "self",
         "same-pitch head": "pitch", "local": "local", "broad": "broad"}
MAX_NAME = 60


class HeadsFormatError(MusicGPTError):
    """A heads.json file or dict breaks the format; the message names the file and the problem."""


def _grid_of(value: Any, n_layer: int, n_head: int, ok) -> bool:
    return (isinstance(value, list) and len(value) == n_layer
            and all(isinstance(row, list) and len(row) == n_head and all(ok(v) for v in row) for row in value))


def is_name(v: Any) -> bool:
    """A head name: None, or a non-empty string of at most MAX_NAME characters."""
    return v is None or (isinstance(v, str) and 0 < len(v) <= MAX_NAME)


def validate_heads(d: Any, source: str = "heads data") -> None:
    """Raise HeadsFormatError naming `source` and the first problem found."""

    def fail(msg: str) -> None:
        raise HeadsFormatError(f"{source}: {msg}")

    if not isinstance(d, dict) or d.get("format") != "musicgpt-heads":
        fail("not a head atlas (expected an object with \"format\": \"musicgpt-heads\", as musicgpt heads writes)")
    if d.get("version") != HEADS_VERSION:
        fail(f"unsupported version {d.get('version')!r} (this musicgpt reads heads.json version {HEADS_VERSION})")
    for key in ("n_layer", "n_head"):
        if not isinstance(d.get(key), int) or isinstance(d.get(key), bool) or d[key] < 1:
            fail(f"'{key}' must be a positive integer, got {d.get(key)!r}")
    n_layer, n_head = d["n_layer"], d["n_head"]
    measures = d.get("measures")
    if not isinstance(measures, dict):
        fail("'measures' must be an object of measure -> layers x heads values")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for m in MEASURES:
        if m not in measures:
            fail(f"'measures' lacks '{m}'")
        if measures[m] is not None and not _grid_of(measures[m], n_layer, n_head, number):
            fail(f"measures['{m}'] must be {n_layer} lists of {n_head} finite numbers (or null)")
    if not _grid_of(d.get("names"), n_layer, n_head, is_name):
        fail(f"'names' must be {n_layer} lists of {n_head} names (strings of 1..{MAX_NAME} characters or null)")
    for key in ("model", "tokenizer", "thresholds", "queries"):
        if not isinstance(d.get(key), dict):
            fail(f"'{key}' must be an object")
    if not isinstance(d.get("pieces"), list):
        fail("'pieces' must be a list")
    if "importance" in d and not _grid_of(d["importance"], n_layer, n_head, number):
        fail(f"'importance' must be {n_layer} lists of {n_head} finite numbers (nats per token)")


def read_heads(path: str | os.PathLike) -> dict:
    """Load and validate a heads.json file; errors name the file and the problem."""
    d = read_json(path, HeadsFormatError)
    validate_heads(d, source=str(path))
    return d


def write_heads(d: dict, path: str | os.PathLike) -> Path:
    """Validate `d` and write it atomically: indented, each list of plain values (a layer's heads) on one line."""
    path = Path(path)
    validate_heads(d, source=f"{path} (not written)")
    rows: list[str] = []

    def mark(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: mark(v) for k, v in obj.items()}
        if isinstance(obj, list) and not any(isinstance(v, (list, dict)) for v in obj):
            rows.append(json.dumps(obj, ensure_ascii=False))
            return f"\0{len(rows) - 1}\0"
        if isinstance(obj, list):
            return [mark(v) for v in obj]
        return obj

    text = json.dumps(mark(d), indent=1, ensure_ascii=False)
    text = re.sub(r'"\\u0000(\d+)\\u0000"', lambda m: rows[int(m.group(1))], text)
    return atomic_write_text(path, text + "\n", make_parents=True)


def head_names_for(atlas: dict, arcs_doc: dict, source: str = "heads.json") -> list[list[str | None]]:
    """The atlas's head names for an arcs.json dict (with its importance when it has one), refused when the atlas
    describes another model."""
    if (atlas["n_layer"], atlas["n_head"]) != (arcs_doc["n_layer"], arcs_doc["n_head"]):
        raise HeadsFormatError(f"{source}: describes a model of {atlas['n_layer']} layers x {atlas['n_head']} heads, "
                               f"the arcs one of {arcs_doc['n_layer']} x {arcs_doc['n_head']}")
    mine, theirs = atlas.get("model") or {}, arcs_doc.get("model") or {}
    differ = sorted(k for k in mine.keys() & theirs.keys() if mine[k] != theirs[k])
    if differ:
        raise HeadsFormatError(f"{source}: describes another model than the arcs ({differ[0]} "
                               f"{mine[differ[0]]!r} vs {theirs[differ[0]]!r})")
    if atlas.get("importance") is None:
        return [list(row) for row in atlas["names"]]
    # the viewer's tooltips also say what knocking the head out costs (heads --importance)
    return [[f"{name or 'unnamed'} · knocked out +{value:.3f} nats"[:MAX_NAME] for name, value in zip(names, values)]
            for names, values in zip(atlas["names"], atlas["importance"])]


def _figure(width: float, height: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render_measure_png(atlas: dict, measure: str, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """One layers x heads heatmap of `measure`, each cell with its value; heads named after this measure's
    pattern are outlined and labelled."""
    from matplotlib.patches import Rectangle

    values = atlas["measures"][measure]
    if values is None:
        raise HeadsFormatError(f"heads.json has no values of '{measure}'")
    a = np.array(values, np.float64)
    n_layer, n_head = a.shape
    fig = _figure(max(6.5, 1.0 + 0.85 * n_head), 1.2 + 0.6 * n_layer, dpi)  # room for the title
    ax = fig.add_subplot()
    share = measure in ("previous", "first", "self", "same_pitch", "same_class")
    image = ax.imshow(a, cmap="magma", vmin=0.0 if share else None, vmax=1.0 if share else None, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.9)
    lo, hi = image.get_clim()
    owner = {"previous": "previous-token head", "first": "first-token head", "self": "self head",
             "same_pitch": "same-pitch head", "distance_tokens": "local", "entropy": "broad"}.get(measure)
    for layer in range(n_layer):
        for head in range(n_head):
            v = a[layer, head]
            light = (v - lo) / max(hi - lo, 1e-12) < 0.6
            text = f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
            name = atlas["names"][layer][head]
            if name is not None and name == owner:
                ax.add_patch(Rectangle((head - 0.47, layer - 0.47), 0.94, 0.94, fill=False, lw=2.0, ec="#2ca02c"))
                text += "\n" + SHORT.get(name, name)
            ax.text(head, layer, text, ha="center", va="center", fontsize=7.5, color="white" if light else "black")
    ax.set_xticks(range(n_head), [f"H{h}" for h in range(n_head)])
    ax.set_yticks(range(n_layer), [f"L{layer}" for layer in range(n_layer)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{TITLES.get(measure, measure)}\nmean over {atlas['queries'].get(measure, 'query tokens')}, "
                 f"{len(atlas['pieces'])} piece(s)", fontsize=9, loc="left")
    return atomic_savefig(fig, path, make_parents=True, format="png")


def render_importance_png(atlas: dict, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """A layers x heads heatmap of head importance (the NLL rise when the head is knocked out), each cell with
    its value and the head's pattern name."""
    a = np.array(atlas["importance"], np.float64)
    n_layer, n_head = a.shape
    fig = _figure(max(6.5, 1.0 + 0.85 * n_head), 1.2 + 0.6 * n_layer, dpi)
    ax = fig.add_subplot()
    top = max(float(np.abs(a).max()), 1e-6)
    image = ax.imshow(a, cmap="RdBu_r", vmin=-top, vmax=top, aspect="auto")  # red: the NLL rises without it
    fig.colorbar(image, ax=ax, shrink=0.9, label="nats per token")
    for layer in range(n_layer):
        for head in range(n_head):
            name = atlas["names"][layer][head]
            text = f"{a[layer, head]:.3f}" + (f"\n{SHORT.get(name, name)}" if name else "")
            ax.text(head, layer, text, ha="center", va="center", fontsize=7.5,
                    color="white" if abs(a[layer, head]) > 0.6 * top else "black")
    ax.set_xticks(range(n_head), [f"H{h}" for h in range(n_head)])
    ax.set_yticks(range(n_layer), [f"L{layer}" for layer in range(n_layer)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"head importance: NLL rise when the head is knocked out (output zeroed)\n"
                 f"{len(atlas['pieces'])} piece(s), first {atlas.get('importance_tokens', '?')} tokens each; "
                 f"labels: the head's pattern", fontsize=9, loc="left")
    return atomic_savefig(fig, path, make_parents=True, format="png")


def render_patterns_png(atlas: dict, pattern: np.ndarray, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """A layers x heads grid of attention patterns (L, H, P, P): each cell the rows of the excerpt's tokens
    (down) over its keys (across), square-root colour scale, titled with the head's name."""
    from matplotlib.colors import PowerNorm

    pattern = np.asarray(pattern, np.float64)
    n_layer, n_head, rows, _ = pattern.shape
    fig = _figure(max(6.5, 0.3 + 1.25 * n_head), 0.6 + 1.35 * n_layer, dpi)
    grid = fig.subplots(n_layer, n_head, squeeze=False)
    for layer in range(n_layer):
        for head in range(n_head):
            ax = grid[layer][head]
            ax.imshow(pattern[layer, head], cmap="Blues", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0),
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            name = atlas["names"][layer][head]
            ax.set_title(f"L{layer} H{head}" + (f" · {SHORT.get(name, name)}" if name else ""), fontsize=7, pad=2)
    fig.suptitle(f"attention of the first {rows} tokens of {atlas['pieces'][0]['file'] if atlas['pieces'] else 'a piece'}"
                 " (rows: queries, columns: keys; BOS top left)", fontsize=9)
    return atomic_savefig(fig, path, make_parents=True, format="png")


def render_atlas(atlas: dict, out_dir: str | os.PathLike, pattern: np.ndarray | None = None, *,
                 dpi: int = 150) -> list[Path]:
    """heads_<measure>.png for every measure with values, and heads_patterns.png when a pattern is given."""
    out_dir = Path(out_dir)
    written = [render_measure_png(atlas, m, out_dir / f"heads_{m}.png", dpi=dpi)
               for m in MEASURES if atlas["measures"][m] is not None]
    if atlas.get("importance") is not None:
        written.append(render_importance_png(atlas, out_dir / "heads_importance.png", dpi=dpi))
    if pattern is not None:
        written.append(render_patterns_png(atlas, pattern, out_dir / "heads_patterns.png", dpi=dpi))
    return written
