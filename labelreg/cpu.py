"""What the CPU can do, read from ``/proc/cpuinfo`` (no TensorFlow), for the settings that
assume an instruction set: bfloat16 arithmetic is fast only with AVX-512 BF16 or AMX; elsewhere
TensorFlow emulates it in float32 and it is slower than float32 itself."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable

__all__ = ["cpu_flags", "bfloat16_hardware", "bfloat16_note", "BFLOAT16_FLAGS",
           "ONEDNN_DEFAULT_FLAGS", "onednn_default", "onednn_import_note"]

#: The CPU flags of bfloat16 arithmetic in hardware (``/proc/cpuinfo``).
BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")

#: TensorFlow turns its oneDNN kernels on by itself only on a CPU with one of these
#: (``/proc/cpuinfo`` names; TensorFlow's ``IsMKLEnabled``); elsewhere, e.g. on an AVX2-only
#: CPU, they are off unless ``TF_ENABLE_ONEDNN_OPTS=1`` is set before it loads.
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                        "amx_bf16")


@functools.cache
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The ``flags`` of the first CPU in ``path``; empty where the file does not exist (not
    Linux) or has no flags line."""
    if not os.path.exists(path):
        return frozenset()
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line in stream:
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    return frozenset()


def bfloat16_hardware(flags: Iterable[str] | None = None) -> bool | None:
    """Whether the CPU computes bfloat16 in hardware; ``None`` when its flags are unknown."""
    flags = frozenset(cpu_flags() if flags is None else flags)
    if not flags:
        return None
    return any(flag in flags for flag in BFLOAT16_FLAGS)


def bfloat16_note(flags: Iterable[str] | None = None) -> str | None:
    """One line saying what a bfloat16 setting costs on a CPU without bfloat16 hardware, or
    ``None`` where it has it (or the flags are unknown)."""
    flags = frozenset(cpu_flags() if flags is None else flags)
    if bfloat16_hardware(flags) is not False:
        return None
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "this instruction set"
    return ("warning: this CPU has no bfloat16 instructions (no avx512_bf16 or amx_bf16; "
            f"{isa}), so TensorFlow emulates bfloat16: measured 10x slower than float32 for a "
            "LocalNet c=32 registration on a 2-core AVX2 CPU. Use float32 here.")


def onednn_default(flags: Iterable[str] | None = None) -> bool | None:
    """Whether TensorFlow turns oneDNN on by itself on this CPU; ``None`` when the flags are
    unknown."""
    flags = frozenset(cpu_flags() if flags is None else flags)
    if not flags:
        return None
    return any(flag in flags for flag in ONEDNN_DEFAULT_FLAGS)


def onednn_import_note(tensorflow_loaded: bool, environ: dict[str, str] | None = None,
                       flags: Iterable[str] | None = None) -> str | None:
    """One line for ``import labelreg`` after TensorFlow has loaded with oneDNN off by default
    on this CPU (then labelreg can no longer turn it on); ``None`` when TensorFlow is not
    loaded yet, the user chose with ``TF_ENABLE_ONEDNN_OPTS``, or the CPU has oneDNN by
    default (or its flags are unknown)."""
    environ = os.environ if environ is None else environ
    if not tensorflow_loaded or "TF_ENABLE_ONEDNN_OPTS" in environ:
        return None
    if onednn_default(flags) is not False:
        return None
    return ("warning: TensorFlow was imported before labelreg, with oneDNN off (its default on a "
            "CPU without AVX-512 VNNI/BF16 or AMX): 3-D convolutions run on Eigen, measured 2.3x "
            "slower for a LocalNet c=32 training step on 2 AVX2 cores (57.4 s against 24.9 s). "
            "Import labelreg before tensorflow, or set TF_ENABLE_ONEDNN_OPTS=1 before starting "
            "Python.")
