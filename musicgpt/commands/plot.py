"""`musicgpt plot RUN_DIR`: the train/valid curves of a training run as a PNG."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of `musicgpt plot`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (holds metrics.csv)")
    parser.add_argument("--out", "-o", metavar="PNG", help="output image (default: RUN_DIR/curves.png)")
    parser.add_argument("--smooth", type=float, default=0.9, help="EMA factor for the train loss (0: none)")


def run(args: argparse.Namespace) -> int:
    """Draw the curves and print where they went."""
    from musicgpt.viz.curves import plot_curves

    out = plot_curves(args.run_dir, args.out, smooth=args.smooth)
    print(out)
    return 0
