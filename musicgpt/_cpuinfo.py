"""What CPU this is, read from /proc/cpuinfo (no torch import): for run records, benchmarks and kernel builds."""

from __future__ import annotations

import platform


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
