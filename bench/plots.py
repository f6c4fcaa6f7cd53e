"""The report's PNG plots (matplotlib, Agg backend), written atomically and without a version stamp.

`drawing(False)` turns every plot into a no-op (tests that check the report's text only).
"""

from __future__ import annotations

from pathlib import Path

from musicgpt._io import atomic_savefig

_DRAW = [True]


def drawing(on: bool) -> None:
    """Draw the plots (True) or skip them (False) from now on."""
    _DRAW[0] = on


def _pyplot():
    """matplotlib.pyplot with the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(path: Path, curves: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
               logx: bool = False, vline: int | None = None) -> None:
    """One line per curve (label -> (xs, ys)), markers when there are few points; an optional vertical mark."""
    if not _DRAW[0] or not curves:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    markers = ["o", "s", "^", "D"]
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        few = len(xs) < 12
        ax.plot(xs, ys, marker=markers[i % len(markers)] if few else None, markersize=9 - 2 * i if few else None,
                label=label)
    if logx:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for xs, _ in curves.values() for x in xs})
        if len(ticks) <= 8:
            ax.set_xticks(ticks, [str(t) for t in ticks])
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_bars(path: Path, names: list[str], values: list[float | None], title: str, ylabel: str) -> None:
    """One bar per name (missing values as 0), with a dotted line at 1 (the baseline of a ratio)."""
    if not _DRAW[0]:
        return
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax.bar(names, [v or 0 for v in values], color="#4c72b0")
    ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set(title=title, ylabel=ylabel)
    _save(fig, path)


def plot_grouped(path: Path, names: list[str], groups: dict[str, list[float]], ylabel: str) -> None:
    """Bars grouped by name, one colour per group, on a 0-1 scale."""
    if not _DRAW[0]:
        return
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    width = 0.8 / len(groups)
    x = np.arange(len(names))
    for i, (label, values) in enumerate(groups.items()):
        ax.bar(x + i * width, values, width, label=label)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, ylim=(0, 1))
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    # no version stamp: re-renders of the same data give the same bytes
    atomic_savefig(fig, path, make_parents=True, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
