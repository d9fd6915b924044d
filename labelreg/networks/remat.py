"""Gradient checkpointing of the networks' blocks (``[Train] gradient_checkpointing``).

A network built inside :func:`remat_scope` (enabled) wraps each of its blocks' calls in
:func:`keras.remat` (``tf.recompute_grad`` under TensorFlow): the block's inner activations
are not kept for the backward pass but recomputed from its input, so peak training memory is
about the blocks' outputs instead of every layer's output, for roughly one extra forward pass.
Whole blocks are checkpointed rather than single layers (``keras.RematScope``'s modes apply to
every layer created in the scope, and nested recomputation would repeat the forward pass once
per nesting level).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import keras

__all__ = ["remat_scope", "remat_enabled", "checkpointed"]

_STATE = threading.local()


@contextlib.contextmanager
def remat_scope(enabled: bool = True) -> Iterator[None]:
    """Networks built in this scope checkpoint their blocks (when ``enabled``)."""
    previous = getattr(_STATE, "enabled", False)
    _STATE.enabled = bool(enabled)
    try:
        yield
    finally:
        _STATE.enabled = previous


def remat_enabled() -> bool:
    """Whether a network being built now should checkpoint its blocks."""
    return bool(getattr(_STATE, "enabled", False))


def checkpointed(call: Callable[..., Any], enabled: bool, **kwargs: Any) -> Callable[..., Any]:
    """``args -> call(*args, **kwargs)``, wrapped by :func:`keras.remat` when ``enabled``.

    The keyword arguments (e.g. ``training``) are bound here because a recomputed function
    takes tensors as positional arguments only (TensorFlow's ``custom_gradient`` in graphs)."""

    def run(*args: Any) -> Any:
        return call(*args, **kwargs)

    return keras.remat(run) if enabled else run
