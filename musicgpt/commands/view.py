"""`musicgpt view ARCS.json`: the self-contained HTML viewer, and/or a static PNG of one note's arcs.

`--png FILE --grid` draws the note's arcs as a layers x heads grid of small piano rolls; `--heads
heads.json` (a head atlas, `musicgpt heads`) names the heads in the page's model view and the grid.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from musicgpt.errors import MusicGPTError


def _int_list(text: str) -> list[int] | str:
    """'3', '0,2,5' or 'all'."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, a comma list or 'all', got {text!r}") from None


def default_html_path(arcs_path: Path) -> Path:
    """sample_00.arcs.json -> sample_00.html; other.json -> other.html."""
    name = arcs_path.name
    stem = name[: -len(".arcs.json")] if name.endswith(".arcs.json") else Path(name).stem
    return arcs_path.with_name(stem + ".html")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt view`."""
    parser.add_argument("arcs", type=Path, metavar="ARCS.json", help="an arcs.json file (musicgpt generate --arcs, musicgpt attend)")
    parser.add_argument("--out", type=Path, metavar="FILE.html",
                        help="where to write the HTML viewer (default: next to ARCS.json, NAME.html; "
                             "not written when only --png is given)")
    parser.add_argument("--title", help="page title (default: the file name)")
    parser.add_argument("--open", action="store_true", help="open the page in the default web browser")
    parser.add_argument("--heads", type=Path, metavar="HEADS.json",
                        help="a head atlas of the same model (musicgpt heads): its head names become the tooltips "
                             "of the model view (and the titles of --grid cells)")
    png = parser.add_argument_group("static PNG (piano roll + the arcs of one note)")
    png.add_argument("--png", type=Path, metavar="FILE.png", help="write a matplotlib rendering to FILE.png")
    png.add_argument("--note", type=int, metavar="ID",
                     help="query note id (default: a continuation note whose arcs reach the most notes)")
    png.add_argument("--layer", type=_int_list, default=None, metavar="L",
                     help="layer(s): 5, 0,2 or all (default: the last layer, as in the viewer)")
    png.add_argument("--head", type=_int_list, default=None, metavar="H", help="head(s): 3, 0,1 or all (default: all)")
    png.add_argument("--top", type=int, default=6, metavar="N", help="heaviest N arcs per layer and head (default: 6)")
    png.add_argument("--threshold", type=float, default=0.02, metavar="W", help="hide arcs lighter than W (default: 0.02)")
    png.add_argument("--full", action="store_true", help="draw the whole piece, not just the note's context")
    png.add_argument("--grid", action="store_true",
                     help="draw the note's arcs as a layers x heads grid of small piano rolls (--layer and --head "
                          "choose rows and columns; default all)")
    png.add_argument("--dpi", type=int, default=None, help="PNG resolution (default: 200, 150 with --grid)")


def run(args: argparse.Namespace) -> int:
    """Read and validate ARCS.json, then write the HTML viewer and/or the PNG."""
    from musicgpt.arcs.format import read_arcs
    from musicgpt.viz.viewer import write_html

    if args.top < 1:
        raise MusicGPTError(f"--top must be at least 1, got {args.top}")
    if not 0.0 <= args.threshold <= 1.0:
        raise MusicGPTError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.grid and args.png is None:
        raise MusicGPTError("--grid draws a PNG: give --png FILE.png too")
    d = read_arcs(args.arcs)
    if args.heads is not None:
        from musicgpt.viz.heads import head_names_for, read_heads

        d["head_names"] = head_names_for(read_heads(args.heads), d, source=str(args.heads))
    summary = (f"{len(d['notes'])} notes, {len(d['arcs'])} arcs, "
               f"{d['n_layer']} layers x {d['n_head']} heads")
    if args.png is not None:
        from musicgpt.viz.png import render_grid_png, render_png

        layers = list(range(d["n_layer"])) if args.layer == "all" else args.layer
        heads = None if args.head == "all" else args.head
        if args.grid:
            note = render_grid_png(d, args.png, args.note, layers=layers, heads=heads, top=args.top,
                                   threshold=args.threshold, full=args.full, dpi=args.dpi or 150)
        else:
            note = render_png(d, args.png, args.note, layers=layers, heads=heads, top=args.top,
                              threshold=args.threshold, full=args.full, dpi=args.dpi or 200)
        print(f"wrote {args.png} ({'no arcs to draw' if note is None else f'note {note}'}"
              f"{'; layers x heads grid' if args.grid else ''}; {summary})")
    if args.out is not None or args.png is None:
        out = args.out or default_html_path(args.arcs)
        write_html(d, out, title=args.title or args.arcs.name, source=str(args.arcs))
        print(f"wrote {out} ({summary}; open it in any browser, it needs no network)")
        if args.open:
            import webbrowser

            webbrowser.open(out.resolve().as_uri())
    return 0
