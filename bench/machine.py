"""What machine a benchmark ran on, for every results file: CPU, cores, AMX, torch, Python, date, load average.

One description, `machine_info()`, in every benchmark's JSON (as "machine", or "machine_start" and
"machine_end" around a long run). The report and the model card also read the older files, which say
"cpus" for "cores" and "cpu" for "cpu_model". The CPU is read through musicgpt.device (which imports torch).
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

from musicgpt.device import cpu_flags, cpu_model

CAVEAT = ("The machine's speed drifts 2-4x within minutes (other jobs share its cores; load averages are "
          "recorded): compare ratios of runs interleaved in one process, not absolute numbers across runs "
          "or machines.")
NO_GPU = "CPU figures only (GPU figures: bench/gpu.py)"


def torch_version() -> str | None:
    """The installed torch version, read from package metadata."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def machine_info(*, torch_details: bool = False) -> dict:
    """A JSON-ready description of this machine at this moment.

    torch_details: also torch's CPU capability (the vector instructions its kernels use) and the GPU's name
    (None without one), for benchmarks that run torch.
    """
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    info = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in cpu_flags().split(),
            "torch": torch_version(), "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_average": load}
    if torch_details:
        import torch

        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info
