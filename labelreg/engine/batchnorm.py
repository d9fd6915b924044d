"""Re-estimating BatchNorm statistics after training ("precise BN").

The networks normalise with batch statistics while training and with the layers' moving
averages at inference. With small registration minibatches and a few hundred steps the
exponential moving averages (momentum 0.99) still carry the initial values and the early
batches, so inference would see different activations from training. Before each checkpoint
the training loop therefore replaces the moving averages by the plain mean of the statistics of
a number of training batches, computed with the current weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras

__all__ = ["batch_norm_layers", "recalibrate_batch_norm"]


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer inside ``model`` (nested layers included)."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batch_norm(model: keras.Model, batches: Iterable[Sequence[Any]]) -> int:
    """Set every BatchNorm layer's moving mean and variance to the average of its batch
    statistics over ``batches``.

    Each batch is fed as ``model(batch, training=True)`` eagerly; the trainable weights do not
    change. Batch ``k`` (from 0) is blended in with momentum ``k / (k + 1)``, which makes the
    result the arithmetic mean over the batches.

    Args:
        model: a built Keras model.
        batches: model inputs, e.g. ``[moving, fixed]`` pairs.

    Returns:
        The number of batches used (0 leaves the model unchanged).
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, inputs in enumerate(batches, start=1):
            for layer in layers:
                layer.momentum = (count - 1) / count
            model(inputs, training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return count
