"""Controls: what a sequence may be told before its music (composer, density, dynamics), as values (no torch).

A control is a name and one of its values. The tokenizer gives each (name, value) one CONTROL token;
they open a sequence, in the tokenizer's order of names, before [BOS] (see
`musicgpt.tokens.performance`). Two kinds:

- metadata controls (`composer`): the value comes from the corpus (ASAP's and MAESTRO's CSVs, a
  folder's metadata.csv or parent folder). The vocabulary lists the values seen in the training
  split plus `unknown`, which stands for every other value.
- computed controls: the value is measured on the music itself, so every corpus has them, and a
  training crop is labelled by what it contains:
  `density`  NOTE_ONs per second: low < 10 <= medium < 15 <= high (ASAP crops of 1024 tokens: terciles 9.7 / 14.6)
  `dynamics` mean NOTE_ON velocity: soft < 62 <= medium < 70 <= loud (terciles 61.8 / 69.7)

A control left out of a sequence means "no control": training drops controls at random, so one model
generates with any subset of them, or none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

from musicgpt.errors import ConfigError

if TYPE_CHECKING:
    from musicgpt.tokens.base import Tokenizer

__all__ = ["UNKNOWN", "METADATA_CONTROLS", "COMPUTED_CONTROLS", "KNOWN_CONTROLS", "computed_values",
           "parse_controls", "controls_vocabulary", "describe_controls"]

UNKNOWN = "unknown"
METADATA_CONTROLS = ("composer",)
# name -> (values, lower edges of the values after the first): value = values[searchsorted(edges, x, 'right')]
COMPUTED_CONTROLS: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "density": (("low", "medium", "high"), (10.0, 15.0)),
    "dynamics": (("soft", "medium", "loud"), (62.0, 70.0)),
}
KNOWN_CONTROLS = (*METADATA_CONTROLS, *COMPUTED_CONTROLS)


def computed_values(ids: np.ndarray, tokenizer, names: Iterable[str] | None = None) -> dict[str, str]:
    """The computed controls of a stretch of music tokens (those that can be measured: none on silence)."""
    names = list(COMPUTED_CONTROLS if names is None else [n for n in names if n in COMPUTED_CONTROLS])
    ids = np.asarray(ids, np.int64)
    kind, value = tokenizer.token_type(ids), tokenizer.token_value(ids)
    on = kind == tokenizer.type_code("NOTE_ON")
    n_on = int(on.sum())
    if not n_on or not names:
        return {}
    out = {}
    if "density" in names:
        seconds = float(value[kind == tokenizer.type_code("TIME_SHIFT")].sum()) * tokenizer.time_step
        out["density"] = _bin("density", n_on / max(seconds, 1.0))  # a chord alone is not 'high' density
    if "dynamics" in names:
        is_velocity = kind == tokenizer.type_code("VELOCITY")
        last = np.maximum.accumulate(np.where(is_velocity, np.arange(len(ids)), -1))[on]  # VELOCITY before each NOTE_ON
        if (last >= 0).any():
            velocities = tokenizer.bin_to_velocity(value[last[last >= 0]])
            out["dynamics"] = _bin("dynamics", float(np.mean(velocities)))
    return out


def _bin(name: str, x: float) -> str:
    values, edges = COMPUTED_CONTROLS[name]
    return values[int(np.searchsorted(edges, x, side="right"))]


def parse_controls(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """{'composer': 'Chopin', ...} from 'name=value' strings (the CLI's --control) or a mapping."""
    if not items:
        return {}
    pairs = list(items.items()) if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        for item in items:
            name, sep, value = str(item).partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ConfigError(f"control {item!r}: expected NAME=VALUE, e.g. composer=Chopin or density=high")
            pairs.append((name, value))
    out: dict[str, str] = {}
    for name, value in pairs:
        name, value = str(name).strip().lower(), str(value).strip()
        if name in out:
            raise ConfigError(f"control {name!r} given twice")
        out[name] = value
    return out


def controls_vocabulary(names: Iterable[str], composers: Iterable[str] = ()) -> dict[str, list[str]]:
    """The tokenizer's `controls` argument for these control names: computed values, or metadata values + unknown."""
    names = list(names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"control(s) listed twice: {', '.join(twice)}")
    vocabulary: dict[str, list[str]] = {}
    for name in names:
        if name in COMPUTED_CONTROLS:
            vocabulary[name] = list(COMPUTED_CONTROLS[name][0])
        elif name == "composer":
            vocabulary[name] = sorted({c for c in composers if c and c != UNKNOWN}) + [UNKNOWN]
        else:
            raise ConfigError(f"control {name!r}: unknown (known: {', '.join(KNOWN_CONTROLS)})")
    return vocabulary


def describe_controls(tokenizer: Tokenizer) -> str:
    """What a model with this tokenizer can be steered with: each control and its values, and whether it infills."""
    controls = getattr(tokenizer, "controls", None) or {}  # tokenizers without control tokens have no such field
    lines = [f"{name}: {', '.join(values)}" for name, values in controls.items()] or \
        ["no controls (a plain model: train with data.controls to add them)"]
    if getattr(tokenizer, "infill", False):
        lines.append("infill: yes (--infill START END)")
    else:
        lines.append("infill: no (train with data.infill_rate > 0)")
    return "\n".join(lines)
