"""Set against set, as in mgeval (Yang & Lerch 2018): distance distributions, their KDEs, overlap and KL.

For each feature: intra-set distances are all pairs within one set, inter-set distances all pairs across
the two sets (Euclidean for vectors, absolute difference for scalars). Each distance sample gets a
Gaussian kernel density estimate (Scott's bandwidth, reflected at 0 since distances are non-negative)
on one shared grid. The headline numbers compare the reference set's intra-set distances with the
inter-set distances: overlap area (1 = the generated pieces lie as close to the reference pieces as
those lie to each other) and KL(intra_reference || inter) in nats (0 = the same). Both are computed on
the grid as discrete distributions; KL floors probabilities at 1e-12. The same two numbers for the
generated set's intra-set distances are reported as overlap_generated and kl_generated.
"""

from __future__ import annotations

import numpy as np

from musicgpt.errors import MusicGPTError
from musicgpt.metrics.features import FEATURES, piece_features
from musicgpt.music.notes import Notes

N_GRID = 1024
MAX_KDE_SAMPLES = 4000  # larger samples are thinned to evenly spaced quantiles: same shape, bounded cost
KL_FLOOR = 1e-12


class TooFewPiecesError(MusicGPTError):
    """A set needs at least two pieces to have intra-set distances."""


def feature_matrix(pieces: list[dict], name: str) -> np.ndarray:
    """(n, d) values of one feature over a set of piece-feature dicts (d = 1 for scalars)."""
    return np.stack([np.asarray(p[name], dtype=np.float64).reshape(-1) for p in pieces])


def intra_set_distances(x: np.ndarray) -> np.ndarray:
    """Distances between every unordered pair of rows of (n, d) `x`: n (n - 1) / 2 values."""
    rows = [np.linalg.norm(x[i + 1 :] - x[i], axis=1) for i in range(len(x) - 1)]  # row by row: bounded memory
    return np.concatenate(rows) if rows else np.zeros(0)


def inter_set_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distances between every row of (n, d) `x` and every row of (m, d) `y`: n m values."""
    return np.concatenate([np.linalg.norm(y - row, axis=1) for row in x])


def _thinned(samples: np.ndarray) -> np.ndarray:
    if len(samples) <= MAX_KDE_SAMPLES:
        return samples
    return np.quantile(samples, np.linspace(0, 1, MAX_KDE_SAMPLES))


def scott_bandwidth(samples: np.ndarray, floor: float) -> float:
    """Scott's rule std * n^(-1/5), at least `floor` so that constant samples still get a kernel."""
    std = float(samples.std(ddof=1)) if len(samples) > 1 else 0.0
    return max(std * len(samples) ** -0.2, floor)


def gaussian_kde(samples: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Density of non-negative `samples` on a non-negative `grid`, Gaussian kernels reflected at 0.

    Distances cannot be negative: reflecting puts back the mass a plain kernel would leak below 0.
    """
    samples = _thinned(samples)
    density = np.zeros(len(grid))
    for mirrored in (samples, -samples):
        z = (grid[:, None] - mirrored[None, :]) / bandwidth  # (G, S)
        density += np.exp(-0.5 * z * z).sum(axis=1)
    return density / (len(samples) * bandwidth * np.sqrt(2 * np.pi))


def density_curves(samples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """KDEs of several distance samples on one shared grid: {"grid": ..., name: density, ...}."""
    pooled = np.concatenate(list(samples.values()))
    # a floor relative to the pooled spread keeps a constant sample a narrow bump, not a division by zero
    floor = max(1e-2 * float(pooled.std()), 1e-3 * float(np.abs(pooled).max()), 1e-9)
    bandwidths = {name: scott_bandwidth(s, floor) for name, s in samples.items()}
    pad = 4 * max(bandwidths.values())
    grid = np.linspace(max(pooled.min() - pad, 0.0), pooled.max() + pad, N_GRID)
    curves = {"grid": grid}
    for name, s in samples.items():
        curves[name] = gaussian_kde(s, grid, bandwidths[name])
    return curves


def overlap_area(p: np.ndarray, q: np.ndarray) -> float:
    """Shared mass of two densities on one grid, each normalized over the grid: 1 = identical, 0 = disjoint."""
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats of two densities on one grid, each normalized over the grid and floored."""
    p, q = (np.maximum(d / d.sum(), KL_FLOOR) for d in (p, q))
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def _summary(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std())}


def compare_feature(generated: np.ndarray, reference: np.ndarray) -> dict:
    """mgeval comparison of one feature given (n, d) generated and (m, d) reference values."""
    distances = {
        "intra_generated": intra_set_distances(generated),
        "intra_reference": intra_set_distances(reference),
        "inter": inter_set_distances(generated, reference),
    }
    curves = density_curves(distances)
    return {
        "generated": {"mean": generated.mean(axis=0), "std": generated.std(axis=0)},
        "reference": {"mean": reference.mean(axis=0), "std": reference.std(axis=0)},
        **{name: _summary(d) for name, d in distances.items()},
        "overlap": overlap_area(curves["intra_reference"], curves["inter"]),
        "kl": kl_divergence(curves["intra_reference"], curves["inter"]),
        "overlap_generated": overlap_area(curves["intra_generated"], curves["inter"]),
        "kl_generated": kl_divergence(curves["intra_generated"], curves["inter"]),
        "distances": distances,
        "curves": curves,
    }


def compare_features(generated: list[dict], reference: list[dict]) -> dict:
    """Compare two sets of `piece_features` dicts: {feature name: comparison dict} in FEATURES order."""
    for name, pieces in (("generated", generated), ("reference", reference)):
        if len(pieces) < 2:
            raise TooFewPiecesError(f"the {name} set has {len(pieces)} usable piece(s); at least 2 are needed")
    comparison = {}
    for name, feature in FEATURES.items():
        values = feature_matrix(generated, name), feature_matrix(reference, name)
        comparison[name] = {"kind": feature.kind, **compare_feature(*values)}
    return comparison


def compare_sets(generated: list[Notes], reference: list[Notes]) -> dict:
    """mgeval-style comparison of two sets of pieces, feature by feature (see `compare_features`)."""
    return compare_features([piece_features(n) for n in generated], [piece_features(n) for n in reference])
