"""Pictures (no torch, never the model): the arcs viewer, PNGs of arcs, embeddings and training curves.

    viewer.py      `write_html(d, path)` / `render_html(d)`: one self-contained HTML page (assets/)
    png.py         `render_png(d, path, ...)`, `draw_arcs(ax, d, ...)`: one note's arcs over a piano roll
    embeddings.py  relative-position and NOTE_ON embedding plots from numpy arrays (`musicgpt info --plot`)
    curves.py      `plot_curves(run_dir)`: train/valid curves of a run (`musicgpt plot`)
    heads.py       heads.json (a head atlas): read, write, validate, and its heatmaps and pattern grid
    inline.py      `show(x)`, `inline_html(x)`: a sample, arcs or a head atlas inline in a notebook (Jupyter)

Everything here draws from plain data (arcs.json dicts, arrays, metrics.csv); matplotlib loads only
when a PNG module does.
"""

from musicgpt._lazy import lazy_getattr

from musicgpt.viz.viewer import render_html, write_html

# name -> (module, attribute), imported when first asked for (matplotlib)
_LAZY = {
    "render_png": ("musicgpt.viz.png", "render_png"),
    "draw_arcs": ("musicgpt.viz.png", "draw_arcs"),
    "render_grid_png": ("musicgpt.viz.png", "render_grid_png"),
    "plot_curves": ("musicgpt.viz.curves", "plot_curves"),
    "show": ("musicgpt.viz.inline", "show"),
    "inline_html": ("musicgpt.viz.inline", "inline_html"),
}

__all__ = ["render_html", "write_html", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
