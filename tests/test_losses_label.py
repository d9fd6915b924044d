"""Tests of labelreg.losses.label: single- and multi-scale label losses, label-reg's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelreg import losses, metrics
from labelreg._tf import tf

SHAPES = {2: (12, 10), 3: (8, 9, 7)}
KINDS = ("dice", "jaccard", "cross-entropy", "mean-squared")


def _pair(ndim, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    shape = (2, *SHAPES[ndim], channels)
    y_true = (rng.random(shape) > 0.6).astype(np.float32)
    y_pred = rng.random(shape).astype(np.float32)
    return y_true, y_pred


# Reference formulas in float64 NumPy, one value per sample.
def _ref_dice(t, p):
    axes = tuple(range(1, t.ndim))
    return 1 - 2 * (t * p).sum(axes) / (t.sum(axes) + p.sum(axes) + 1e-6)


def _ref_jaccard(t, p):
    axes = tuple(range(1, t.ndim))
    tp = (t * p).sum(axes)
    return 1 - tp / ((t * t).sum(axes) + (p * p).sum(axes) - tp + 1e-6)


def _ref_cross_entropy(t, p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=tuple(range(1, t.ndim)))


def _ref_mean_squared(t, p):
    return ((t - p) ** 2).mean(axis=tuple(range(1, t.ndim)))


REFERENCES = {
    "dice": _ref_dice,
    "jaccard": _ref_jaccard,
    "cross-entropy": _ref_cross_entropy,
    "mean-squared": _ref_mean_squared,
}
FUNCTIONS = {
    "dice": losses.dice_loss,
    "jaccard": losses.jaccard_loss,
    "cross-entropy": losses.cross_entropy_loss,
    "mean-squared": losses.mean_squared_loss,
}


def _ref_smooth(x, sigma):
    """Gaussian smoothing per sample and channel, zero padding, kernel half-width int(3 sigma)."""
    if sigma == 0:
        return x
    tail = int(3 * sigma)
    kernel = np.exp(-(np.arange(-tail, tail + 1) ** 2) / (2.0 * sigma**2))
    kernel /= kernel.sum()
    out = x.astype(np.float64)
    for axis in range(1, x.ndim - 1):
        out = ndimage.correlate1d(out, kernel, axis=axis, mode="constant", cval=0.0)
    return out


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels", [1, 2])
def test_single_scale_losses_match_numpy(ndim, kind, channels):
    t, p = _pair(ndim, channels, seed=ndim)
    result = FUNCTIONS[kind](t, p)
    assert result.dtype == tf.float32 and result.shape == (2,)
    np.testing.assert_allclose(result.numpy(), REFERENCES[kind](t, p), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_multi_scale_loss_matches_scipy_reference(ndim, kind):
    t, p = _pair(ndim, seed=10 + ndim)
    scales = (0, 1, 2, 4)
    expected = np.mean(
        [REFERENCES[kind](_ref_smooth(t, s), _ref_smooth(p, s)) for s in scales], axis=0
    )
    result = losses.multi_scale_loss(t, p, kind=kind, scales=scales)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_multi_scale_dice_default_scales_match_reference():
    # The default scales (kernels up to 97 taps) on a grid smaller than most kernels.
    t, p = _pair(2, seed=3)
    expected = np.mean(
        [_ref_dice(_ref_smooth(t, s), _ref_smooth(p, s)) for s in (0, 1, 2, 4, 8, 16)], axis=0
    )
    np.testing.assert_allclose(losses.multi_scale_dice_loss(t, p).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(losses.multi_scale_loss(t, p).numpy(), expected, rtol=1e-5)


def test_dice_of_identical_and_empty_masks():
    mask = np.zeros((2, 8, 8, 8, 1), np.float32)
    mask[:, 2:6, 3:7, 1:5] = 1
    empty = np.zeros_like(mask)
    np.testing.assert_allclose(metrics.dice(mask, mask).numpy(), [1, 1])
    np.testing.assert_allclose(metrics.dice(empty, empty).numpy(), [1, 1])
    # With label-reg's epsilon the soft loss is 1 - 2N / (2N + 1e-6) ~ 0 for identical masks,
    # and 1 - 0 / 1e-6 = 1 for two empty ones.
    np.testing.assert_allclose(losses.dice_loss(mask, mask).numpy(), [0, 0], atol=1e-6)
    np.testing.assert_allclose(losses.dice_loss(empty, empty).numpy(), [1, 1])
    np.testing.assert_allclose(losses.jaccard_loss(mask, mask).numpy(), [0, 0], atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_multi_scale_dice_grows_with_shift(ndim):
    size = 24 if ndim == 2 else 20
    mask = np.zeros((1,) + (size,) * ndim + (1,), np.float32)
    mask[(0,) + (slice(3, 9),) * ndim] = 1  # shifts up to 11 along axis 1 never wrap around
    values = [
        float(losses.multi_scale_dice_loss(mask, np.roll(mask, k, axis=1))[0]) for k in range(4)
    ]
    # Not 0 even at k = 0: a blurred soft label has Σt² < Σt (label-reg's formula).
    self_loss = np.mean(
        [_ref_dice(_ref_smooth(mask, s), _ref_smooth(mask, s)) for s in losses.DEFAULT_SCALES]
    )
    assert values[0] == pytest.approx(self_loss, rel=1e-5)
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    # Beyond any overlap the blurred scales still tell the shifts apart (label-reg #16).
    far = [float(losses.multi_scale_dice_loss(mask, np.roll(mask, k, axis=1))[0]) for k in (8, 11)]
    assert values[-1] < far[0] < far[1] < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_multi_scale_loss_has_finite_nonzero_gradient(kind):
    t, p = _pair(3, seed=5)
    p = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss = tf.reduce_sum(losses.multi_scale_loss(t, p, kind=kind, scales=(0, 1, 2)))
    grad = tape.gradient(loss, p).numpy()
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_dice_loss_gradient_matches_finite_differences():
    t, p = _pair(2, seed=6)
    p64 = p.astype(np.float64)
    y = tf.constant(p)
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = tf.reduce_sum(losses.multi_scale_dice_loss(t, y, scales=(0, 1)))
    analytic = tape.gradient(loss, y).numpy()

    def value(q):
        return sum(_ref_dice(_ref_smooth(t, s), _ref_smooth(q, s)).sum() for s in (0, 1)) / 2

    rng = np.random.default_rng(0)
    for index in [tuple(rng.integers(0, d) for d in p.shape) for _ in range(12)]:
        plus, minus = p64.copy(), p64.copy()
        plus[index] += 1e-6
        minus[index] -= 1e-6
        numeric = (value(plus) - value(minus)) / 2e-6
        assert analytic[index] == pytest.approx(numeric, rel=1e-3, abs=1e-6)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"y_true.*\(1, 8, 8, 1\).*y_pred.*\(1, 8, 9, 1\)"):
        losses.dice_loss(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 9, 1)))
    with pytest.raises(ValueError, match=r"y_true.*y_pred"):
        losses.multi_scale_loss(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 2)), kind="jaccard")
    with pytest.raises(ValueError, match=r"y_true must have shape"):
        losses.cross_entropy_loss(np.zeros((8, 8)), np.zeros((8, 8)))


@pytest.mark.parametrize("scales", [(), (1, -2), "124", None, (0, float("nan"))])
def test_invalid_scales_raise(scales):
    t, p = _pair(2)
    with pytest.raises(ValueError, match="scales must be"):
        losses.multi_scale_loss(t, p, scales=scales)


def test_unknown_kind_raises_listing_known_kinds():
    t, p = _pair(2)
    with pytest.raises(ValueError, match=r"kind must be one of .*'dice'.*received kind='ssd'"):
        losses.multi_scale_loss(t, p, kind="ssd")


def test_registry_label_losses():
    t, p = _pair(2, seed=8)
    assert losses.LABEL_LOSSES == ("dice", "cross-entropy", "mean-squared", "jaccard")
    for name in losses.LABEL_LOSSES:
        np.testing.assert_allclose(
            losses.get_label_loss(name)(t, p).numpy(), FUNCTIONS[name](t, p).numpy()
        )
        np.testing.assert_allclose(
            losses.get_label_loss(name, scales=(0, 2))(t, p).numpy(),
            losses.multi_scale_loss(t, p, kind=name, scales=(0, 2)).numpy(),
        )
    with pytest.raises(ValueError, match="known names are: dice, cross-entropy, mean-squared"):
        losses.get_label_loss("generalised-dice")
    with pytest.raises(ValueError, match="scales must be"):
        losses.get_label_loss("dice", scales=(-1,))


@pytest.mark.parametrize("ndim", [2, 3])
def test_centroid_distance_loss_is_the_soft_centroid_distance(ndim):
    from labelreg.losses.label import centroid_distance_loss

    rng = np.random.default_rng(5)
    shape = (9, 10, 8)[:ndim]
    t = np.zeros((2, *shape, 1), np.float32)
    p = np.zeros_like(t)
    # Sample 0: binary boxes, so the loss equals the thresholded metric (in mm).
    t[(0, *[slice(1, 4)] * ndim, 0)] = 1.0
    p[(0, *[slice(4, 8)] * ndim, 0)] = 1.0
    # Sample 1: soft labels; the reference is NumPy's weighted mean of the indices.
    t[1, ..., 0] = rng.random(shape)
    p[1, ..., 0] = rng.random(shape) ** 3
    spacing = np.array([[1.5, 0.5, 2.0][:ndim]] * 2, np.float32)
    got = centroid_distance_loss(t, p, spacing=spacing).numpy()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)

    def centroid(mask):
        return (mask[..., None] * grid).reshape(-1, ndim).sum(0) / mask.sum()

    expected = [np.linalg.norm((centroid(t[b, ..., 0]) - centroid(p[b, ..., 0])) * spacing[b])
                for b in range(2)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0], metrics.centroid_distance(t, p, spacing=spacing)[0],
                               rtol=1e-5)


def test_centroid_distance_loss_gradient_and_empty_labels():
    from labelreg.losses.label import centroid_distance_loss

    rng = np.random.default_rng(2)
    t = tf.constant(rng.random((1, 6, 7, 5, 1)), tf.float32)
    p = tf.constant(rng.random((1, 6, 7, 5, 1)), tf.float32)
    theoretical, numerical = tf.test.compute_gradient(
        lambda q: centroid_distance_loss(t, q), [tf.cast(p, tf.float64)[..., :] * 1.0])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)
    # An empty warped label (moved out of the grid) gives 0 and a zero, finite gradient.
    empty = tf.zeros_like(p)
    with tf.GradientTape() as tape:
        tape.watch(empty)
        value = centroid_distance_loss(t, empty)
    grad = tape.gradient(value, empty).numpy()
    assert value.numpy()[0] == 0.0 and np.all(np.isfinite(grad)) and not grad.any()
    with pytest.raises(ValueError, match="one label per sample"):
        centroid_distance_loss(np.ones((1, 4, 4, 2), np.float32), np.ones((1, 4, 4, 2), np.float32))
