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
    from pathlib import Path

    from musicgpt.training.log import read_metrics
    from musicgpt.viz.curves import plot_curves

    out = plot_curves(args.run_dir, args.out, smooth=args.smooth)
    rows = read_metrics(Path(args.run_dir) / "metrics.csv")
    n_train = sum(r["train_loss"] is not None for r in rows)
    n_valid = sum(r["valid_nll"] is not None for r in rows)
    last = max((r["step"] for r in rows), default=0)
    print(f"wrote {out} ({n_train} train and {n_valid} valid points, steps up to {last})")
    return 0
