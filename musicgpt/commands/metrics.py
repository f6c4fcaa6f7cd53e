"""`musicgpt metrics GENERATED_DIR REFERENCE_DIR`: mgeval-style comparison of two folders of MIDI files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt metrics`."""
    parser.add_argument("generated", type=Path, metavar="GENERATED_DIR",
                        help="folder of generated .mid/.midi files (searched recursively)")
    parser.add_argument("reference", type=Path, metavar="REFERENCE_DIR",
                        help="folder of reference .mid/.midi files (searched recursively)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write metrics.json, kde.png, histograms.png and transitions.png here")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N files of each folder, in sorted path order")
    parser.add_argument("--no-sustain", action="store_true",
                        help="ignore the sustain pedal when reading MIDI (for files whose pedal is never lifted)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Compute features of both folders, print the comparison table, write JSON and plots if --out."""
    from musicgpt.metrics.folder import folder_features
    from musicgpt.metrics.report import format_table, report_json, write_json
    from musicgpt.metrics.sets import compare_features

    settings = {"limit": args.limit, "sustain": not args.no_sustain}
    generated = folder_features(args.generated, progress=not args.quiet, **settings)
    reference = folder_features(args.reference, progress=not args.quiet, **settings)
    for folder in (generated, reference):
        for path, reason in folder.skipped:
            print(f"skipped {path}: {reason}", file=sys.stderr)
    comparison = compare_features(generated.pieces, reference.pieces)
    print(format_table(comparison, len(generated.pieces), len(reference.pieces)))
    if args.out is None:
        print("\n(pass --out DIR to write metrics.json and the plots)")
        return 0

    from musicgpt.metrics.plots import plot_histograms, plot_kde, plot_transitions

    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"generated: {args.generated} ({len(generated.pieces)} pieces)   "
             f"reference: {args.reference} ({len(reference.pieces)} pieces)")
    written = [
        write_json(report_json(comparison, generated, reference, settings), args.out / "metrics.json"),
        plot_kde(comparison, args.out / "kde.png", title),
        plot_histograms(comparison, args.out / "histograms.png", title),
        plot_transitions(comparison, args.out / "transitions.png", title),
    ]
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0
