"""Choosing arcs to draw: one query note's arcs by layer, head, weight and rank (no torch; the viewer's rule)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def filter_arcs(
    arcs: Iterable[Mapping[str, Any]],
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    top: int | None = None,
    threshold: float = 0.0,
) -> list[dict]:
    """Of one query note's arcs: those in the chosen layers and heads with weight >= threshold, the
    `top` heaviest per (layer, head) (ties: lower key first); sorted by (layer, head, -weight, key)."""
    layers = None if layers is None else set(layers)
    heads = None if heads is None else set(heads)
    chosen = [
        a for a in arcs
        if (layers is None or a["layer"] in layers)
        and (heads is None or a["head"] in heads)
        and a["weight"] >= threshold
    ]
    chosen.sort(key=lambda a: (a["layer"], a["head"], -a["weight"], a["key"]))
    if top is None:
        return chosen
    kept: list[dict] = []
    count: dict[tuple[int, int], int] = {}
    for a in chosen:
        lh = (a["layer"], a["head"])
        count[lh] = count.get(lh, 0) + 1
        if count[lh] <= top:
            kept.append(a)
    return kept


def select_arcs(
    d: Mapping[str, Any],
    note: int,
    *,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    top: int | None = None,
    threshold: float = 0.0,
) -> list[dict]:
    """The arcs a viewer draws for query `note` (the same rule as the HTML viewer; see filter_arcs)."""
    mine = [a for a in d["arcs"] if a["query"] == note]
    return filter_arcs(mine, layers=layers, heads=heads, top=top, threshold=threshold)


def arcs_by_query(d: Mapping[str, Any]) -> dict[int, list[dict]]:
    """Arcs grouped by query note id (notes without arcs are absent)."""
    groups: dict[int, list[dict]] = {}
    for a in d["arcs"]:
        groups.setdefault(a["query"], []).append(a)
    return groups
