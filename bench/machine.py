"""What machine a benchmark ran on: CPU model, cores, torch, date, load average (no torch import needed)."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

CAVEAT = ("The machine's speed drifts 2-4x within minutes (other jobs share its cores; load averages are "
          "recorded): compare ratios of runs interleaved in one process, not absolute numbers across runs "
          "or machines.")
NO_GPU = "no GPU was lent to this task: CPU figures only"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
