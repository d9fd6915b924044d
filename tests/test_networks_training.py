"""Networks: serialisation round trips, a gradient step on a toy pair, batch-norm modes and
traced (dynamic-batch) calls."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from labelreg import losses
from labelreg.networks import CompositeNet, GlobalNet, LocalNet, UNet, UNetBackbone

SMALL = {
    LocalNet: {"num_channel_initial": 3, "ddf_levels": [0, 2, 4]},
    GlobalNet: {"num_channel_initial": 3},
    CompositeNet: {"num_channel_initial": 3, "num_channel_initial_global": 2},
    UNet: {"num_channel_initial": 3, "depth": 2},
}
NETS = list(SMALL)
SHAPES = {2: ((13, 11), (12, 14)), 3: ((9, 10, 7), (11, 8, 9))}  # (fixed, moving)


def make_pair(rng, ndim, batch=2):
    fixed_shape, moving_shape = SHAPES[ndim]
    moving = rng.random((batch, *moving_shape, 1), dtype=np.float32)
    fixed = rng.random((batch, *fixed_shape, 1), dtype=np.float32)
    return moving, fixed


def randomise_outputs(net, rng, scale=0.05):
    """Replace the zero/identity output initialisation by small random weights, so that the
    outputs depend on every layer."""
    for v in net.trainable_weights:
        if not np.any(v.numpy()):
            v.assign(scale * rng.standard_normal(v.shape).astype(np.float32))


def randomise_bn_statistics(net, rng):
    for v in net.non_trainable_weights:
        if v.path.endswith("moving_mean"):
            v.assign(0.1 * rng.standard_normal(v.shape).astype(np.float32))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))


def build_net(net_cls, ndim, rng, pair):
    kwargs = dict(SMALL[net_cls])
    if net_cls in (GlobalNet, CompositeNet):
        kwargs["fixed_shape"] = SHAPES[ndim][0]
    net = net_cls(ndim=ndim, **kwargs)
    net(pair)
    randomise_outputs(net, rng)
    randomise_bn_statistics(net, rng)
    return net


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------


# Every network in 2-D, and LocalNet and GlobalNet in 3-D as well.
ROUND_TRIPS = [(c, 2) for c in NETS] + [(LocalNet, 3), (GlobalNet, 3)]


@pytest.mark.parametrize("net_cls,ndim", ROUND_TRIPS, ids=lambda v: getattr(v, "__name__", v))
def test_config_round_trip(rng, net_cls, ndim):
    pair = list(make_pair(rng, ndim))
    net = build_net(net_cls, ndim, rng, pair)
    expected = net(pair).numpy()
    assert np.abs(expected).max() > 1e-3  # a non-trivial output to compare

    config = net.get_config()
    for key, value in SMALL[net_cls].items():
        assert config[key] == value
    assert config["ndim"] == ndim
    clone = net_cls.from_config(config)
    assert clone.get_config() == config
    clone(pair)
    clone.set_weights(net.get_weights())
    np.testing.assert_array_equal(clone(pair).numpy(), expected)


@pytest.mark.parametrize("net_cls", NETS, ids=lambda c: c.__name__)
def test_keras_file_round_trip(rng, tmp_path, net_cls):
    pair = list(make_pair(rng, 2))
    net = build_net(net_cls, 2, rng, pair)
    expected = net(pair).numpy()
    path = str(tmp_path / "net.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)  # registered classes: no custom_objects needed
    assert type(loaded) is net_cls
    assert loaded.get_config() == net.get_config()
    assert len(loaded.weights) == len(net.weights)
    for a, b in zip(loaded.weights, net.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(loaded(pair).numpy(), expected)


def test_unet_backbone_keras_file_round_trip(rng, tmp_path):
    net = UNetBackbone(ndim=3, num_channel_initial=2, depth=2, out_channels=2,
                       out_activation="sigmoid", pooling=False, use_batch_norm=True)
    image = rng.random((1, 7, 9, 6, 1), dtype=np.float32)
    expected = net(image).numpy()
    path = str(tmp_path / "backbone.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(image).numpy(), expected)
    for a, b in zip(loaded.encode(image), net.encode(image), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --------------------------------------------------------------------------------------------
# One gradient step lowers a multi-scale Dice loss
# --------------------------------------------------------------------------------------------


def blob(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    d2 = np.sum((grid - np.asarray(centre)) ** 2, -1)
    return np.exp(-d2 / (2 * radius**2)).astype(np.float32)[None, ..., None]


@pytest.mark.parametrize("net_cls", [LocalNet, GlobalNet], ids=lambda c: c.__name__)
@pytest.mark.parametrize("ndim", [2, 3])
def test_one_adam_step_lowers_multiscale_dice(net_cls, ndim):
    shape = (12,) * ndim
    fixed = blob(shape, [5.5] * ndim, 2.5)
    moving = blob(shape, [7.0] + [5.5] * (ndim - 1), 2.5)  # shifted by 1.5 voxels
    net = net_cls(ndim=ndim, num_channel_initial=4)
    optimizer = keras.optimizers.Adam(learning_rate=1e-4)

    def loss_fn():
        ddf = net([moving, fixed], training=True)
        warped = net.warp(moving, ddf)
        return tf.reduce_mean(losses.multi_scale_dice_loss(fixed, warped, scales=(0, 1, 2)))

    with tf.GradientTape() as tape:
        before = loss_fn()
    grads = tape.gradient(before, net.trainable_weights)
    assert all(g is not None for g in grads)
    # With the zero-initialised output the gradient reaches only the output layer at first.
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in grads) > 0
    optimizer.apply_gradients(zip(grads, net.trainable_weights, strict=True))
    after = loss_fn()
    assert float(after) < float(before)


# --------------------------------------------------------------------------------------------
# Batch normalisation: inference mode makes each pair independent of its batch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "net_cls,ndim",
    [(LocalNet, 3), (GlobalNet, 2), (CompositeNet, 2), (UNet, 2)],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_inference_result_does_not_depend_on_batch(rng, net_cls, ndim):
    if net_cls is UNet:
        kwargs = {"num_channel_initial": 3, "depth": 2, "use_batch_norm": True}
    else:
        kwargs = dict(SMALL[net_cls])
    if net_cls in (GlobalNet, CompositeNet):
        kwargs["fixed_shape"] = SHAPES[ndim][0]
    net = net_cls(ndim=ndim, **kwargs)
    moving, fixed = make_pair(rng, ndim, batch=3)
    net([moving, fixed])
    randomise_outputs(net, rng)
    # One training-mode call updates the moving averages away from their initial values.
    net([moving, fixed], training=True)

    alone = net([moving[:1], fixed[:1]], training=False).numpy()
    in_batch = net([moving, fixed], training=False).numpy()
    np.testing.assert_allclose(in_batch[:1], alone, rtol=1e-4, atol=1e-5)
    # The default (training=None) is inference mode too.
    np.testing.assert_allclose(net([moving, fixed]).numpy(), in_batch, rtol=1e-5, atol=1e-6)
    # In training mode (batch statistics, as label-reg always ran) the batch matters.
    alone_t = net([moving[:1], fixed[:1]], training=True).numpy()
    in_batch_t = net([moving, fixed], training=True).numpy()
    assert np.abs(in_batch_t[:1] - alone_t).max() > 1e-4


# --------------------------------------------------------------------------------------------
# Traced calls with an unknown batch and moving shape
# --------------------------------------------------------------------------------------------


def test_traced_call_with_dynamic_batch_and_moving_shape(rng):
    """LocalNet traced once for any batch and moving shape (the transposed convolutions take
    their output shape at run time; the moving image is resized from a dynamic shape)."""
    fixed_shape, _ = SHAPES[2]
    net = LocalNet(ndim=2, **SMALL[LocalNet])

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, None, 1], tf.float32),
            tf.TensorSpec([None, *fixed_shape, 1], tf.float32),
        ]
    )
    def register(moving, fixed):
        return net([moving, fixed])

    for batch, moving_shape in ((1, (12, 14)), (3, (7, 20))):
        moving = rng.random((batch, *moving_shape, 1), dtype=np.float32)
        fixed = rng.random((batch, *fixed_shape, 1), dtype=np.float32)
        if batch == 1:
            register(moving, fixed)  # builds the weights
            randomise_outputs(net, rng)
            traces = register.experimental_get_tracing_count()
        traced = register(moving, fixed).numpy()
        # No retracing for a new batch size and moving shape.
        assert register.experimental_get_tracing_count() == traces
        assert traced.shape == (batch, *fixed_shape, 2)
        np.testing.assert_allclose(traced, net([moving, fixed]).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net_cls", NETS, ids=lambda c: c.__name__)
def test_every_weight_receives_a_gradient(rng, net_cls):
    """Once the output layers are non-zero, every trainable weight affects the DDF."""
    pair = list(make_pair(rng, 2))
    net = build_net(net_cls, 2, rng, pair)
    with tf.GradientTape() as tape:
        ddf = net(pair, training=True)
        loss = tf.reduce_sum(ddf * tf.constant(rng.standard_normal(ddf.shape), tf.float32))
    grads = tape.gradient(loss, net.trainable_weights)
    norms = {
        v.path: float(tf.reduce_max(tf.abs(g)))
        for v, g in zip(net.trainable_weights, grads, strict=True)
        if g is not None
    }
    assert len(norms) == len(net.trainable_weights)
    assert min(norms.values()) > 0, [k for k, v in norms.items() if v == 0]
