"""Where and how training and evaluation run: the device, bf16 autocast, and the DDP process group (torch).

`pick_device("auto")` is CUDA when there is one, else the CPU. `autocast_dtype` picks bf16 autocast
where it is faster (CUDA GPUs with bf16, CPUs with AMX), else None (fp32). Under `torchrun`,
`setup_distributed` joins the process group (gloo on CPU, NCCL on CUDA) and says which rank this
is; without it, one process. `hardware` describes the machine for a run's run.json, `cpu_model` and
`cpu_flags` the CPU (read from /proc/cpuinfo) for run records, benchmarks and kernel builds.
`available_memory` says how much memory a device has free (the host: MemAvailable, within the process's
cgroup limit), so that a size that cannot fit is refused before it is allocated (`check_memory`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from musicgpt.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["cpu_model", "cpu_flags", "Dist", "setup_distributed", "teardown", "pick_device", "autocast_dtype",
           "cpu_has_amx", "hardware", "available_memory", "check_memory", "format_bytes"]


def _cpuinfo_field(*names: str) -> str | None:
    """The value of the first /proc/cpuinfo line whose key is one of `names`, or None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in names:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, else what platform reports."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The CPU's feature flags (x86 'flags', Arm 'Features'), space-separated; '' when unknown."""
    return _cpuinfo_field("flags", "Features") or ""


def available_memory(device: "str | torch.device" = "cpu") -> int | None:
    """Bytes the device can still allocate: a CUDA device's free memory (its total before this process uses
    CUDA: asking for the free memory would open a context on it), else the host's MemAvailable (or free pages),
    capped by the cgroup's limit when one is set; None when unknown."""
    if str(device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return None
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None and torch.cuda.is_initialized() else index or 0
        if torch.cuda.is_initialized():
            return int(torch.cuda.mem_get_info(index)[0])
        return int(torch.cuda.get_device_properties(index).total_memory)
    host = _meminfo_available()
    room = _cgroup_room()
    known = [n for n in (host, room) if n is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What the process's cgroup (v2) still lets it use, or None without a limit."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="utf-8") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="utf-8") as f:
            used = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def check_memory(needed: int, what: str, device: "str | torch.device" = "cpu") -> None:
    """A ConfigError when `needed` bytes cannot fit in the device's available memory; `what` names the thing
    and its size ("model: 1.1e12 parameters"), the message adds what it needs and what there is."""
    free = available_memory(device)
    if free is not None and needed > free:
        where = "this machine" if not str(device).startswith("cuda") else str(device)
        raise ConfigError(f"{what} would need at least {format_bytes(needed)} of memory; {where} has "
                          f"{format_bytes(free)} available")


def format_bytes(n: float) -> str:
    """A byte count for people: 512 B, 3.4 MB, 13.2 TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size and device."""

    rank: int = 0
    world: int = 1
    device: "torch.device | None" = None  # None: the CPU

    def __post_init__(self):
        if self.device is None:
            import torch  # imported on use: cpu_model and cpu_flags serve torch-free benchmarks too

            object.__setattr__(self, "device", torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA); else one process."""
    import torch
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, device=device)


def hardware(device: torch.device, precision: str = "auto") -> dict[str, Any]:
    """What a run trains on, for its run.json (model cards cite it): device, GPU, CPU, autocast, torch."""
    import torch
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    amp = autocast_dtype(precision, device)
    return {"device": device.type, "gpu": gpu, "cpu": cpu_model(),
            "autocast": str(amp).removeprefix("torch.") if amp is not None else None,
            "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def pick_device(name: str) -> torch.device:
    """'auto' (CUDA when available, else CPU) or an explicit torch device name, checked."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but no CUDA device is available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked for, or under 'auto' where it is fast (CUDA with bf16, CPUs with AMX); else None (fp32)."""
    import torch
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        if precision == "auto":  # without AMX bf16 matmuls are no faster than fp32 on a CPU
            supported = supported and cpu_has_amx()
    if precision == "bf16" and not supported:
        raise ConfigError(f"train.precision: bf16 is not supported on {device}; use fp32 or auto")
    return torch.bfloat16 if supported else None


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (where bf16 matmuls beat fp32)."""
    import torch
    init_amx = getattr(torch._C._cpu, "_init_amx", None)
    try:
        return bool(init_amx()) if init_amx is not None else False
    except RuntimeError:
        return False


def teardown() -> None:
    """Leave the process group, if any."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
