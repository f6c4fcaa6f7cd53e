"""The duet's clock: seconds since the session began, monotonic; tests inject a `FakeClock` they move by hand."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "MonotonicClock", "FakeClock"]


class Clock(Protocol):
    """Anything with `now()`: seconds on the session clock, never going back."""

    def now(self) -> float:
        """The current time in seconds."""


class MonotonicClock:
    """`time.monotonic()`, counted from when the clock was made (wall-clock changes do not move it)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        """Seconds since this clock was made."""
        return time.monotonic() - self.start


class FakeClock:
    """A clock that moves only when told: deterministic duets in tests and scripted replays."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = float(start)

    def now(self) -> float:
        """The time it was set to."""
        return self.time

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back (advance by {seconds!r})")
        self.time += float(seconds)
        return self.time

    def set(self, seconds: float) -> float:
        """Move to `seconds` (not earlier than now); returns it."""
        return self.advance(float(seconds) - self.time)
