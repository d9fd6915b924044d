"""Activations written so that TensorFlow's graph optimiser handles them cleanly.

``leaky_relu`` is ``max(x, slope * x)`` (for 0 <= slope < 1) rather than ``tf.nn.leaky_relu``.
Both compute the same values; the difference is in the training graph. Grappler's remapper
fuses a bias add (``BiasAdd`` or ``Add``) into a following ``LeakyRelu``, while the gradient
op ``LeakyReluGrad`` still reads the bias add's output. The rewrite then fails
(``remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout ... LeakyReluGrad exist
for missing node ...``). TensorFlow logs that at ERROR level, although training is correct,
and drops every other fusion of that pass for the graph. ``Maximum`` and ``Mul`` are not
fused this way, so the line goes and the remaining fusions stay.

The gradient differs from ``tf.nn.leaky_relu``'s only at exactly ``x = 0`` (1 here, ``slope``
there).
"""

from __future__ import annotations

from labelreg._tf import tf

__all__ = ["leaky_relu"]


def leaky_relu(x: tf.Tensor, slope: float = 0.2) -> tf.Tensor:
    """``x`` where ``x >= 0``, ``slope * x`` elsewhere; any shape and float dtype."""
    if not 0.0 <= slope < 1.0:
        raise ValueError(f"leaky_relu: slope = {slope} must be in [0, 1).")
    return tf.maximum(x, tf.cast(slope, x.dtype) * x)
