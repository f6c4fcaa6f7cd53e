"""The optional tokens of a performance vocabulary: CONTROL tokens and the infilling sentinels and GAP (no torch).

`SpecialTokens` is mixed into `PerformanceTokenizer`; it reads the tokenizer's `controls`,
`_control_of` (the (name, value) of each CONTROL id, in order) and `ranges`.
"""

from __future__ import annotations

import numpy as np

from musicgpt.errors import ConfigError
from musicgpt.tokens.controls import KNOWN_CONTROLS, UNKNOWN

__all__ = ["SpecialTokens", "checked_controls"]


class SpecialTokens:
    """CONTROL ids by name and value, the sequence header, and the infilling tokens."""

    GAP_STEP = 0.5  # seconds per GAP bin
    GAP_BINS = 40  # GAP_0.5s .. GAP_20s; longer gaps take the last bin (the sampler's clock knows the exact gap)
    controls: dict[str, tuple[str, ...]]
    infill: bool
    _control_of: list[tuple[str, str]]

    def control_id(self, name: str, value: str) -> int:
        """The CONTROL id of name=value; a value the vocabulary lacks maps to the name's `unknown` when it has one."""
        if name not in self.controls:
            known = ", ".join(self.controls) or "none"
            raise ConfigError(f"control {name!r}: this tokenizer has no such control (it has: {known})")
        values = self.controls[name]
        if value not in values:
            folded = {v.casefold(): v for v in values}
            if str(value).casefold() in folded:
                value = folded[str(value).casefold()]
            elif UNKNOWN in values:
                value = UNKNOWN
            else:
                raise ConfigError(f"control {name}={value!r}: unknown value (known: {', '.join(values)})")
        return self.ranges["CONTROL"][0] + self._control_of.index((name, value))

    def header(self, controls: dict[str, str] | None) -> np.ndarray:
        """The CONTROL ids that open a sequence with these controls, in the tokenizer's order of names."""
        controls = dict(controls or {})
        ids = [self.control_id(name, controls.pop(name)) for name in list(self.controls) if name in controls]
        if controls:  # names this tokenizer lacks: control_id names them
            self.control_id(next(iter(controls)), "")
        return np.asarray(ids, np.int64)

    def control_of(self, token: int) -> tuple[str, str]:
        """(name, value) of a CONTROL id."""
        if "CONTROL" not in self.ranges or int(self.token_type(token)) != self.type_code("CONTROL"):
            raise ValueError(f"token {token} is not a CONTROL token")
        return self._control_of[int(self.token_value(token))]

    @property
    def suffix_id(self) -> int:
        """INFILL_SUFFIX: opens the suffix block of an infilling sequence."""
        return self._infill_range()[0]

    @property
    def prefix_id(self) -> int:
        """INFILL_PREFIX: closes the suffix block; the prefix follows."""
        return self._infill_range()[0] + 1

    def gap_id(self, seconds: float) -> int:
        """The GAP id of a gap of `seconds` (nearest bin of GAP_STEP, clipped to 1..GAP_BINS)."""
        self._infill_range()
        steps = int(np.clip(round(float(seconds) / self.GAP_STEP), 1, self.GAP_BINS))
        return self.ranges["GAP"][0] + steps - 1

    def _infill_range(self) -> tuple[int, int]:
        if not self.infill:
            raise ConfigError("this tokenizer has no infilling tokens (a model trained with infilling has them)")
        return self.ranges["INFILL"]


def checked_controls(controls) -> dict[str, tuple[str, ...]]:
    """The controls argument as {name: values}, checked: known names, non-empty unique string values."""
    if not controls:
        return {}
    if not isinstance(controls, dict):
        raise ConfigError(f"tokenizer controls: expected {{name: [values]}}, got {type(controls).__name__}")
    out = {}
    for name, values in controls.items():
        if name not in KNOWN_CONTROLS:
            raise ConfigError(f"tokenizer controls: unknown control {name!r} (known: {', '.join(KNOWN_CONTROLS)})")
        if (not isinstance(values, (list, tuple)) or not values or not all(isinstance(v, str) and v for v in values)
                or len(set(values)) != len(values)):
            raise ConfigError(f"tokenizer controls.{name}: expected a list of distinct non-empty strings")
        out[name] = tuple(values)
    return out
