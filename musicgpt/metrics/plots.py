"""PNG plots of a comparison: distance KDEs per feature, mean histograms side by side, transition matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from musicgpt._io import atomic_savefig
from musicgpt.errors import printable
from musicgpt.metrics.features import BIN_LABELS, FEATURES
from musicgpt.metrics.pitch import PITCH_CLASS_NAMES

GENERATED, REFERENCE, INTER = "tab:orange", "tab:blue", "tab:green"


def plot_kde(comparison: dict, path: str | Path, title: str | None = None) -> Path:
    """One panel per feature: KDEs of intra-set (generated, reference) and inter-set distances."""
    names = list(comparison)
    cols = 3
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        c = comparison[name]
        curves = c["curves"]
        ax.plot(curves["grid"], curves["intra_reference"], color=REFERENCE, label="intra-set reference")
        ax.plot(curves["grid"], curves["intra_generated"], color=GENERATED, ls="--", label="intra-set generated")
        ax.plot(curves["grid"], curves["inter"], color=INTER, label="inter-set")
        ax.fill_between(curves["grid"], np.minimum(curves["intra_reference"], curves["inter"]), color=INTER, alpha=0.15)
        ax.set_title(f"{name}\noverlap {c['overlap']:.2f}   KL {c['kl']:.2f}", fontsize=9)
        ax.set_xlabel(f"distance ({FEATURES[name].unit})", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    for ax in axes[len(names):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=9)
    return _save(fig, path, title)


def plot_histograms(comparison: dict, path: str | Path, title: str | None = None) -> Path:
    """Mean pitch-class, IOI, duration and velocity histograms of both sets side by side (bars: ±1 std)."""
    names = list(BIN_LABELS)
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    width = 0.4
    for ax, name in zip(axes, names):
        labels = BIN_LABELS[name]
        x = np.arange(len(labels))
        for offset, key, color in ((-width / 2, "reference", REFERENCE), (width / 2, "generated", GENERATED)):
            stats = comparison[name][key]
            ax.bar(x + offset, stats["mean"], width, yerr=stats["std"], color=color, label=key,
                   error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.3"})
        ax.set_xticks(x, labels, rotation=0 if name == "pitch_class_histogram" else 45, ha="center" if
                      name == "pitch_class_histogram" else "right", fontsize=8)
        ax.set_title(FEATURES[name].description, fontsize=10)
        ax.set_ylabel("share of notes" if name != "ioi_histogram" else "share of intervals", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    return _save(fig, path, title)


def plot_transitions(comparison: dict, path: str | Path, title: str | None = None) -> Path:
    """Mean pitch-class transition matrices of both sets as heatmaps on one color scale."""
    c = comparison["pitch_class_transitions"]
    matrices = {key: np.asarray(c[key]["mean"]).reshape(12, 12) for key in ("reference", "generated")}
    vmax = max(m.max() for m in matrices.values()) or 1.0
    fig = Figure(figsize=(11, 5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (key, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, cmap="magma", vmin=0, vmax=vmax)
        ax.set_xticks(range(12), PITCH_CLASS_NAMES, fontsize=8)
        ax.set_yticks(range(12), PITCH_CLASS_NAMES, fontsize=8)
        ax.set_xlabel("to pitch class")
        ax.set_ylabel("from pitch class")
        ax.set_title(f"{key}: successive-note pitch-class transitions", fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.8, label="share of transitions")
    return _save(fig, path, title)


def _save(fig: Figure, path: str | Path, title: str | None) -> Path:
    if title:
        fig.suptitle(printable(title), fontsize=10)
    return atomic_savefig(fig, path, dpi=110)
