"""The comparison as a text table and as metrics.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from musicgpt._io import atomic_write_text
from musicgpt.metrics import key, sets, timing
from musicgpt.metrics.features import FEATURES
from musicgpt.metrics.folder import FolderFeatures

REPORT_VERSION = 1


def _pm(mean: float, std: float) -> str:
    return f"{mean:.3g}±{std:.2g}"


def format_table(comparison: dict, n_generated: int, n_reference: int) -> str:
    """One row per feature: values and distances as mean±std, then overlap and KL."""
    header = ["feature", f"generated n={n_generated}", f"reference n={n_reference}",
              "intra gen", "intra ref", "inter", "overlap", "KL"]
    rows = [header]
    for name, c in comparison.items():
        values = [
            _pm(float(c[s]["mean"][0]), float(c[s]["std"][0])) if c["kind"] == "scalar" else "-"
            for s in ("generated", "reference")
        ]
        distances = [_pm(c[d]["mean"], c[d]["std"]) for d in ("intra_generated", "intra_reference", "inter")]
        rows.append([name, *values, *distances, f"{c['overlap']:.3f}", f"{c['kl']:.3f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines += [
        "",
        "generated/reference: mean±std of the feature over pieces (scalars only);",
        "intra/inter: mean±std of pairwise distances within each set / across the sets;",
        "overlap, KL: intra-set(reference) vs inter-set distance densities "
        "(overlap 1, KL 0: generated pieces lie as close to the reference as it lies to itself).",
    ]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _scalar_or_list(array: np.ndarray):
    return float(array[0]) if array.shape == (1,) else array.tolist()


def analysis_settings() -> dict:
    """The constants that define the features, recorded so that a metrics.json can be interpreted later."""
    return {
        "onset_tolerance_s": timing.ONSET_TOLERANCE,
        "time_bin_edges_s": timing.TIME_EDGES,
        "velocity_bin_edges": timing.VELOCITY_EDGES,
        "key_method": key.KEY_METHOD,
        "key_window_s": key.KEY_WINDOW,
        "key_hop_s": key.KEY_HOP,
        "key_min_window_notes": key.MIN_WINDOW_NOTES,
        "kde_grid_points": sets.N_GRID,
    }


def report_json(
    comparison: dict, generated: FolderFeatures, reference: FolderFeatures, settings: dict | None = None
) -> dict:
    """The metrics.json document: both sets (files, skipped), settings, per-feature comparison, per-piece features."""

    def describe(folder: FolderFeatures) -> dict:
        return {
            "directory": str(folder.directory),
            "files": [str(p) for p in folder.files],
            "skipped": [{"path": str(p), "reason": r} for p, r in folder.skipped],
        }

    features = {}
    for name, c in comparison.items():
        features[name] = {
            "kind": c["kind"],
            "unit": FEATURES[name].unit,
            "description": FEATURES[name].description,
            "generated": {k: _scalar_or_list(v) for k, v in c["generated"].items()},
            "reference": {k: _scalar_or_list(v) for k, v in c["reference"].items()},
            **{d: c[d] for d in ("intra_generated", "intra_reference", "inter")},
            **{k: c[k] for k in ("overlap", "kl", "overlap_generated", "kl_generated")},
        }
    return _jsonable({
        "version": REPORT_VERSION,
        "generated": describe(generated),
        "reference": describe(reference),
        "settings": {**(settings or {}), **analysis_settings()},
        "features": features,
        "pieces": {
            "generated": [{"file": str(f), **p} for f, p in zip(generated.files, generated.pieces)],
            "reference": [{"file": str(f), **p} for f, p in zip(reference.files, reference.pieces)],
        },
    })


def write_json(document: dict, path: str | Path) -> Path:
    """Write `document` as indented JSON, through a temporary file so a reader never sees half of it."""
    text = json.dumps(document, indent=1)
    # a list of plain numbers goes on one line: histograms stay readable, the file stays short
    text = re.sub(r"\[\s*([-+0-9.eE]+(?:,\s*[-+0-9.eE]+)*)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m[1]) + "]", text)
    return atomic_write_text(path, text + "\n")
