"""Tests of labelreg.losses.image: ssd, lncc, nmi and mind_ssc against NumPy references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from labelreg import losses
from labelreg._tf import tf
from labelreg.losses import image as image_module

SHAPES = {2: (14, 12), 3: (9, 10, 8)}


def _smooth_images(ndim, seed=0, batch=2):
    """Smooth random images in [0, 1], with structure on the scale of a few voxels."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random((batch, *SHAPES[ndim], 1)), (0,) + (1.0,) * ndim + (0,))
    x = (x - x.min()) / (x.max() - x.min())
    return x.astype(np.float32)


def _gradient(fn, fixed, warped):
    w = tf.constant(warped)
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = tf.reduce_sum(fn(fixed, w))
    return tape.gradient(loss, w).numpy()


# --- ssd ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_ssd_analytic(ndim):
    fixed = _smooth_images(ndim)
    # Adding 0.5 to half the voxels of sample 0 and 0.2 to all of sample 1.
    warped = fixed.copy()
    half = fixed.shape[1] // 2
    warped[0, :half] += 0.5
    warped[1] += 0.2
    expected = [0.25 * half / fixed.shape[1], 0.04]
    np.testing.assert_allclose(losses.ssd(fixed, warped).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.ssd(fixed, fixed).numpy(), [0, 0])


# --- lncc -----------------------------------------------------------------------------------


def _ref_lncc(fixed, warped, window):
    """DeepReg's formula with window sums from scipy's zero-padded uniform filter."""
    out = []
    for f, w in zip(fixed.astype(np.float64), warped.astype(np.float64), strict=True):
        f, w = f[..., 0], w[..., 0]
        n = f.ndim
        vol = window**n

        def wsum(x, vol=vol):
            return ndimage.uniform_filter(x, window, mode="constant") * vol

        sf, sw = wsum(f), wsum(w)
        cross = wsum(f * w) - sf * sw / vol
        var_f = np.maximum(wsum(f * f) - sf**2 / vol, 0)
        var_w = np.maximum(wsum(w * w) - sw**2 / vol, 0)
        out.append(-np.mean((cross**2 + 1e-5) / (var_f * var_w + 1e-5)))
    return np.array(out)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("window", [3, 5, 9])
def test_lncc_matches_numpy_reference(ndim, window):
    fixed = _smooth_images(ndim, seed=1)
    warped = _smooth_images(ndim, seed=2)
    result = losses.lncc(fixed, warped, window=window).numpy()
    np.testing.assert_allclose(result, _ref_lncc(fixed, warped, window), rtol=1e-4)
    assert np.all(result > -1) and np.all(result < 0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_lncc_identical_is_minus_one_and_constant_is_finite(ndim):
    image = _smooth_images(ndim, seed=3)
    np.testing.assert_allclose(losses.lncc(image, image).numpy(), [-1, -1], atol=1e-6)
    # Squared NCC ignores a positive or negative gain (zero padding at the borders, being
    # scaled too, keeps this exact; an offset would not be, near the borders).
    np.testing.assert_allclose(losses.lncc(image, -2 * image).numpy(), [-1, -1], atol=1e-5)
    constant = np.full_like(image, 0.7)
    for pair in [(constant, constant), (constant, image), (image, constant)]:
        value = losses.lncc(*pair).numpy()
        assert np.isfinite(value).all()
        grad = _gradient(losses.lncc, *pair)
        assert np.isfinite(grad).all()
    # Two constant images: every window gives (0 + eps) / (0 + eps) = 1.
    np.testing.assert_allclose(losses.lncc(constant, constant).numpy(), [-1, -1], atol=1e-6)


def test_lncc_gradient_is_finite_and_nonzero():
    fixed, warped = _smooth_images(3, seed=4), _smooth_images(3, seed=5)
    grad = _gradient(losses.lncc, fixed, warped)
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.parametrize("window", [0, 4, 2.0, True])
def test_lncc_invalid_window(window):
    image = _smooth_images(2)
    with pytest.raises(ValueError, match=r"window must be an odd integer >= 1"):
        losses.lncc(image, image, window=window)


# --- nmi ------------------------------------------------------------------------------------


def _ref_nmi(fixed, warped, bins):
    """Parzen-window NMI in float64, written from the docstring's definition."""
    centres = np.linspace(0, 1, bins)
    sigma = (1 / (bins - 1)) / (2 * math.sqrt(2 * math.log(2)))
    out = []
    for f, w in zip(fixed.astype(np.float64), warped.astype(np.float64), strict=True):

        def weights(x):
            x = np.clip(x.reshape(-1, 1), 0, 1)
            k = np.exp(-((x - centres) ** 2) / (2 * sigma**2))
            return k / k.sum(1, keepdims=True)

        wf, ww = weights(f), weights(w)
        joint = wf.T @ ww / len(wf)

        def entropy(p):
            return -(p * np.log(p + 1e-10)).sum()

        h = entropy(wf.mean(0)) + entropy(ww.mean(0))
        out.append(-(h + 1e-6) / (entropy(joint) + 1e-6))
    return np.array(out)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("bins", [8, 64])
def test_nmi_matches_numpy_reference(ndim, bins):
    fixed = _smooth_images(ndim, seed=6)
    warped = np.clip(_smooth_images(ndim, seed=7) * 1.2 - 0.1, -0.2, 1.2)  # some out of [0, 1]
    result = losses.nmi(fixed, warped, bins=bins).numpy()
    np.testing.assert_allclose(result, _ref_nmi(fixed, warped, bins), rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_nmi_prefers_identical_over_shuffled(ndim):
    image = _smooth_images(ndim, seed=8)
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(x.ravel()).reshape(x.shape) for x in image])
    same = losses.nmi(image, image).numpy()
    mixed = losses.nmi(image, shuffled).numpy()
    assert np.all(same < mixed - 0.2), (same, mixed)
    assert np.all(same >= -2) and np.all(mixed <= -1 + 1e-6)
    # NMI only sees the joint histogram: an invertible intensity map keeps it high.
    remapped = losses.nmi(image, 1 - image**2).numpy()
    assert np.all(remapped < mixed - 0.2)


def test_nmi_constant_images_and_gradients_are_finite():
    image = _smooth_images(2, seed=9)
    constant = np.full_like(image, 0.3)
    np.testing.assert_allclose(losses.nmi(constant, constant).numpy(), [-1, -1], atol=1e-5)
    for pair in [(image, image), (image, constant)]:
        grad = _gradient(losses.nmi, *pair)
        assert np.isfinite(grad).all()
    assert np.abs(_gradient(losses.nmi, image, _smooth_images(2, seed=10))).max() > 0


def test_nmi_invalid_bins():
    image = _smooth_images(2)
    with pytest.raises(ValueError, match=r"bins must be an integer >= 2; received bins=1"):
        losses.nmi(image, image, bins=1)


# --- mind_ssc -------------------------------------------------------------------------------


def _ref_mind(image, radius, dilation):
    """MIND-SSC of one ``[*S]`` image in float64, from the definition in the docstring."""
    n = image.ndim
    neighbours = [tuple(s * (i == d) for i in range(n)) for d in range(n) for s in (-1, 1)]
    pairs = [
        (a, b)
        for a, b in itertools.combinations(neighbours, 2)
        if sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) == 2
    ]
    padded = np.pad(image, dilation, mode="edge")

    def shifted(offset):
        return padded[
            tuple(
                slice(dilation + dilation * o, dilation + dilation * o + s)
                for o, s in zip(offset, image.shape, strict=True)
            )
        ]

    distance = np.stack(
        [
            ndimage.uniform_filter((shifted(a) - shifted(b)) ** 2, 2 * radius + 1, mode="nearest")
            for a, b in pairs
        ],
        -1,
    )
    variance = distance.mean(-1)
    m = variance.mean()
    variance = np.clip(variance, 1e-3 * m, 1e3 * m) + 1e-9
    return np.exp(-(distance - distance.min(-1, keepdims=True)) / variance[..., None])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("radius, dilation", [(2, 2), (1, 1), (0, 3)])
def test_mind_ssc_matches_numpy_reference(ndim, radius, dilation):
    fixed, warped = _smooth_images(ndim, seed=11), _smooth_images(ndim, seed=12)
    expected = [
        np.mean(
            (_ref_mind(f[..., 0], radius, dilation) - _ref_mind(w[..., 0], radius, dilation)) ** 2
        )
        for f, w in zip(fixed.astype(np.float64), warped.astype(np.float64), strict=True)
    ]
    result = losses.mind_ssc(fixed, warped, radius=radius, dilation=dilation).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-4)
    assert np.all(result > 0)


@pytest.mark.parametrize("ndim, count", [(2, 4), (3, 12)])
def test_mind_ssc_neighbour_pairs(ndim, count):
    pairs = image_module._ssc_pairs(ndim)
    assert len(pairs) == len(set(pairs)) == count
    for a, b in pairs:
        # Two distinct face neighbours sqrt(2) apart; the centre is never used.
        assert sum(map(abs, a)) == sum(map(abs, b)) == 1
        assert sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) == 2


@pytest.mark.parametrize("ndim", [2, 3])
def test_mind_ssc_identical_and_affine_intensity_invariance(ndim):
    fixed, warped = _smooth_images(ndim, seed=13), _smooth_images(ndim, seed=14)
    np.testing.assert_allclose(losses.mind_ssc(fixed, fixed).numpy(), [0, 0], atol=1e-7)
    # a I + b leaves the descriptor unchanged, so it matches the original image...
    np.testing.assert_allclose(losses.mind_ssc(fixed, 2.5 * fixed - 0.3).numpy(), [0, 0], atol=1e-6)
    np.testing.assert_allclose(
        losses.mind_ssc(fixed, -0.4 * fixed + 1.0).numpy(), [0, 0], atol=1e-6
    )
    # ...and the loss against any third image is unchanged.
    base = losses.mind_ssc(fixed, warped).numpy()
    np.testing.assert_allclose(losses.mind_ssc(7.0 * fixed + 3.0, warped).numpy(), base, rtol=1e-4)
    assert np.all(base > 1e-3)


def test_mind_ssc_constant_image_and_gradients_are_finite():
    image = _smooth_images(3, seed=15)
    constant = np.full_like(image, 0.5)
    np.testing.assert_allclose(losses.mind_ssc(constant, constant).numpy(), [0, 0])
    assert np.isfinite(losses.mind_ssc(image, constant).numpy()).all()
    grad = _gradient(losses.mind_ssc, image, _smooth_images(3, seed=16))
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radius": -1}, "radius must be an integer >= 0"),
        ({"dilation": 0}, "dilation must be an integer >= 1"),
        ({"radius": 1.5}, "radius must be an integer >= 0"),
    ],
)
def test_mind_ssc_invalid_options(kwargs, match):
    image = _smooth_images(2)
    with pytest.raises(ValueError, match=match):
        losses.mind_ssc(image, image, **kwargs)


# --- shared ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [losses.ssd, losses.lncc, losses.nmi, losses.mind_ssc])
def test_image_losses_reject_mismatched_shapes(fn):
    with pytest.raises(ValueError, match=r"fixed.*\(1, 8, 8, 1\).*warped.*\(1, 8, 7, 1\)"):
        fn(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 7, 1)))


@pytest.mark.parametrize("fn", [losses.lncc, losses.nmi, losses.mind_ssc])
def test_image_losses_work_in_a_graph_with_unknown_batch_and_channels(fn):
    spec = tf.TensorSpec([None, 10, 10, None], tf.float32)
    graph_fn = tf.function(fn, input_signature=[spec, spec])
    fixed, warped = _smooth_images(2, seed=17), _smooth_images(2, seed=18)
    fixed, warped = fixed[:, :10, :10], warped[:, :10, :10]
    np.testing.assert_allclose(
        graph_fn(fixed, warped).numpy(), fn(fixed, warped).numpy(), rtol=1e-5
    )


def test_image_losses_handle_channels_independently():
    fixed = np.concatenate([_smooth_images(2, seed=19), _smooth_images(2, seed=20)], -1)
    warped = np.concatenate([_smooth_images(2, seed=21), _smooth_images(2, seed=22)], -1)
    for fn in (losses.ssd, losses.lncc, losses.mind_ssc):
        per_channel = [fn(fixed[..., c : c + 1], warped[..., c : c + 1]).numpy() for c in range(2)]
        np.testing.assert_allclose(fn(fixed, warped).numpy(), np.mean(per_channel, 0), rtol=1e-5)


def test_registry_image_losses():
    fixed, warped = _smooth_images(2, seed=23), _smooth_images(2, seed=24)
    assert losses.IMAGE_LOSSES == ("ssd", "lncc", "nmi", "mind")
    np.testing.assert_allclose(
        losses.get_image_loss("mind")(fixed, warped).numpy(),
        losses.mind_ssc(fixed, warped).numpy(),
    )
    np.testing.assert_allclose(
        losses.get_image_loss("lncc", window=5)(fixed, warped).numpy(),
        losses.lncc(fixed, warped, window=5).numpy(),
    )
    np.testing.assert_allclose(
        losses.get_image_loss("ssd")(fixed, warped).numpy(), losses.ssd(fixed, warped).numpy()
    )
    with pytest.raises(ValueError, match="known names are: ssd, lncc, nmi, mind"):
        losses.get_image_loss("gmi")
    with pytest.raises(ValueError, match=r"'nmi' does not take option\(s\) \['window'\]"):
        losses.get_image_loss("nmi", window=3)
