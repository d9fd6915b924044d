"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import math
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


def conv_flop(op: object) -> int:
    """Multiply-add FLOPs (x2) of one traced graph operation: ``2 x output voxels x kernel
    volume x C_in x C_out`` for a convolution, ``2 x input voxels x kernel volume x C_in x
    C_out`` for a transposed one (every input voxel meets the whole kernel), 0 for the rest."""
    if op.type in ("Conv2D", "Conv3D"):  # output [B, *S, C_out], kernel [*k, C_in, C_out]
        return 2 * math.prod(op.outputs[0].shape[:-1]) * math.prod(op.inputs[1].shape)
    if op.type in ("Conv2DBackpropInput", "Conv3DBackpropInputV2"):
        return 2 * math.prod(op.inputs[2].shape[:-1]) * math.prod(op.inputs[1].shape)
    return 0


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(*cells: object, widths: tuple[int, ...] = (44, 14, 14, 14)) -> str:
    out = []
    for cell, width in zip(cells, widths, strict=False):
        text = f"{cell:.1f}" if isinstance(cell, float) else str(cell)
        out.append(text.ljust(width))
    return "".join(out).rstrip()
