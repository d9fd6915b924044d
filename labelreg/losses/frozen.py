"""Gradients through a frozen network: to the image only, never to the network's weights.

A learned similarity (DeepSim's extractor, learnsim's encoder) runs a network on the warped
image. Marking the network non-trainable is not enough: a ``tf.GradientTape`` still watches its
variables, so an optimiser over "every watched variable" would update it. :func:`image_gradient_only`
evaluates ``fn(image)`` with a custom gradient that returns the image gradient and ``None`` for
every variable ``fn`` read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from labelreg._tf import tf

__all__ = ["image_gradient_only"]


def image_gradient_only(fn: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor) -> tf.Tensor:
    """``fn(image)``, differentiable in ``image`` and constant in any variable ``fn`` reads.

    Args:
        fn: ``image -> value`` (e.g. a loss on the features of a frozen network).
        image: the tensor the gradient flows to.

    Returns:
        ``fn(image)``.
    """

    @tf.custom_gradient
    def evaluate(x: tf.Tensor) -> tuple[tf.Tensor, Callable[..., Any]]:
        # The inner tape watches the image only; the gradient function hands the outer tape a
        # gradient for the image and None for every variable the network read.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            value = fn(x)

        def gradient(upstream: tf.Tensor, variables: Any = None) -> Any:
            grad = tape.gradient(value, x, output_gradients=upstream)
            if variables is None:
                return grad
            return grad, [None] * len(variables)

        return value, gradient

    return evaluate(image)
