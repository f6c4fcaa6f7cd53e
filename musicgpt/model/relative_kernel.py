"""Build once, cache and load the fused relative-attention CPU kernel (`musicgpt/model/csrc/relative_attention.cpp`).

The kernel is compiled on first use with the system's C++ compiler against the installed torch (one
`c++` call, about 20 s on 2 cores; no ninja needed) into a cache directory keyed by the source, the
compiler command, torch's version and this CPU's instruction set, so later runs load it at once.
When there is no compiler, the build fails, or the BLAS it needs is missing, `load()` returns False
and musicgpt keeps its eager PyTorch path (`musicgpt.model.attention`), which computes the same thing.

Environment:
    MUSICGPT_ATTENTION_KERNEL   auto (default): use the kernel when it builds; native: require it
                                (an error if it cannot be built); eager: never build or use it;
                                sdpa: the SDPA-with-bias path (CUDA's default) on any device
    MUSICGPT_KERNEL_CACHE       where built kernels are kept (default ~/.cache/musicgpt/kernels)
    CXX                         the compiler (default c++)
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from musicgpt._io import atomic_write
from musicgpt.device import cpu_flags
from musicgpt.errors import ConfigError

SOURCE = Path(__file__).resolve().parent / "csrc" / "relative_attention.cpp"
MODES = ("auto", "native", "eager", "sdpa")


class KernelModeError(ConfigError, ValueError):
    """MUSICGPT_ATTENTION_KERNEL names no mode: a setting of the user's (the CLI says so in one line)."""


class KernelUnavailable(RuntimeError):
    """The fused kernel was required (MUSICGPT_ATTENTION_KERNEL=native) but cannot be built or loaded."""


def mode() -> str:
    """MUSICGPT_ATTENTION_KERNEL: 'auto', 'native', 'eager' or 'sdpa'."""
    value = os.environ.get("MUSICGPT_ATTENTION_KERNEL", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise KernelModeError(f"MUSICGPT_ATTENTION_KERNEL: {value!r} is not one of {', '.join(MODES)}")
    return value


def cache_dir() -> Path:
    """Directory of built kernels."""
    if os.environ.get("MUSICGPT_KERNEL_CACHE"):
        return Path(os.environ["MUSICGPT_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "musicgpt" / "kernels"


def _cpu_flags() -> str:
    """This CPU's feature flags: the build targets them (-march=native)."""
    return cpu_flags() or platform.processor() or platform.machine()


def compile_command(output: Path) -> list[str]:
    """The compiler call that builds the kernel into `output`."""
    from torch.utils import cpp_extension

    cmd = shlex.split(os.environ.get("CXX", "c++"))
    cmd += ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno",  # the last two let exp and max vectorize
            "-fopenmp", "-fPIC", "-shared", "-std=c++20", "-w",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        cmd.append("-mprefer-vector-width=512")  # full-width AVX-512 loops where the CPU has them
    cmd += [f"-I{p}" for p in cpp_extension.include_paths()]
    cmd += [str(SOURCE), "-o", str(output)]
    for lib_dir in cpp_extension.library_paths():
        cmd += [f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}"]
    return cmd + ["-lc10", "-ltorch_cpu"]


def library_path() -> Path:
    """Where the kernel built for this source, compiler command, torch and CPU lives."""
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(compile_command(Path("out.so"))).encode())
    key.update(f"{torch.__version__}|{sys.version_info[:2]}|{_cpu_flags()}".encode())
    return cache_dir() / f"relative_attention_{key.hexdigest()[:16]}.so"


def build(verbose: bool = True) -> Path:
    """Compile the kernel unless it is cached; safe when several processes try at once."""
    lib = library_path()
    if lib.exists():
        return lib
    cxx = shlex.split(os.environ.get("CXX", "c++"))[0]
    if shutil.which(cxx) is None:
        raise KernelUnavailable(f"no C++ compiler ({cxx!r} is not on PATH)")
    lib.parent.mkdir(parents=True, exist_ok=True)
    import fcntl  # POSIX only; elsewhere the build fails here and the eager path is used

    with open(lib.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same file
        if lib.exists():
            return lib
        if verbose:
            print(f"musicgpt: building the fused relative-attention kernel (once, cached in {lib.parent})",
                  file=sys.stderr, flush=True)
        t0 = time.perf_counter()

        def compile_into(tmp: Path) -> None:
            proc = subprocess.run(compile_command(tmp), capture_output=True, text=True)
            if proc.returncode:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
                raise KernelUnavailable(f"compiling {SOURCE.name} failed:\n{tail}")

        atomic_write(lib, compile_into, mode=0o777)  # a shared library keeps its execute bits
        if verbose:
            print(f"musicgpt: kernel built in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return lib


@functools.lru_cache(maxsize=1)
def _load() -> str | None:
    """Build and load the kernel; None when it works, else the reason it does not."""
    try:
        torch.ops.load_library(str(build()))
        if not torch.ops.musicgpt_relattn.available():
            return "torch's BLAS does not export sgemm_"
        _register_fakes()
    except Exception as exc:  # any failure means: keep the eager path
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.lru_cache(maxsize=1)
def _register_fakes() -> None:
    """Output shapes and strides of the ops without running them: torch.compile traces through them."""

    @torch.library.register_fake("musicgpt_relattn::forward")
    def _forward(q, k, v, rel, window, block):
        b, h, lq, d = q.shape
        return q.new_empty(b, lq, h, d).permute(0, 2, 1, 3), q.new_empty(b, h, lq)

    @torch.library.register_fake("musicgpt_relattn::backward")
    def _backward(grad_out, q, k, v, rel, out, lse, window, block):
        b, h, lq, d = q.shape
        lk = k.shape[2]
        drel = q.new_empty(rel.shape) if rel is not None else q.new_empty(0, 1, d)
        return (q.new_empty(b, lq, h, d).permute(0, 2, 1, 3), q.new_empty(b, lk, h, d).permute(0, 2, 1, 3),
                q.new_empty(b, lk, h, d).permute(0, 2, 1, 3), drel)


@torch.compiler.assume_constant_result  # torch.compile calls it while tracing and keeps the answer
def load() -> bool:
    """True when the fused kernel is usable in this process (building it the first time)."""
    m = mode()
    if m == "eager":
        return False
    reason = _load()
    if reason is None:
        return True
    if m == "native":
        raise KernelUnavailable(f"MUSICGPT_ATTENTION_KERNEL=native but the kernel is unavailable: {reason}")
    _warn_once(reason)
    return False


@functools.lru_cache(maxsize=1)
def _warn_once(reason: str) -> None:
    warnings.warn(f"musicgpt: fused relative-attention kernel unavailable, using the eager path ({reason})",
                  RuntimeWarning, stacklevel=3)


def forward(q, k, v, rel, window: int | None, block: int):
    """(out (B, H, Lq, D), lse (B, H, Lq) float32) from the kernel; rel (H, R, D) in q's dtype or None."""
    return torch.ops.musicgpt_relattn.forward(q, k, v, rel, window or 0, block)


def backward(grad_out, q, k, v, rel, out, lse, window: int | None, block: int):
    """float32 gradients (dq, dk, dv, drel) from the kernel."""
    return torch.ops.musicgpt_relattn.backward(grad_out, q, k, v, rel, out, lse, window or 0, block)
