"""Training curves as a PNG: train loss (raw and smoothed) and valid NLL against steps (`musicgpt plot`; no torch).

Reads RUN_DIR/metrics.csv (musicgpt.training.log). No pyplot: the figure is built on matplotlib's
object API, so this never touches a notebook's global state or needs a display.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from musicgpt._io import atomic_savefig
from musicgpt.errors import MusicGPTError, printable
from musicgpt.training.log import read_metrics

__all__ = ["plot_curves"]


def plot_curves(run_dir: str | Path, out: str | Path | None = None, smooth: float = 0.9) -> Path:
    """Draw train loss (raw and smoothed) and valid NLL against steps; returns the PNG path."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.csv")
    train = [(r["step"], r["train_loss"]) for r in rows if r["train_loss"] is not None]
    valid = [(r["step"], r["valid_nll"]) for r in rows if r["valid_nll"] is not None]
    if not train and not valid:
        raise MusicGPTError(f"{run_dir / 'metrics.csv'}: no train or valid values to plot yet")
    out = Path(out) if out is not None else run_dir / "curves.png"

    fig = Figure(figsize=(8, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        alpha = min(smooth, max(0.0, 1.0 - 10.0 / len(losses)))  # short runs: lighter smoothing, less lag
        ax.plot(steps, _ema(losses, alpha), color="tab:blue", linewidth=1.6, label="train loss (smoothed)")
    if valid:
        steps, nll = zip(*valid)
        ax.plot(steps, nll, color="tab:orange", marker="o", markersize=3.5, linewidth=1.6, label="valid NLL")
        best = min(range(len(nll)), key=nll.__getitem__)
        ax.annotate(f"best {nll[best]:.3f}", (steps[best], nll[best]), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=8, color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("nats per event")
    ax.set_title(printable(run_dir.resolve().name))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return atomic_savefig(fig, out)


def _ema(values, alpha: float) -> list[float]:
    """Exponential moving average with bias correction, so the first points are not dragged to 0."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha**i) if alpha > 0 else v)
    return out
