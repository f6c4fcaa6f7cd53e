"""Drawing attention arcs: a self-contained HTML viewer and a static matplotlib PNG (no torch).

`write_html(d, path)` / `render_html(d)` live in `musicgpt.viz.viewer`; `render_png(d, path, ...)`
and `draw_arcs(ax, d, ...)` in `musicgpt.viz.png` (matplotlib loads only when that module does).
"""

from musicgpt.viz.viewer import render_html, write_html

__all__ = ["render_html", "write_html", "render_png", "draw_arcs"]


def __getattr__(name: str):
    if name in ("render_png", "draw_arcs"):
        from musicgpt.viz import png

        return getattr(png, name)
    raise AttributeError(f"module 'musicgpt.viz' has no attribute {name!r}")
