"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def time_call(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> dict[str, float]:
    """Median, p99 and minimum wall time of ``fn()`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return {"median": statistics.median(times), "p99": p99, "min": times[0]}


def cpu_line() -> str:
    """``CPU: <lscpu model name>; <AVX/AMX flags>; <n> CPU(s); TF_ENABLE_ONEDNN_OPTS=<value>``:
    every published figure names the CPU it was measured on (the flags from ``/proc/cpuinfo``,
    without importing TensorFlow)."""
    model, flags = "unknown CPU", []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = sorted(f for f in value.split() if f.startswith(("avx", "amx")))
    except OSError:
        pass
    return (f"CPU: {model}; {' '.join(flags) or 'no AVX flags read'}; {os.cpu_count()} CPU(s); "
            f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(*cells: object, widths: tuple[int, ...] = (44, 14, 14, 14)) -> str:
    out = []
    for cell, width in zip(cells, widths, strict=False):
        text = f"{cell:.1f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width))
    return "".join(out).rstrip()
