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


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(*cells: object, widths: tuple[int, ...] = (44, 14, 14, 14)) -> str:
    out = []
    for cell, width in zip(cells, widths, strict=False):
        text = f"{cell:.1f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width))
    return "".join(out).rstrip()
