"""PNGs of a model's learned embeddings, from numpy arrays (no torch): what `musicgpt info --plot` draws.

The arrays come from `musicgpt.model.inspect.embedding_arrays(model, note_on_ids)`; `plot_embeddings`
draws them all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from musicgpt._io import atomic_savefig

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return atomic_savefig(fig, path, dpi=110)


def relative_embeddings_png(emb: np.ndarray, layer: int, path: Path) -> Path:
    """One layer's relative embeddings (H, R, D), ascending distance: a heatmap per head and the norms."""
    h, r, d = emb.shape
    fig = Figure(figsize=(11, 1.2 * h + 2.6), layout="constrained")
    grid = fig.add_gridspec(h + 2, 1)
    limit = float(np.abs(emb).max()) or 1.0
    image = None
    for head in range(h):
        ax = fig.add_subplot(grid[head, 0])
        image = ax.imshow(emb[head].T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_ylabel(f"head {head}", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelbottom=head == h - 1, labelsize=7)
    fig.colorbar(image, ax=fig.axes, shrink=0.6, label="value")
    ax = fig.add_subplot(grid[h:, 0])
    distance = np.arange(r)
    for head in range(h):
        ax.plot(distance, np.linalg.norm(emb[head], axis=-1), lw=1, label=f"head {head}")
    ax.set_xlim(0, r - 1)
    ax.set_xlabel("distance i - j (tokens); the last one also stands for every longer distance")
    ax.set_ylabel("‖e‖")
    ax.legend(ncol=min(h, 8), fontsize=7, loc="upper right")
    fig.suptitle(f"layer {layer}: relative-position embeddings per head (dimension × distance)")
    return _save(fig, path)


def note_on_similarity_png(emb: np.ndarray, pitches: np.ndarray, path: Path) -> Path:
    """Cosine similarity of NOTE_ON token embeddings (P, C), one row per pitch in `pitches`."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    fig = Figure(figsize=(8.5, 7.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower", interpolation="nearest")
    ticks = [i for i, p in enumerate(pitches) if p % 12 == 0]
    labels = [f"C{p // 12 - 1}" for p in pitches[ticks]]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("NOTE_ON pitch")
    ax.set_ylabel("NOTE_ON pitch")
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
    # Octaves and fifths show up as diagonals parallel to the main one when the model has learned them.
    offsets = np.arange(1, 25)
    means = [np.mean(np.diagonal(sim, k)) for k in offsets]
    best = offsets[int(np.argmax(means))]
    ax.set_title(f"NOTE_ON embeddings: cosine similarity (most similar interval on average: {best} semitones)")
    return _save(fig, path)


def position_similarity_png(emb: np.ndarray, path: Path) -> Path:
    """Cosine similarity of absolute position embeddings (n_ctx, C)."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(unit @ unit.T, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower", interpolation="nearest")
    ax.set_xlabel("position")
    ax.set_ylabel("position")
    fig.colorbar(image, ax=ax, shrink=0.8, label="cosine similarity")
    ax.set_title("absolute position embeddings: cosine similarity")
    return _save(fig, path)


def plot_embeddings(arrays: dict, out_dir: str | Path) -> list[Path]:
    """Every PNG the arrays of `musicgpt.model.inspect.embedding_arrays` allow, into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [relative_embeddings_png(emb, layer, out_dir / f"relative_embeddings_layer{layer}.png")
               for layer, emb in enumerate(arrays.get("relative") or [])]
    if arrays.get("positions") is not None:
        written.append(position_similarity_png(arrays["positions"], out_dir / "position_embedding_similarity.png"))
    if arrays.get("note_on") is not None:
        written.append(note_on_similarity_png(arrays["note_on"], np.arange(len(arrays["note_on"])),
                                              out_dir / "note_on_similarity.png"))
    return written
