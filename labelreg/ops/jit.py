"""Switch for XLA compilation of the spatial operations.

``warp`` is compiled with ``tf.function(jit_compile=True)``: on this kind of CPU XLA fuses the
gathers and weights of the sampler and makes it about ten times faster than the plain graph.
TF-Serving's stock server does not compile XLA clusters on CPU by default, so exporting a model
for serving traces the same functions uncompiled inside :func:`xla_disabled`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Hashable, Iterator

from labelreg._tf import tf

__all__ = ["xla_enabled", "xla_disabled", "maybe_compiled"]

_state = threading.local()


def xla_enabled() -> bool:
    """Whether the spatial operations are currently compiled with XLA (default ``True``)."""
    return getattr(_state, "enabled", True)


@contextlib.contextmanager
def xla_disabled() -> Iterator[None]:
    """Within this block, ``warp`` traces without ``jit_compile``."""
    previous = xla_enabled()
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


@functools.cache
def _compiled(fn: Callable, rank: int, variant: Hashable) -> Callable:
    # One compiled function per tensor rank, so that shape relaxation between calls never loses
    # the rank (2-D and 3-D calls would otherwise relax to an unknown rank). The compiled
    # functions branch and loop on Python values only, so AutoGraph has nothing to convert; it
    # would still rewrite every nested call at each trace (about 2 s per training graph).
    # ``variant`` keeps apart calls that differ in a Python argument known at every call site
    # (e.g. the axis of a per-axis gradient), so they do not retrace one function in turn.
    # TensorFlow counts retracings per code object to warn about "excessive" tracing; wrapping
    # ``fn`` in a partial gives each (rank, variant) a count of its own, so GraDIRN's pyramid
    # (one trace per level shape, then one with relaxed shapes) does not set it off.
    del rank, variant
    return tf.function(functools.partial(fn), jit_compile=True, reduce_retracing=True,
                       autograph=False)


def maybe_compiled(fn: Callable, rank: int, variant: Hashable = None) -> Callable:
    """``fn`` compiled with XLA for inputs of tensor rank ``rank`` (one compiled function per
    ``variant``), or ``fn`` itself when disabled."""
    return _compiled(fn, rank, variant) if xla_enabled() else fn
