"""What every benchmark report shares: provenance, atomic writes, peak-RSS probes, timing, FLOPs.

Imported by the benchmark scripts and by run_all.py (benchmarks/ is on sys.path when a
script in it runs).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------- provenance


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "faiss", "sklearn", "pytorch_metric_learning"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            versions[name] = None
    return versions


def thread_settings(threads: int | None = None) -> dict:
    """This process's thread settings, or those given to a child process run with `threads`
    (OMP_NUM_THREADS = MKL_NUM_THREADS = torch threads = `threads`)."""
    if threads is not None:
        return {"torch_threads": threads, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "cpu_count": os.cpu_count()}
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
    }


def provenance(command: list[str] | str, load_average_before, started: float | None = None,
               threads: int | None = None) -> dict:
    """Everything needed to judge a number later: code, libraries, machine, load, time.
    `threads`: the thread count a benchmark's own process ran with (default: this process's)."""
    from dmlutils.provenance import code_version

    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "git": code_version(),
        "versions": library_versions(),
        "threads": thread_settings(threads),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "load_average_before": [round(x, 2) for x in load_average_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "date": now.isoformat(timespec="seconds"),
        "wall_seconds": None if started is None else round(time.perf_counter() - started, 2),
        "command": command if isinstance(command, str) else " ".join(command),
    }


def provenance_line(prov: dict) -> str:
    """One markdown sentence saying where, when and with what a report was made."""
    git = prov["git"]
    commit = (git.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    versions = prov["versions"]
    libraries = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in ("torch", "numpy", "faiss"))
    threads = prov["threads"]
    return (
        f"Commit `{commit}`, {prov['date']}; {libraries}; {threads['torch_threads']} torch thread(s) "
        f"(OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}) on {threads['cpu_count']} x {prov['cpu_model']}; "
        f"1-minute load average {prov['load_average_before'][0]:.2f} before, "
        f"{prov['load_average_after'][0]:.2f} after"
        + (f"; took {prov['wall_seconds']:.0f} s" if prov.get("wall_seconds") is not None else "")
        + f". Command: `{prov['command']}`."
    )


# ------------------------------------------------------------------------ writing


def write_text_atomically(path: Path, text: str) -> None:
    from dmlutils.provenance import atomic_write_bytes  # the run records' writer: temp file, fsync, rename

    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_json_atomically(path: Path, data: dict) -> None:
    from dmlutils.provenance import _jsonable  # numpy numbers, tuples and paths, as in run records

    write_text_atomically(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


# ------------------------------------------------------------------ peak memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory of this process while the `with` block runs, above the RSS
    at its start (MiB). Resets the kernel's high-water mark (/proc/self/clear_refs, Linux
    >= 4.0) on entry; without it, falls back to the growth of ru_maxrss (which misses
    peaks below an earlier one: `probe` says which was used)."""

    def __enter__(self):
        import gc

        gc.collect()
        self.rss_before = _status_kib("VmRSS")
        self.maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            self.reset = self.rss_before is not None
        except OSError:
            self.reset = False
        return self

    def __exit__(self, *exc):
        if self.reset:
            peak = _status_kib("VmHWM")
            self.increase_mib = max(peak - self.rss_before, 0) / 1024
            self.peak_mib = peak / 1024
            self.probe = "VmHWM after clear_refs"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.increase_mib = max(peak - self.maxrss_before, 0) / 1024
            self.peak_mib = peak / 1024
            self.probe = "ru_maxrss difference"
        return False


# --------------------------------------------------------------------- fitting


def loglog_slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(size): the exponent a of t ~ c n^a."""
    import numpy as np

    sizes, seconds = np.asarray(sizes, dtype=float), np.asarray(seconds, dtype=float)
    if len(sizes) < 2 or np.any(sizes <= 0) or np.any(seconds <= 0):
        raise ValueError(f"a log-log fit needs at least two positive (size, time) points, got {list(zip(sizes, seconds))}")
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


# ---------------------------------------------------------------------- timing


def time_calls(call, count: int, warmup: int = 0) -> list[float]:
    """Seconds of each of `count` calls of `call()`, after `warmup` untimed-in-the-result calls."""
    times = []
    for _ in range(warmup + count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def time_loop(batches, step, warmup: int = 0) -> list[float]:
    """Seconds of each iteration of `for batch in batches: step(*batch)`, timed from the end of
    one iteration to the end of the next, so producing the batch (a feeder's gather, a
    loader's decoding) counts; the first `warmup` iterations dropped."""
    times = []
    last = time.perf_counter()
    for batch in batches:
        step(*batch)
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times[warmup:]


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """This CPU's fp32 matrix-multiply throughput at the current thread count (GFLOP/s):
    the ceiling a convolution network's step can approach."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def forward_flops(forward, *inputs) -> float:
    """Floating-point operations of `forward(*inputs)` without autograd, counted by torch's
    FlopCounterMode. A training step costs about 3x its forward (backward = input and weight
    gradients, about 2x the forward); FlopCounterMode's own backward count is not used: for
    depthwise (grouped) convolutions it counts as if they were dense (measured: 65x too many
    for a 64-channel 3x3 depthwise convolution)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(*inputs)
    return float(counter.get_total_flops())
