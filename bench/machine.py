"""What machine a benchmark ran on: CPU model, cores, torch, date, load average (no torch import needed)."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

from musicgpt.device import cpu_model  # noqa: F401  (part of this module's interface)

CAVEAT = ("The machine's speed drifts 2-4x within minutes (other jobs share its cores; load averages are "
          "recorded): compare ratios of runs interleaved in one process, not absolute numbers across runs "
          "or machines.")
NO_GPU = "CPU figures only (GPU figures: bench/gpu.py)"


def torch_version() -> str | None:
    """The installed torch version, read from package metadata (cheap: torch is not imported)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """A JSON-ready description of this machine at this moment."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch": torch_version(),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": load}
