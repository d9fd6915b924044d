"""DeepSim: the U-Net feature extractor (shapes, padding, parameter count, serialisation) and the
DeepSim loss (NumPy reference, zero at identity, monotone in misalignment, frozen extractor)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy import ndimage

from labelreg import ops
from labelreg._tf import tf
from labelreg.losses.deepsim import DeepSimLoss, cosine_similarity
from labelreg.networks.deepsim import DeepSimUNet, Stage

SMALL = (4, 8)
SHAPES = {2: (16, 16), 3: (16, 16, 8)}


def smooth_image(rng, shape, sigma=2.0, batch=1):
    """Gaussian-smoothed noise, periodic (so ``np.roll`` shifts it without a seam), in [0, 1]."""
    out = np.stack(
        [
            ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
            for _ in range(batch)
        ]
    )
    out = (out - out.min()) / (out.max() - out.min())
    return out[..., None].astype(np.float32)


def small_net(ndim=2, **kwargs):
    keras.utils.set_random_seed(7)
    options = {"channels": SMALL, **kwargs}
    net = DeepSimUNet(ndim=ndim, **options)
    net(np.zeros((1, *SHAPES[ndim], net.in_channels), np.float32))
    return net


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def test_stride2_stage_pads_one_voxel_each_side_like_the_original(rng):
    """Keras "same" with a 4x4 stride-2 kernel on an even size = PyTorch's padding=1."""
    stage = Stage(2, 3, strides=2, batch_norm=False, dropout=0.0)
    x = rng.standard_normal((1, 10, 12, 2)).astype(np.float32)
    stage.build(x.shape)
    got = stage.conv0(x).numpy()
    kernel, bias = (w.numpy() for w in stage.conv0.weights)  # [4, 4, 2, 3], [3]
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    want = np.zeros((5, 6, 3), np.float32)
    for i in range(5):
        for j in range(6):
            window = padded[2 * i : 2 * i + 4, 2 * j : 2 * j + 4]
            want[i, j] = np.einsum("abc,abcd->d", window, kernel) + bias
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-5)
    assert stage(x).shape == (1, 5, 6, 3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_segmentation_output_and_features(ndim, rng):
    shape = SHAPES[ndim]
    net = small_net(ndim, classes=3, dropout=0.5)
    x = rng.random((2, *shape, 1), dtype=np.float32)
    out = net(x).numpy()
    assert out.shape == (2, *shape, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert (out > 0).all()
    feats = net.features(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, *(s // 2 for s in shape), 4),
        (2, *(s // 4 for s in shape), 8),
    ]
    # Inference mode: dropout (rate 0.5) off, batch norm on its moving averages.
    np.testing.assert_array_equal(net.features(x)[1].numpy(), feats[1].numpy())
    np.testing.assert_array_equal(net(x, training=False).numpy(), out)


@pytest.mark.parametrize("ndim", [2, 3])
def test_autoencoder_output(ndim, rng):
    shape = SHAPES[ndim]
    net = small_net(ndim, in_channels=2, skip_connections=False, head="sigmoid")
    assert net.out_channels == 2
    x = rng.random((1, *shape, 2), dtype=np.float32)
    out = net(x).numpy()
    assert out.shape == (1, *shape, 2)
    assert (out > 0).all() and (out < 1).all()
    # No skip connections: the head is as wide as the last decoder stage.
    assert net.head_convs[0].kernel.shape == (*(3,) * ndim, SMALL[0], SMALL[0])


def _conv_params(kernel, ndim, cin, cout):
    return kernel**ndim * cin * cout + cout


def test_default_2d_parameter_count():
    """The paper's 2-D extractor: channels 64 128 256, 1 input channel, 2 classes, batch norm."""
    net = DeepSimUNet()
    net.build((None, None, None, 1))
    channels, cin, classes, nd = (64, 128, 256), 1, 2, 2
    trainable = non_trainable = 0
    prev = cin
    for c in channels:  # encoder: BN(prev) -> conv 4 stride 2 -> conv 3
        trainable += 2 * prev  # gamma, beta
        non_trainable += 2 * prev  # moving mean, moving variance
        trainable += _conv_params(4, nd, prev, c) + _conv_params(3, nd, c, c)
        prev = c
    skips = [128, 64, cin]
    for c, skip in zip(reversed(channels), skips, strict=True):  # decoder: conv 3 -> conv 3
        trainable += _conv_params(3, nd, prev, c) + _conv_params(3, nd, c, c)
        prev = c + skip
    trainable += 2 * _conv_params(3, nd, prev, prev) + _conv_params(1, nd, prev, classes)
    print(f"\nDeepSimUNet 2-D default: {trainable} trainable + {non_trainable} non-trainable")
    assert prev == 65
    assert trainable == 3_425_946 and non_trainable == 386
    assert sum(int(np.prod(w.shape)) for w in net.trainable_weights) == trainable
    assert net.count_params() == trainable + non_trainable


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ndim": 4}, "ndim must be 2 or 3; received ndim=4"),
        ({"channels": ()}, r"channels must be .* received channels=\(\)"),
        ({"channels": (8, 0)}, r"received channels=\(8, 0\)"),
        ({"dropout": 1.0}, "dropout must be a number in \\[0, 1\\); received dropout=1.0"),
        ({"head": "relu"}, "head must be one of .* received head='relu'"),
        ({"classes": 0}, "classes must be a positive integer; received classes=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepSimUNet(**kwargs)


def test_bad_stage_stride():
    with pytest.raises(ValueError, match="strides must be 1 or 2; received strides=3"):
        Stage(2, 4, strides=3)


@pytest.mark.parametrize(("ndim", "shape"), [(2, (13, 18)), (3, (9, 6, 7))])
def test_any_size_is_the_zero_padded_multiple_cropped_back(rng, ndim, shape):
    """Sides that are not multiples of 2**L: the result is that of the input zero-padded at the
    far end to the next multiple of 4, cropped to the input (output) and to ceil(S / 2**(i+1))
    (features), so MR and ultrasound grids of any size share one extractor."""
    net = small_net(ndim)
    x = rng.random((2, *shape, 1), dtype=np.float32)
    padded_shape = [-(-s // 4) * 4 for s in shape]
    padded = np.zeros((2, *padded_shape, 1), np.float32)
    padded[(slice(None), *[slice(0, s) for s in shape])] = x
    crop = (slice(None), *[slice(0, s) for s in shape])
    out = net(x).numpy()
    assert out.shape == (2, *shape, 2)
    np.testing.assert_allclose(out, net(padded).numpy()[crop], rtol=1e-5, atol=1e-6)
    for level, (got, full) in enumerate(zip(net.features(x), net.features(padded), strict=True)):
        size = [-(-s // 2 ** (level + 1)) for s in shape]
        assert tuple(got.shape[1:-1]) == tuple(size)
        np.testing.assert_allclose(got.numpy(),
                                   full.numpy()[(slice(None), *[slice(0, s) for s in size])],
                                   rtol=1e-5, atol=1e-6)


def test_bad_input_shapes():
    net = DeepSimUNet(channels=SMALL)
    with pytest.raises(ValueError, match="expects 1 input channel"):
        net(np.zeros((1, 16, 16, 2), np.float32))
    with pytest.raises(ValueError, match="must have rank 4"):
        net(np.zeros((1, 16, 16, 8, 1), np.float32))


def test_config_and_keras_file_round_trip(tmp_path, rng):
    net = small_net(2, classes=3, dropout=0.25)
    x = rng.random((2, 16, 16, 1), dtype=np.float32)
    net(x, training=True)  # moves the batch-norm averages away from their initial values
    config = net.get_config()
    assert config["channels"] == [4, 8] and config["dropout"] == 0.25
    clone = DeepSimUNet.from_config(config)
    assert clone.get_config() == config

    path = str(tmp_path / "deepsim.keras")
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, DeepSimUNet)
    np.testing.assert_array_equal(loaded(x).numpy(), net(x).numpy())
    for a, b in zip(loaded.features(x), net.features(x), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


class FakeExtractor:
    """Convolution-free features: the image, a 2x2 average-pooled copy, and the squared image."""

    def features(self, image):
        pooled = tf.nn.avg_pool2d(image, 2, 2, "VALID")
        return [image, pooled, tf.square(image)]


def _reference(fixed, warped, levels=None, eps=1e-6, zero_mean=False):
    def feats(x):
        b, h, w, c = x.shape
        pooled = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return [x, pooled, x**2]

    out = []
    pairs = list(
        zip(feats(fixed.astype(np.float64)), feats(warped.astype(np.float64)), strict=True)
    )
    for level, (a, b) in enumerate(pairs):
        if levels is not None and level not in levels:
            continue
        if zero_mean:
            a = a - a.mean(-1, keepdims=True)
            b = b - b.mean(-1, keepdims=True)
        na = np.sqrt(np.maximum((a * a).sum(-1), eps))
        nb = np.sqrt(np.maximum((b * b).sum(-1), eps))
        out.append(((a * b).sum(-1) / (na * nb)).mean(axis=(1, 2)))
    return 1.0 - np.mean(out, axis=0)


@pytest.mark.parametrize(
    "options", [{}, {"levels": [1]}, {"levels": [0, 2]}, {"zero_mean": True}, {"eps": 0.5}]
)
def test_loss_matches_numpy_reference(options, rng):
    fixed = rng.standard_normal((3, 8, 6, 4)).astype(np.float32)
    warped = rng.standard_normal((3, 8, 6, 4)).astype(np.float32)
    fixed[0, :2] = 0.0  # zero feature vectors: the clamped norm gives a similarity of 0
    loss = DeepSimLoss(FakeExtractor(), **options)(fixed, warped)
    assert loss.dtype == tf.float32 and loss.shape == (3,)
    np.testing.assert_allclose(loss.numpy(), _reference(fixed, warped, **options), atol=1e-5)


def test_cosine_similarity_values():
    a = tf.constant([[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]])
    b = tf.constant([[[0.0, 2.0], [3.0, 3.0], [1.0, 0.0]]])
    np.testing.assert_allclose(cosine_similarity(a, b).numpy(), [[0.0, 1.0, 0.0]], atol=1e-6)


def test_loss_is_zero_at_identity_and_grows_with_shift(rng):
    net = small_net(2, channels=(8, 16))
    image = smooth_image(rng, (32, 32), batch=2)
    loss = DeepSimLoss(net)
    np.testing.assert_allclose(loss(image, image).numpy(), 0.0, atol=1e-6)
    values = [float(tf.reduce_mean(loss(image, np.roll(image, s, axis=1)))) for s in (1, 2, 4)]
    assert 1e-4 < values[0] < values[1] < values[2], values


def test_extractor_is_frozen_under_optimisation(rng):
    net = small_net(2, batch_norm=True, dropout=0.5)
    norm = net.encoder[1].norm
    norm.moving_mean.assign(rng.standard_normal(norm.moving_mean.shape).astype(np.float32))
    norm.moving_variance.assign(rng.random(norm.moving_variance.shape).astype(np.float32) + 0.5)
    loss_fn = DeepSimLoss(net)
    assert net.trainable is False and net.trainable_weights == []
    before = [w.numpy().copy() for w in net.weights]

    fixed = smooth_image(rng, (16, 16))
    moving = np.roll(fixed, 2, axis=1)
    ddf = tf.Variable(tf.zeros([1, 16, 16, 2]))
    optimizer = keras.optimizers.Adam(0.1)
    for _ in range(5):
        with tf.GradientTape() as tape:  # watches every variable read, the extractor's too
            loss = tf.reduce_mean(loss_fn(fixed, ops.warp(moving, ddf)))
        watched = tape.watched_variables()
        grads = tape.gradient(loss, watched)
        by_name = {id(v): g for v, g in zip(watched, grads, strict=True)}
        assert by_name[id(ddf)] is not None
        pairs = [(g, v) for v, g in zip(watched, grads, strict=True) if g is not None]
        assert [v for _, v in pairs] == [ddf]  # no gradient for any extractor weight
        optimizer.apply_gradients(pairs)

    assert float(tf.reduce_max(tf.abs(ddf))) > 0.1
    for a, b in zip(before, net.weights, strict=True):
        np.testing.assert_array_equal(a, b.numpy())  # kernels, biases, BN moving statistics
    # Dropout (rate 0.5) is not applied: two calls agree exactly.
    warped = ops.warp(moving, ddf)
    np.testing.assert_array_equal(loss_fn(fixed, warped).numpy(), loss_fn(fixed, warped).numpy())


def test_gradient_flows_to_warped_only_and_matches_in_graph_mode(rng):
    net = small_net(2)
    loss_fn = DeepSimLoss(net)
    fixed = tf.constant(smooth_image(rng, (16, 16), batch=2))
    warped = tf.constant(np.roll(fixed.numpy(), 1, axis=2))

    def value_and_grads(f, w):
        with tf.GradientTape() as tape:
            tape.watch([f, w])
            loss = tf.reduce_sum(loss_fn(f, w))
        return (loss, *tape.gradient(loss, [f, w]))

    loss, grad_fixed, grad_warped = value_and_grads(fixed, warped)
    assert grad_fixed is None
    assert float(tf.reduce_max(tf.abs(grad_warped))) > 0
    # The custom gradient equals finite differences along a random direction.
    direction = rng.standard_normal(warped.shape).astype(np.float32)
    h = 1e-2
    plus = tf.reduce_sum(loss_fn(fixed, warped + h * direction))
    minus = tf.reduce_sum(loss_fn(fixed, warped - h * direction))
    numeric = float(plus - minus) / (2 * h)
    analytic = float(tf.reduce_sum(grad_warped * direction))
    np.testing.assert_allclose(analytic, numeric, rtol=0.05)

    g_loss, _, g_grad = tf.function(value_and_grads)(fixed, warped)
    np.testing.assert_allclose(g_loss.numpy(), loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(g_grad.numpy(), grad_warped.numpy(), rtol=1e-4, atol=1e-7)

    @tf.function
    def extractor_grads_are_none(f, w):
        with tf.GradientTape() as tape:  # graph mode: the tape watches the variables it reads
            loss = tf.reduce_sum(loss_fn(f, w))
        return [g is None for g in tape.gradient(loss, net.variables)]

    assert len(net.variables) > 0 and all(extractor_grads_are_none(fixed, warped))


def test_keras_model_and_callable_extractors(rng):
    inputs = keras.Input((8, 8, 2))
    pooled = keras.layers.AveragePooling2D(2)(inputs)
    model = keras.Model(inputs, [inputs, pooled])
    fixed = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    warped = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    want = _reference(fixed, warped, levels=[0, 1])
    np.testing.assert_allclose(DeepSimLoss(model)(fixed, warped).numpy(), want, atol=1e-5)
    assert model.trainable is False
    callable_loss = DeepSimLoss(lambda x: [x, tf.nn.avg_pool2d(x, 2, 2, "VALID")])
    np.testing.assert_allclose(callable_loss(fixed, warped).numpy(), want, atol=1e-5)


def test_loss_errors(rng):
    x = rng.random((1, 8, 8, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"feature extractor gives 3 level\(s\)"):
        DeepSimLoss(FakeExtractor(), levels=[3])(x, x)
    with pytest.raises(ValueError, match=r"levels must be .* received levels=\[1, 1\]"):
        DeepSimLoss(FakeExtractor(), levels=[1, 1])
    with pytest.raises(ValueError, match="eps must be a positive number; received eps=0"):
        DeepSimLoss(FakeExtractor(), eps=0)
    with pytest.raises(TypeError, match="must have a `features"):
        DeepSimLoss(object())
    with pytest.raises(ValueError, match="must have the same shape"):
        DeepSimLoss(FakeExtractor())(x, x[:, :4])


def test_loss_builds_from_the_registry(rng):
    import labelreg.losses.deepsim  # noqa: F401 - registers "deepsim"
    from labelreg.losses.registry import available_losses, build_loss

    assert "deepsim" in available_losses("image")
    net = small_net(2)
    loss = build_loss("deepsim", "image", feature_extractor=net, levels=[0])
    assert isinstance(loss, DeepSimLoss) and loss.levels == (0,)
    image = smooth_image(rng, (16, 16))
    shifted = np.roll(image, 2, axis=1)
    np.testing.assert_allclose(
        loss(image, shifted).numpy(), DeepSimLoss(net, levels=[0])(image, shifted).numpy()
    )


# --------------------------------------------------------------------------------------------
# compare = segmentation
# --------------------------------------------------------------------------------------------


def fake_segmenter(image):
    """Two-class probabilities of a sharp intensity threshold at 0.5 (a differentiable stand-in
    for a trained segmentation U-Net)."""
    logits = tf.concat([tf.zeros_like(image), 12.0 * (image - 0.5)], axis=-1)
    return tf.nn.softmax(logits, axis=-1)


def _segmentation_reference(fixed, warped, eps=1e-6):
    def foreground(x):
        return 1.0 / (1.0 + np.exp(-12.0 * (x.astype(np.float64) - 0.5)))

    pf, pw = foreground(fixed), foreground(warped)
    axes = tuple(range(1, fixed.ndim))
    return 1.0 - 2.0 * (pf * pw).sum(axes) / (pf.sum(axes) + pw.sum(axes) + eps)


@pytest.mark.parametrize("shape", [(16, 16), (12, 10, 8)])
def test_segmentation_comparison_is_the_soft_dice_of_the_outputs(rng, shape):
    fixed = smooth_image(rng, shape, batch=2)
    warped = np.roll(fixed, 2, axis=1)
    loss = DeepSimLoss(fake_segmenter, compare="segmentation")
    np.testing.assert_allclose(loss(fixed, warped).numpy(),
                               _segmentation_reference(fixed, warped), rtol=1e-4, atol=1e-6)
    # Lowest when aligned, and it grows with the shift.
    values = [float(loss(fixed, np.roll(fixed, k, axis=1))[0]) for k in (0, 1, 3)]
    assert values[0] < values[1] < values[2]


def test_segmentation_comparison_gradient_matches_finite_differences(rng):
    fixed = tf.constant(smooth_image(rng, (16, 16), batch=2))
    warped = tf.constant(np.roll(fixed.numpy(), 2, axis=1))
    loss_fn = DeepSimLoss(fake_segmenter, compare="segmentation")
    with tf.GradientTape() as tape:
        tape.watch([fixed, warped])
        loss = tf.reduce_sum(loss_fn(fixed, warped))
    grad_fixed, grad_warped = tape.gradient(loss, [fixed, warped])
    assert grad_fixed is None and float(tf.reduce_max(tf.abs(grad_warped))) > 0
    direction = rng.standard_normal(warped.shape).astype(np.float32)
    h = 1e-3
    plus = _segmentation_reference(fixed.numpy(), warped.numpy() + h * direction).sum()
    minus = _segmentation_reference(fixed.numpy(), warped.numpy() - h * direction).sum()
    np.testing.assert_allclose(float(tf.reduce_sum(grad_warped * direction)),
                               (plus - minus) / (2 * h), rtol=1e-3)


def test_segmentation_comparison_uses_the_unet_head_frozen_and_checks_its_options(rng):
    net = small_net(2)
    image = smooth_image(rng, (16, 16))
    shifted = np.roll(image, 2, axis=1)
    loss = DeepSimLoss(net, compare="segmentation")
    foreground = net(image, training=False).numpy()[..., 1:].astype(np.float64)
    moved = net(shifted, training=False).numpy()[..., 1:].astype(np.float64)
    want = 1 - 2 * (foreground * moved).sum() / (foreground.sum() + moved.sum() + 1e-6)
    np.testing.assert_allclose(loss(image, shifted).numpy()[0], want, rtol=1e-5)
    assert net.trainable is False
    from labelreg.losses.registry import build_loss

    built = build_loss("deepsim", "image", feature_extractor=net, compare="segmentation")
    assert built.compare == "segmentation"
    with pytest.raises(ValueError, match="compare must be one of .*received compare='logits'"):
        DeepSimLoss(net, compare="logits")
    with pytest.raises(ValueError, match="do not apply to compare = segmentation"):
        DeepSimLoss(net, compare="segmentation", levels=[0])
    autoencoder = small_net(2, head="sigmoid", skip_connections=False)
    with pytest.raises(ValueError, match=r"1 channel\(s\) \(an autoencoder\?\)"):
        DeepSimLoss(autoencoder, compare="segmentation")(image, shifted)
