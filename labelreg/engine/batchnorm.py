"""Re-estimating BatchNorm statistics after training ("precise BN").

The networks normalise with batch statistics while training and with the layers' moving
averages at inference. With small registration minibatches and a few hundred steps the
exponential moving averages (momentum 0.99) still carry the initial values and the early
batches, so inference would see different activations from training. Before each checkpoint
the training loop therefore replaces the moving averages by the plain mean of the statistics of
a number of training batches, computed with the current weights.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np

from labelreg._tf import tf

__all__ = ["batch_norm_layers", "recalibrate_batch_norm"]


def batch_norm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer inside ``model`` (nested layers included)."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate_batch_norm(model: keras.Model, batches: Iterable[Sequence[Any]]) -> int:
    """Set every BatchNorm layer's moving mean and variance to the average of its batch
    statistics over ``batches``.

    Each batch is fed as ``model(batch, training=True)`` with momentum 0, so that after each
    call a layer's moving statistics are that batch's; their arithmetic mean over the batches
    is then assigned. The trainable weights do not change. The forward pass is a
    ``tf.function`` kept for the model (one trace per input shape, reused at every
    checkpoint of a run): eagerly, the Python overhead of each layer call cost more than the
    arithmetic of a small network.

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
    variables = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    sums = [np.zeros(v.shape, np.float64) for v in variables]
    count = 0
    try:
        for layer in layers:
            layer.momentum = 0.0
        forward = _training_forward(model)
        for inputs in batches:
            forward([tf.convert_to_tensor(x) for x in inputs])
            count += 1
            for total, variable in zip(sums, variables, strict=True):
                total += np.asarray(variable.numpy(), np.float64)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    if count:
        for total, variable in zip(sums, variables, strict=True):
            variable.assign((total / count).astype(variable.dtype))
    return count


# One compiled forward pass per model, traced with the layers' momentum at 0 (the only way
# recalibrate_batch_norm calls it); weak keys, so a model's trace goes with the model.
_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _training_forward(model: keras.Model) -> Callable[[list[tf.Tensor]], Any]:
    forward = _FORWARDS.get(model)
    if forward is None:
        # The function holds the model weakly (a strong reference from the value would keep the
        # key alive for ever), and through a partial: TensorFlow counts retracings per code
        # object, and the models of one process (cross-validation folds, tests) would
        # otherwise add up to its "excessive retracing" warning.
        forward = tf.function(functools.partial(_call_training, weakref.ref(model)),
                              autograph=False)
        _FORWARDS[model] = forward
    return forward


def _call_training(model_ref: weakref.ref, inputs: list[tf.Tensor]) -> Any:
    return model_ref()(inputs, training=True)
