"""Keep freed memory in the process, so a training step does not fault its pages in again.

PyTorch's CPU tensors come from `malloc`. glibc serves a block above its mmap threshold
(128 KiB, rising to at most 32 MiB as it adapts) with a fresh `mmap` and hands it back to
the kernel on `free`. A whole-backbone step allocates and frees gigabytes of activations
and gradients, so every step the kernel faults in and zeroes those pages again: on this
project's 2-core machine the cpu_full step spent more CPU time in the kernel than in
PyTorch, with millions of page faults a step.

`keep_freed_memory()` asks glibc (`mallopt`) to serve every block from its heap
(`M_MMAP_MAX` 0) and to keep up to 2 GiB of freed memory at the heap's top instead of
returning it (`M_TRIM_THRESHOLD`). After the first step the process re-uses its own pages:
no page faults and no system time. `benchmarks/bench_whole_backbone.py` measures the step
both ways in fresh processes: its time, CPU time, page faults and peak memory
(results/benchmarks/whole_backbone.md).

The allocator changes no number a run computes. It applies to the whole process, from the
call on, and cannot be taken back, so the engine calls it when a run starts on the CPU;
`DML_KEEP_FREED_MEMORY=0` in the environment leaves glibc's defaults (the benchmark's
"before"). Elsewhere than glibc (macOS, Windows, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

ENVIRONMENT_SWITCH = "DML_KEEP_FREED_MEMORY"
# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes a C int: 2 GiB, the largest it accepts

_state: dict[str, bool] = {}


def is_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process (see the module docstring); True if it
    now does. Idempotent; does nothing (False) when `DML_KEEP_FREED_MEMORY=0` or outside glibc."""
    if "applied" not in _state:
        _state["applied"] = _apply()
    return _state["applied"]


def _apply() -> bool:
    if os.environ.get(ENVIRONMENT_SWITCH, "1").strip() == "0" or not is_glibc():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success and 0 on a value it refuses
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def describe() -> str:
    """How this process allocates, for a record's `environment`: its wall time depends on it."""
    if _state.get("applied"):
        return "glibc malloc, freed memory kept (dmlutils.engine.allocator)"
    return "the platform's malloc, defaults"
