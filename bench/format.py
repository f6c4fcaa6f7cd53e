"""Numbers, ratios, durations, paths and Markdown tables as the benchmark report and the model card print them.

Two styles of number, one per document: the report shows significant digits (`fmt`, '-' when missing), the
model card fixed decimals and whole counts (`fixed`, `count`, 'n/a' when missing).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def fmt(x: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands separated), or '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != 0 and abs(x) >= 10 ** digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def fixed(value: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals, or 'n/a' for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def count(value: float | None) -> str:
    """A whole number with thousands separated, or 'n/a' for None."""
    return "n/a" if value is None else f"{int(value):,}"


def duration(seconds: float | None) -> str:
    """Minutes under an hour ('42.0 min'), else hours ('2.50 h'); 'n/a' for None."""
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def rx(x: float | None) -> str:
    """A ratio as '1.43x'."""
    return "-" if x is None else f"{x:.2f}x"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table and the blank line after it; cells that are not strings are formatted with fmt."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in row) + " |")
    return lines + [""]


def piece_name(group: str) -> str:
    """A piece's manifest group as a name: 'Composer|Title_words' -> 'Composer: Title words'."""
    return group.replace("|", ": ").replace("_", " ")


def current_command(command: str) -> str:
    """A recorded command as it runs today: results measured before bench/ and tools/ became packages say
    `python bench/NAME.py ...`, the same program with the same arguments is `python -m bench.NAME ...`."""
    return re.sub(r"^python (bench|tools)/(\w+)\.py\b", r"python -m \1.\2", command)


def shown(path: str | Path) -> str:
    """A path relative to the repository when it lies inside it (no local absolute paths in shipped files)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
