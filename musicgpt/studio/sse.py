"""Server-sent events: `event: NAME` and one line of JSON `data`, as the studio's stream writes them (no torch).

Event data are dicts of plain values and, for arcs, numpy columns: integer columns become JSON arrays of
integers, float columns arrays of numbers with 4 significant digits, the rounding arcs.json stores
(`musicgpt.arcs.format`), so a streamed weight parses to the very float of the finished file.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def _column(values: np.ndarray) -> str:
    if values.dtype.kind == "f":
        # '%.4g' is the format of arcs.json's rounding; its text is valid JSON (e.g. 0.1234, 1e-05)
        return "[" + ",".join(["%.4g" % v for v in values.tolist()]) + "]"
    return json.dumps(values.tolist(), separators=(",", ":"))


def to_json(data: dict[str, Any]) -> str:
    """One line of JSON; numpy columns written as described above."""
    columns = {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
    if not columns:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    plain = json.dumps({k: v for k, v in data.items() if k not in columns}, separators=(",", ":"), allow_nan=False)
    parts = [f"{json.dumps(k)}:{_column(v)}" for k, v in columns.items()]
    return plain[:-1] + ("," if plain != "{}" else "") + ",".join(parts) + "}"


def encode(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    """A batch of (name, data) events as SSE text."""
    return "".join(f"event: {name}\ndata: {to_json(data)}\n\n" for name, data in events).encode("utf-8")
