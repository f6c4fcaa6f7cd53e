"""Stopping a run cleanly: SIGINT or SIGTERM ask the loop to stop after the current step and write a checkpoint."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

__all__ = ["StopFlag"]


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: stopping after this step and writing a checkpoint "
              "(Ctrl-C again to abort without one)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def set(self) -> bool:
        return self.signal_name is not None


def threading_main() -> bool:
    return threading.current_thread() is threading.main_thread()
