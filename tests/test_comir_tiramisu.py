"""Tests of comir_tf.tiramisu: shapes, validation, parameter count, serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from comir_tf.tiramisu import Tiramisu, tiramisu_channels, tiramisu_parameter_count

TINY = dict(init_filters=8, down_blocks=(2, 1), up_blocks=(1, 2), bottleneck_layers=2,
            growth_rate=4, compression=0.5, dropout=0.1)


def _trainable(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


@pytest.mark.parametrize("shape", [(32, 32), (64, 32), (36, 20), (4, 8)])
@pytest.mark.parametrize("channels", [(1, 1), (3, 2)])
def test_output_shape_for_valid_sizes(shape, channels):
    model = Tiramisu(channels[0], channels[1], **TINY)
    x = np.random.default_rng(0).normal(size=(2, *shape, channels[0])).astype(np.float32)
    y = model(x, training=False)
    assert tuple(y.shape) == (2, *shape, channels[1])
    assert np.all(np.isfinite(y.numpy()))


@pytest.mark.parametrize("shape", [(30, 32), (32, 18), (2, 4)])
def test_invalid_size_raises(shape):
    model = Tiramisu(1, 1, **TINY)  # two poolings: sides must be multiples of 4
    with pytest.raises(ValueError, match=r"multiples of 2\*\*len\(down_blocks\) = 4"):
        model(np.zeros((1, *shape, 1), np.float32))


def test_wrong_channels_and_rank_raise():
    model = Tiramisu(3, 1, **TINY)
    with pytest.raises(ValueError, match="built for 3 input channels"):
        model(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"shape \[B, H, W, 3\]"):
        model(np.zeros((8, 8, 3), np.float32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(down_blocks=(2, 2), up_blocks=(2,)), "same length"),
        (dict(down_blocks=()), "down_blocks"),
        (dict(compression=0.0), "compression"),
        (dict(dropout=1.0), "dropout"),
        (dict(growth_rate=0), "growth_rate"),
    ],
)
def test_invalid_hyper_parameters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Tiramisu(1, **kwargs)


def test_default_is_the_papers_biomedical_network():
    """Channel bookkeeping and parameter count of the default (32 filters, 6x4 blocks)."""
    info = tiramisu_channels(1)
    assert info["skips"] == [80, 108, 129, 144, 156, 165]
    assert info["bottleneck_in"] == 123
    assert info["out"] == 176
    model = Tiramisu(1)
    model.build((None, None, None, 1))
    head = model.head.kernel
    assert tuple(head.shape) == (1, 1, 176, 1)
    assert _trainable(model) == tiramisu_parameter_count(1) == 1_053_244
    # The reference notebook reports 1,053,596 trainable parameters for its SHG network: the
    # same architecture with a 3-channel head (176 * 2 more weights).
    assert tiramisu_parameter_count(1, 3) == 1_053_596


ZURICH = dict(init_filters=16, down_blocks=(2, 2, 2), up_blocks=(2, 2, 2), bottleneck_layers=3,
              compression=1.0, dropout=0.0)


@pytest.mark.parametrize("config, in_ch, out_ch", [(TINY, 2, 3), (ZURICH, 3, 3), (ZURICH, 1, 1)])
def test_parameter_count_matches_formula_for_small_configs(config, in_ch, out_ch):
    model = Tiramisu(in_ch, out_ch, **config)
    model.build((None, None, None, in_ch))
    expected = tiramisu_parameter_count(
        in_ch, out_ch, config["init_filters"], config["down_blocks"], config["up_blocks"],
        config["bottleneck_layers"], config.get("growth_rate", 12), config["compression"])
    assert _trainable(model) == expected


def test_inference_is_deterministic_and_training_uses_dropout():
    model = Tiramisu(1, 1, **TINY)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 1)).astype(np.float32)
    first = model(x, training=False).numpy()
    np.testing.assert_array_equal(first, model(x, training=False).numpy())
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=True).numpy())


def test_gradients_reach_every_weight():
    import tensorflow as tf

    model = Tiramisu(2, 1, **TINY)
    x = tf.random.stateless_normal((2, 16, 16, 2), seed=(1, 2))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(x, training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_serialisation_round_trip(tmp_path):
    model = Tiramisu(3, 2, **TINY)
    x = np.random.default_rng(2).normal(size=(1, 24, 16, 3)).astype(np.float32)
    expected = model(x, training=False).numpy()

    clone = Tiramisu.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    clone.build((None, None, None, 3))
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)

    path = tmp_path / "tiramisu.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: the class is registered
    assert isinstance(loaded, Tiramisu)
    assert loaded.down_blocks == (2, 1) and loaded.compression == 0.5
    np.testing.assert_allclose(loaded(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)
