"""Re-estimated BatchNorm statistics against NumPy: the mean over batches of each batch's mean
and (biased) variance of the layer's input, in 2-D and 3-D, for batches of different sizes."""

from __future__ import annotations

import gc
import weakref

import keras
import numpy as np
import pytest

from labelreg.engine import batchnorm
from labelreg.engine.batchnorm import batch_norm_layers, recalibrate_batch_norm


def _two_input_model(ndim: int) -> keras.Model:
    conv = keras.layers.Conv2D if ndim == 2 else keras.layers.Conv3D
    moving = keras.Input((None,) * ndim + (1,))
    fixed = keras.Input((None,) * ndim + (1,))
    x = keras.layers.Concatenate()([moving, fixed])
    first = conv(3, 3, padding="same", name="first")(x)
    x = keras.layers.BatchNormalization(name="norm_a")(first)
    x = conv(2, 1, name="second")(keras.layers.ReLU()(x))
    x = keras.layers.BatchNormalization(name="norm_b")(x)
    return keras.Model([moving, fixed], x)


@pytest.mark.parametrize("ndim", [2, 3])
def test_statistics_are_the_mean_of_the_batch_statistics(ndim, rng):
    model = _two_input_model(ndim)
    norm_a, norm_b = (model.get_layer(n) for n in ("norm_a", "norm_b"))
    assert batch_norm_layers(model) == [norm_a, norm_b]
    shape = (9, 8) if ndim == 2 else (6, 7, 5)
    batches = [[rng.normal(1.0, 2.0, (n, *shape, 1)).astype(np.float32),
                rng.normal(-1.0, 0.5, (n, *shape, 1)).astype(np.float32)] for n in (3, 3, 1)]
    momentum = norm_a.momentum
    assert recalibrate_batch_norm(model, iter(batches)) == 3
    assert norm_a.momentum == momentum and norm_b.momentum == momentum

    # The reference: each layer's input in training mode (batch statistics upstream), its
    # per-channel mean and biased variance per batch, averaged over the batches.
    first = keras.Model(model.inputs, model.get_layer("first").output)
    before_b = keras.Model(model.inputs, model.get_layer("second").output)
    axes = tuple(range(ndim + 1))
    for layer, probe in ((norm_a, first), (norm_b, before_b)):
        values = [np.asarray(probe(b, training=True), np.float64) for b in batches]
        mean = np.mean([v.mean(axis=axes) for v in values], axis=0)
        variance = np.mean([v.var(axis=axes) for v in values], axis=0)
        np.testing.assert_allclose(layer.moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variance, rtol=1e-4,
                                   atol=1e-5)


def test_no_batch_leaves_the_model_unchanged_and_the_trace_goes_with_the_model(rng):
    model = _two_input_model(2)
    norm = model.get_layer("norm_a")
    before = norm.moving_mean.numpy().copy()
    assert recalibrate_batch_norm(model, iter([])) == 0
    np.testing.assert_array_equal(norm.moving_mean.numpy(), before)
    batch = [rng.normal(size=(2, 5, 6, 1)).astype(np.float32)] * 2
    assert recalibrate_batch_norm(model, [batch]) == 1
    assert recalibrate_batch_norm(model, [batch, batch]) == 2
    forward = batchnorm._FORWARDS[model]
    assert len(forward._list_all_concrete_functions()) == 1  # one trace, reused
    del forward
    ref = weakref.ref(model)
    del model, norm
    gc.collect()
    assert ref() is None  # the kept trace does not keep the model alive
