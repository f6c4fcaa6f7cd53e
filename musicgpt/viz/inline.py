"""Pictures inline in a notebook (no torch): a sample, an arcs.json document or a head atlas as HTML for Jupyter.

`inline_html(x)` is the HTML a notebook shows for `x`; `show(x)` shows it in the running IPython (Jupyter) now.
What x may be:

    a generated Sample (anything with an `arcs` dict and `to_wav`)   the arcs viewer, and an <audio> player of
                                                                      the piece where a MIDI renderer exists
    an arcs.json dict (`musicgpt.attend`, `read_arcs`) or its path   the arcs viewer
    a head atlas (`musicgpt.head_atlas`'s pair, its dict, heads.json) the layers x heads grid: each head's name,
                                                                      measures, importance and attention pattern

Each page is the self-contained page that `write_html` writes (inline scripts and styles, the piano samples as
data: URLs; nothing is fetched) placed in an <iframe srcdoc> with `sandbox="allow-scripts"`: its scripts and
styles cannot reach the notebook or a second viewer in the same notebook, and theirs cannot reach it. Samples
and arcs documents show themselves in IPython through display formatters that `import musicgpt` registers
there (`musicgpt.load_ipython_extension`: the generation and arcs rooms never import viz); a `HeadAtlas` has
its own `_repr_html_`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from musicgpt import __version__
from musicgpt.arcs.format import document_measure, read_arcs, validate_arcs
from musicgpt.errors import MusicGPTError, printable
from musicgpt.viz.heads import SHORT, TITLES, read_heads, validate_heads
from musicgpt.viz.viewer import render_html, script_json

VIEWER_HEIGHT = 660  # px: the viewer's roll, controls and side cards without an inner scroll bar at 1000 px wide
ATLAS_HEIGHT_MIN, ATLAS_HEIGHT_MAX = 440, 900  # px: the grid's rows (80 px a layer) and the legend below them
AUDIO_SECONDS = 120.0  # longer pieces get no <audio> (a WAV data: URL of 2 minutes is about 20 MB): press play
AUDIO_RATE = 22050  # Hz: half CD rate keeps the embedded WAV at ~88 KB a second; a piano loses little


class HeadAtlas(dict):
    """A heads.json dict (`musicgpt.head_atlas`) that shows itself in a notebook; `pattern` is the (L, H, P, P)
    attention over the excerpt's first P tokens, drawn in the grid (None: measures only)."""

    def __init__(self, atlas: dict, pattern: np.ndarray | None = None):
        super().__init__(atlas)
        self.pattern = pattern

    def _repr_html_(self) -> str:
        return atlas_html(self, self.pattern)


# A frame's page may run its first layout before the notebook gives the frame its size, and no resize event
# follows in Chromium: a resize event whenever the page's box changes size lets the page lay itself out again.
_RELAYOUT = ("<script>new ResizeObserver(() => dispatchEvent(new Event('resize')))"
             ".observe(document.documentElement);</script>\n")


def inline_page(page: str, *, height: int, title: str) -> str:
    """A whole HTML page as a notebook output: an <iframe srcdoc> of `height` px, its scripts sandboxed."""
    end = page.rfind("</body>")
    page = page[:end] + _RELAYOUT + page[end:] if end >= 0 else page + _RELAYOUT
    return (f'<iframe class="musicgpt-inline" title="{html.escape(printable(title))}" sandbox="allow-scripts" '
            f'style="width:100%;height:{int(height)}px;border:1px solid #262f4b;border-radius:8px;display:block" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>')


def audio_html(wav: bytes) -> str:
    """An <audio> player of a WAV file's bytes (a data: URL: nothing is fetched)."""
    return ('<audio class="musicgpt-audio" controls preload="metadata" style="width:100%;margin-top:6px" '
            f'src="data:audio/wav;base64,{base64.b64encode(wav).decode()}"></audio>')


def arcs_html(d: dict, *, title: str | None = None, source: str = "arcs data") -> str:
    """The arcs viewer of an arcs.json dict as a notebook output."""
    title = title or f"musicgpt · {len(d.get('notes', []))} notes · arcs by {document_measure(d)}"
    return inline_page(render_html(d, title=title, source=source), height=VIEWER_HEIGHT, title=title)


def sample_html(sample: Any, *, title: str | None = None) -> str:
    """A generated sample: the arcs viewer (when it has arcs) and a player of its audio (when it can be rendered)."""
    measure = f" · arcs by {document_measure(sample.arcs)}" if sample.arcs is not None else ""
    title = title or f"musicgpt · sample, seed {sample.seed} · {len(sample.notes)} notes{measure}"
    parts = [arcs_html(sample.arcs, title=title) if sample.arcs is not None else
             f"<p>{html.escape(title)}: generated without arcs (arcs=True draws the viewer).</p>"]
    if sample.seconds > AUDIO_SECONDS:
        parts.append(f"<p>No audio player: the piece lasts {sample.seconds:.0f} s, over {AUDIO_SECONDS:.0f} s; "
                     "the viewer's play button plays it.</p>")
        return "\n".join(parts)
    with tempfile.TemporaryDirectory(prefix="musicgpt-show-") as tmp:
        try:
            wav = sample.to_wav(Path(tmp) / "sample.wav", sample_rate=AUDIO_RATE).read_bytes()
        except MusicGPTError as e:  # no renderer here: the viewer's sampled piano still plays it
            parts.append(f'<p class="musicgpt-no-audio">No audio player: {html.escape(str(e))}</p>')
        else:
            parts.append(audio_html(wav))
    return "\n".join(parts)


def atlas_payload(atlas: dict, pattern: np.ndarray | None, title: str) -> dict:
    """What the atlas page embeds: names, measures, importance, and the patterns as bytes (0..255 per weight)."""
    validate_heads(atlas)
    payload = {key: atlas.get(key) for key in ("n_layer", "n_head", "names", "measures", "importance", "rule",
                                                "importance_rule", "importance_tokens", "importance_base_nll",
                                                "thresholds", "checkpoint", "max_tokens", "excerpt")}
    payload.update(title=title, titles=TITLES, short=SHORT, version=__version__,
                   pieces=[p["file"] for p in atlas["pieces"]], pattern=None)
    if pattern is not None:
        p = np.asarray(pattern, np.float64)
        if p.ndim != 4 or p.shape[:2] != (atlas["n_layer"], atlas["n_head"]) or p.shape[2] != p.shape[3]:
            raise MusicGPTError(f"head atlas pattern: expected ({atlas['n_layer']}, {atlas['n_head']}, P, P), "
                                f"got {p.shape}")
        # sqrt spreads the small weights most rows hold over the byte's range (the page squares them back)
        levels = np.rint(np.sqrt(np.clip(p, 0.0, 1.0)) * 255).astype(np.uint8)
        payload["pattern"] = {"size": int(p.shape[2]), "bytes": base64.b64encode(levels.tobytes()).decode()}
    return payload


def atlas_page(atlas: dict, pattern: np.ndarray | None = None, *, title: str | None = None) -> str:
    """The head atlas as one self-contained HTML page (the layers x heads grid, inline script and style)."""
    title = printable(title or f"musicgpt · head atlas, {atlas['n_layer']} layers x {atlas['n_head']} heads")
    assets = resources.files("musicgpt.viz").joinpath("assets")
    fills = {"{{TITLE}}": html.escape(title), "{{VERSION}}": html.escape(__version__),
             "/*{{CSS}}*/": assets.joinpath("atlas.css").read_text(encoding="utf-8"),
             "/*{{JS}}*/": assets.joinpath("atlas.js").read_text(encoding="utf-8"),
             "{{DATA}}": script_json(atlas_payload(atlas, pattern, title))}
    pattern_re = re.compile("|".join(re.escape(k) for k in fills))  # one pass: data never fills a placeholder
    return pattern_re.sub(lambda m: fills[m.group(0)], assets.joinpath("atlas.html").read_text(encoding="utf-8"))


def atlas_html(atlas: dict, pattern: np.ndarray | None = None, *, title: str | None = None) -> str:
    """The head atlas as a notebook output."""
    title = title or f"musicgpt · head atlas, {atlas['n_layer']} layers x {atlas['n_head']} heads"
    height = min(ATLAS_HEIGHT_MAX, max(ATLAS_HEIGHT_MIN, 240 + 80 * atlas["n_layer"]))  # rows of tiles, no scroll
    return inline_page(atlas_page(atlas, pattern, title=title), height=height, title=title)


def _read(path: Path) -> Any:
    """An arcs.json or heads.json file, told apart by its content."""
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return read_arcs(path)  # its error names the file and the problem
    return HeadAtlas(read_heads(path)) if isinstance(head, dict) and head.get("format") == "musicgpt-heads" \
        else read_arcs(path)


def inline_html(x: Any, *, title: str | None = None) -> str:
    """The HTML a notebook shows for `x`: a Sample, an arcs.json dict or path, a head atlas (dict, pair or path)."""
    if isinstance(x, (str, os.PathLike)):
        return inline_html(_read(Path(x)), title=title or Path(x).name)
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], dict):  # head_atlas's (atlas, pattern)
        return atlas_html(x[0], x[1], title=title)
    if isinstance(x, dict) and x.get("format") == "musicgpt-heads":
        return atlas_html(x, getattr(x, "pattern", None), title=title)
    if isinstance(x, dict):
        validate_arcs(x)
        return arcs_html(x, title=title)
    if hasattr(x, "arcs") and hasattr(x, "to_wav"):
        return sample_html(x, title=title)
    raise MusicGPTError(f"show: cannot show a {type(x).__name__}: expected a generated Sample, an arcs.json "
                        "dict or file, or a head atlas (musicgpt.head_atlas, heads.json)")


def show(x: Any, *, title: str | None = None) -> None:
    """Show `x` inline in the running notebook (IPython): the viewer of a sample or arcs, or a head atlas."""
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display
    except ImportError:
        raise MusicGPTError("show: needs IPython (a Jupyter notebook); inline_html(x) gives the HTML") from None
    if get_ipython() is None:
        raise MusicGPTError("show: not in a notebook (no IPython shell is running); inline_html(x) gives the HTML, "
                            "musicgpt.viz.write_html(arcs, path) writes a page")
    display(HTML(f'<div class="musicgpt-output">{inline_html(x, title=title)}</div>'))  # a bare <iframe> warns
