"""Static rendering of attention arcs with matplotlib: piano roll + the arcs of one note (papers, notebooks),
or the arcs of one note as a layers x heads grid of small piano rolls (`render_grid_png`).

No pyplot: figures are built on the object API, so this never touches a notebook's global state.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Iterable

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, PathPatch, Rectangle
from matplotlib.path import Path as MplPath

from musicgpt._io import atomic_savefig
from musicgpt.arcs.format import notes_label
from musicgpt.arcs.select import arcs_by_query, filter_arcs
from musicgpt.errors import MusicGPTError

# The HTML viewer's light-theme palette, so a PNG and a screenshot of the page agree.
HEAD_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#e377c2", "#8c9a1c", "#8c564b", "#3b4cc0"]
PRIMER_COLOR, CONT_COLOR, BOUNDARY_COLOR = "#9fb6e3", "#253455", "#e07b00"
SUFFIX_COLOR = "#8cc9b4"  # the kept notes after an infilled gap (arcs.json "part": "suffix")
NAMES = ["C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B"]


def head_color(head: int, n_head: int) -> str:
    """The colour of a head (the viewer's palette; golden-angle hues past ten heads)."""
    if n_head <= len(HEAD_COLORS):
        return HEAD_COLORS[head]
    r, g, b = colorsys.hls_to_rgb((head * 137.508 % 360) / 360, 0.42, 0.65)
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def note_name(pitch: int) -> str:
    """C4 = MIDI 60."""
    return f"{NAMES[pitch % 12]}{pitch // 12 - 1}"


def _check_choice(values: Iterable[int] | None, n: int, what: str) -> list[int] | None:
    if values is None:
        return None
    values = sorted(set(values))
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise MusicGPTError(f"{what} {bad[0]} does not exist (this file has {what}s 0..{n - 1})")
    return values


def default_note(d: dict, *, layers=None, heads=None, top: int | None = 6, threshold: float = 0.02) -> int | None:
    """A telling note to draw: a continuation note (if any has arcs) whose drawn arcs reach the most
    distinct notes, the one nearest the middle of the piece on ties; None when nothing would be drawn."""
    groups = arcs_by_query(d)
    middle = len(d["notes"]) / 2
    best, best_score = None, None
    for q, arcs in groups.items():
        keys = {a["key"] for a in filter_arcs(arcs, layers=layers, heads=heads, top=top, threshold=threshold)}
        if not keys:
            continue
        score = (not d["notes"][q]["primer"], len(keys), -abs(q - middle))
        if best_score is None or score > best_score:
            best, best_score = q, score
    return best


def draw_arcs(
    ax,
    d: dict,
    note: int | None = None,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    top: int | None = 6,
    threshold: float = 0.02,
    full: bool = False,
    legend: bool = True,
    window: tuple[float, float] | None = None,
    compact: bool = False,
) -> int | None:
    """Draw the piano roll and the arcs of `note` (default: see default_note) on `ax`; returns the note drawn.

    `layers` defaults to the last layer, `heads` to all, as in the HTML viewer. `window` (t_lo, t_hi)
    fixes the time range (default: the note's context, or the piece with `full`); `compact` leaves out
    the title, legend, axis label and primer labels and draws thinner arcs (a cell of a grid).
    """
    notes, n_head = d["notes"], d["n_head"]
    layers = _check_choice(layers, d["n_layer"], "layer") or [d["n_layer"] - 1]
    heads = _check_choice(heads, n_head, "head")
    if note is None:
        note = default_note(d, layers=layers, heads=heads, top=top, threshold=threshold)
    elif not 0 <= note < len(notes):
        raise MusicGPTError(f"note {note} does not exist (this file has notes 0..{len(notes) - 1})")
    arcs = [] if note is None else filter_arcs(
        [a for a in d["arcs"] if a["query"] == note], layers=layers, heads=heads, top=top, threshold=threshold)
    arcs.sort(key=lambda a: a["weight"])  # heavy arcs on top

    duration = max((n["end"] for n in notes), default=1.0)
    label = notes_label(d)
    if window is not None:
        t_lo, t_hi = window
    elif full or note is None:
        t_lo, t_hi = 0.0, duration
    else:
        q = notes[note]
        t_lo = max(0.0, min([notes[a["key"]]["start"] for a in arcs] + [q["start"] - 2.0]) - 0.6)
        later = [notes[a["key"]]["start"] + 0.5 for a in arcs if notes[a["key"]]["start"] > q["start"]]  # suffix keys
        t_hi = min(duration, max([q["end"]] + later) + 1.5)
    shown = [n for n in notes if n["end"] >= t_lo and n["start"] <= t_hi] or notes
    p_lo = min((n["pitch"] for n in shown), default=48) - 2
    p_hi = max((n["pitch"] for n in shown), default=72) + 2
    headroom = 0.5 * (p_hi - p_lo)

    keys_best: dict[int, dict] = {}
    for a in arcs:
        if a["key"] not in keys_best or keys_best[a["key"]]["weight"] < a["weight"]:
            keys_best[a["key"]] = a
    focus = note is not None
    rects, faces, edges, widths = [], [], [], []
    for n in shown:
        i = n["id"]
        rects.append(Rectangle((n["start"], n["pitch"] - 0.42), max(n["end"] - n["start"], 0.01), 0.84))
        alpha = 0.45 + 0.55 * n["velocity"] / 127
        if focus and i != note and i not in keys_best:
            alpha *= 0.5
        base = SUFFIX_COLOR if n.get("part") == "suffix" else PRIMER_COLOR if n["primer"] else CONT_COLOR
        faces.append((*_rgb(base), alpha))
        if i == note:
            edges.append("#000000"), widths.append(1.8)
        elif i in keys_best:
            edges.append(head_color(keys_best[i]["head"], n_head)), widths.append(1.3)
        else:
            edges.append("none"), widths.append(0.0)
    ax.add_collection(PatchCollection(rects, facecolors=faces, edgecolors=edges, linewidths=widths, zorder=2))

    gap = d.get("infill")
    if gap is not None:  # an infilled piece: the gap shaded and bounded, no primer/continuation boundary
        ax.axvspan(max(t_lo, gap[0]), min(t_hi, gap[1]), color=BOUNDARY_COLOR, alpha=0.08, lw=0, zorder=0)
        for edge in gap:
            if t_lo <= edge <= t_hi:
                ax.axvline(edge, color=BOUNDARY_COLOR, ls=(0, (5, 4)), lw=1.3, zorder=1)
        if not compact and t_lo <= gap[0] <= t_hi:
            ax.text(gap[0], p_hi + headroom, " infill ▸", color=BOUNDARY_COLOR, fontsize=8, va="top", ha="left",
                    weight="bold")
    boundary = None if gap is not None else min((n["start"] for n in notes if not n["primer"]), default=None)
    if boundary is not None and any(n["primer"] for n in notes) and t_lo <= boundary <= t_hi:
        ax.axvspan(t_lo, boundary, color=PRIMER_COLOR, alpha=0.12, lw=0, zorder=0)
        ax.axvline(boundary, color=BOUNDARY_COLOR, ls=(0, (5, 4)), lw=1.3, zorder=1)
    if boundary is not None and any(n["primer"] for n in notes) and t_lo <= boundary <= t_hi and not compact:
        ax.text(boundary, p_hi + headroom, f" {label} ▸", color=BOUNDARY_COLOR, fontsize=8, va="top", ha="left", weight="bold")
        ax.text(boundary, p_hi + headroom, "◂ primer ", color=BOUNDARY_COLOR, fontsize=8, va="top", ha="right", weight="bold")

    span = t_hi - t_lo
    for a in arcs:
        k, qn = notes[a["key"]], notes[note]
        xq, yq, xk, yk = qn["start"], qn["pitch"], k["start"], k["pitch"]
        w = a["weight"]
        if a["key"] == note:
            loop_w, loop_h = 0.012 * span, 0.22 * headroom
            verts = [(xq, yq), (xq - loop_w, yq + loop_h), (xq + loop_w, yq + loop_h), (xq, yq)]
        else:
            dx = xq - xk
            spread = 0.88 + 0.3 * (a["layer"] * n_head + a["head"]) / max(1, d["n_layer"] * n_head - 1)
            top_y = max(yq, yk) + headroom * (0.18 + 0.8 * min(1.0, dx / span)) * spread
            verts = [(xq, yq), (xq - 0.12 * dx, top_y), (xk + 0.12 * dx, top_y), (xk, yk)]
        path = MplPath(verts, [MplPath.MOVETO, MplPath.CURVE4, MplPath.CURVE4, MplPath.CURVE4])
        forward = k["start"] > qn["start"]  # to a suffix note that sounds later but was read first: dashed
        ax.add_patch(PathPatch(path, fill=False, lw=(0.6 + 4.0 * w) * (0.5 if compact else 1.0), alpha=0.3 + 0.7 * w ** 0.5,
                               edgecolor=head_color(a["head"], n_head), capstyle="round", zorder=3,
                               linestyle=(0, (4, 3)) if forward else "solid"))

    ax.set_xlim(t_lo, t_hi)
    ax.set_ylim(p_lo - 0.5, p_hi + headroom + 0.5)
    cs = [p for p in range(p_lo, p_hi + 1) if p % 12 == 0]
    ax.set_yticks(cs, [note_name(p) for p in cs])
    for p in cs:
        ax.axhline(p - 0.5, color="#e4e0d6", lw=0.6, zorder=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if compact:
        return note
    ax.set_xlabel("time (s)")
    if legend:
        drawn = sorted({a["head"] for a in arcs})
        handles = [Line2D([], [], color=head_color(h, n_head), lw=2.5, label=f"head {h}") for h in drawn]
        if gap is not None:
            handles += [Patch(color=PRIMER_COLOR, label="kept before the gap"), Patch(color=CONT_COLOR, label="infilled"),
                        Patch(color=SUFFIX_COLOR, label="kept after (read first)")]
            handles += [Line2D([], [], color="#555555", lw=1.5, ls=(0, (4, 3)), label="arc to a later note")]
        else:
            handles += [Patch(color=PRIMER_COLOR, label="primer")] if any(n["primer"] for n in notes) else []
            handles += [Patch(color=CONT_COLOR, label=label)]
        handles += [Line2D([], [], color="#555555", lw=0.6 + 4.0 * w, label=f"weight {w:g}") for w in (0.05, 0.3, 1.0)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    if note is not None:
        qn = notes[note]
        heads_txt = "all heads" if heads is None else "heads " + ",".join(map(str, heads))
        layers_txt = ("layer " if len(layers) == 1 else "layers ") + ",".join(map(str, layers))
        ax.set_title(
            f"note {note} ({note_name(qn['pitch'])}, {qn['start']:.2f} s, {_role(qn, label)})"
            f" attends to · {layers_txt} · {heads_txt} · top {top} per head · weight ≥ {threshold:g}",
            fontsize=10, loc="left")
    else:
        ax.set_title("no arcs to draw", fontsize=10, loc="left")
    return note


def _role(n: dict, label: str) -> str:
    """What a note is, for titles: its infill part, else primer or the document's label."""
    part = n.get("part")
    if part is not None:
        return {"prefix": "kept, before the gap", "middle": "infilled", "suffix": "kept, after the gap"}[part]
    return "primer" if n["primer"] else label


def _rgb(hex_color: str) -> tuple[float, float, float]:
    h = hex_color.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255 for i in (0, 2, 4))


def render_png(
    d: dict,
    path: str | os.PathLike,
    note: int | None = None,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    top: int | None = 6,
    threshold: float = 0.02,
    full: bool = False,
    dpi: int = 200,
    size: tuple[float, float] = (11.0, 4.8),
) -> int | None:
    """Write the piano roll and one note's arcs as a PNG; returns the note drawn."""
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = draw_arcs(ax, d, note, layers=layers, heads=heads, top=top, threshold=threshold, full=full)
    atomic_savefig(fig, path, make_parents=True, format="png")
    return drawn


def grid_figure(
    d: dict,
    note: int | None = None,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    top: int | None = 6,
    threshold: float = 0.02,
    full: bool = False,
    dpi: int = 150,
) -> tuple[Figure, int | None]:
    """(the figure, the note drawn): the arcs of one note as a layers x heads grid of small piano rolls (rows:
    layers, columns: heads; every cell the same time and pitch range). `layers` and `heads` default to all;
    the note defaults as in `default_note` over them. Cells are titled with the document's head names."""
    n_layer, n_head, notes = d["n_layer"], d["n_head"], d["notes"]
    layers = _check_choice(layers, n_layer, "layer") or list(range(n_layer))
    heads = _check_choice(heads, n_head, "head") or list(range(n_head))
    if note is None:
        note = default_note(d, layers=layers, heads=heads, top=top, threshold=threshold)
    elif not 0 <= note < len(notes):
        raise MusicGPTError(f"note {note} does not exist (this file has notes 0..{len(notes) - 1})")
    duration = max((n["end"] for n in notes), default=1.0)
    if full or note is None:
        window = (0.0, duration)
    else:  # the context of every arc drawn in any cell, so the cells share one time axis
        arcs = filter_arcs([a for a in d["arcs"] if a["query"] == note], layers=layers, heads=heads, top=top,
                           threshold=threshold)
        q = notes[note]
        window = (max(0.0, min([notes[a["key"]]["start"] for a in arcs] + [q["start"] - 2.0]) - 0.6),
                  min(duration, q["end"] + 1.5))
    names = d.get("head_names")
    fig = Figure(figsize=(0.6 + 1.9 * len(heads), 0.9 + 1.25 * len(layers)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(layers), len(heads), squeeze=False, sharex=True, sharey=True)
    for row, layer in enumerate(layers):
        for col, head in enumerate(heads):
            ax = grid[row][col]
            draw_arcs(ax, d, note, layers=[layer], heads=[head], top=top, threshold=threshold, legend=False,
                      window=window, compact=True)
            name = names[layer][head] if names else None
            ax.set_title(f"L{layer} H{head}" + (f" · {name}" if name else ""), fontsize=7, pad=2,
                         color=head_color(head, n_head))
            ax.tick_params(labelsize=6)
            if row == len(layers) - 1:
                ax.set_xlabel("time (s)", fontsize=7)
    if note is None:
        fig.suptitle("no arcs to draw", fontsize=10)
    else:
        qn = notes[note]
        fig.suptitle(f"note {note} ({note_name(qn['pitch'])}, {qn['start']:.2f} s, "
                     f"{_role(qn, notes_label(d))}) attends to · rows: layers, columns: heads · "
                     f"top {top} per head · weight ≥ {threshold:g}", fontsize=10)
    return fig, note


def render_grid_png(d: dict, path: str | os.PathLike, note: int | None = None, *, dpi: int = 150, **kwargs) -> int | None:
    """Write `grid_figure(d, note, **kwargs)` as a PNG; returns the note drawn."""
    fig, note = grid_figure(d, note, dpi=dpi, **kwargs)
    atomic_savefig(fig, path, make_parents=True, format="png")
    return note
