"""warp / sample against scipy.ndimage.map_coordinates, boundary modes, gradients, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from labelreg import ops

SHAPES = [((9, 10, 11), (7, 8, 6)), ((12, 13), (9, 11)), ((8, 8, 8), (8, 8, 8))]
MODES = [("constant", "grid-constant"), ("nearest", "nearest")]


def scipy_warp(image, ddf, order=1, mode="grid-constant", cval=0.0):
    n = ddf.shape[-1]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in ddf.shape[1:-1]], indexing="ij"), -1)
    out = np.empty(ddf.shape[:-1] + image.shape[-1:])
    for b in range(image.shape[0]):
        coords = np.moveaxis(grid + ddf[b], -1, 0)
        for c in range(image.shape[-1]):
            out[b, ..., c] = ndimage.map_coordinates(
                image[b, ..., c].astype(np.float64), coords, order=order, mode=mode, cval=cval
            )
    del n
    return out


@pytest.mark.parametrize("moving_shape,fixed_shape", SHAPES)
@pytest.mark.parametrize("fill_mode,scipy_mode", MODES)
def test_warp_matches_scipy(rng, moving_shape, fixed_shape, fill_mode, scipy_mode):
    n = len(moving_shape)
    image = rng.normal(size=(2, *moving_shape, 3)).astype(np.float32)
    ddf = rng.uniform(-5, 5, size=(2, *fixed_shape, n)).astype(np.float32)
    out = ops.warp(image, ddf, fill_mode=fill_mode).numpy()
    assert out.shape == (2, *fixed_shape, 3)
    np.testing.assert_allclose(out, scipy_warp(image, ddf, mode=scipy_mode), atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_constant_fill_value_matches_scipy_cval(rng, ndim):
    shape = (7, 8, 9)[:ndim]
    image = rng.normal(size=(1, *shape, 1)).astype(np.float32)
    ddf = rng.uniform(-4, 4, size=(1, *shape, ndim)).astype(np.float32)
    out = ops.warp(image, ddf, fill_value=2.5).numpy()
    np.testing.assert_allclose(out, scipy_warp(image, ddf, cval=2.5), atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_returns_image(rng, ndim):
    shape = (6, 7, 5)[:ndim]
    image = rng.normal(size=(2, *shape, 2)).astype(np.float32)
    for fill_mode in ("constant", "nearest"):
        for interpolation in ("linear", "nearest"):
            out = ops.warp(image, np.zeros((2, *shape, ndim)), interpolation, fill_mode)
            np.testing.assert_array_equal(out.numpy(), image)


@pytest.mark.parametrize("fill_mode,scipy_mode", MODES)
def test_nearest_interpolation_matches_scipy_order0(rng, fill_mode, scipy_mode):
    image = rng.integers(0, 5, size=(1, 9, 8, 7, 1)).astype(np.float32)
    # Avoid exact .5 ties, where rounding conventions legitimately differ.
    ddf = (rng.integers(-8, 8, size=(1, 6, 5, 4, 3)) + rng.uniform(-0.4, 0.4, (1, 6, 5, 4, 3)))
    ddf = ddf.astype(np.float32)
    out = ops.warp(image, ddf, interpolation="nearest", fill_mode=fill_mode).numpy()
    np.testing.assert_array_equal(out, scipy_warp(image, ddf, order=0, mode=scipy_mode))


def test_integer_shift_is_exact(rng):
    image = rng.normal(size=(1, 10, 12, 1)).astype(np.float32)
    ddf = np.zeros((1, 10, 12, 2), np.float32)
    ddf[..., 0] = 2.0  # sample two rows further down
    out = ops.warp(image, ddf).numpy()
    np.testing.assert_array_equal(out[0, :8], image[0, 2:])
    np.testing.assert_array_equal(out[0, 8:], 0.0)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("fill_mode", ["constant", "nearest"])
def test_gradients_match_finite_differences(rng, ndim, fill_mode):
    shape = (5, 6, 4)[:ndim]
    image = rng.normal(size=(1, *shape, 2))
    # Keep samples away from integer coordinates, where linear interpolation has kinks.
    ddf = rng.integers(-2, 2, size=(1, *shape, ndim)) + rng.uniform(0.2, 0.8, (1, *shape, ndim))
    weights = rng.normal(size=(1, *shape, 2))

    def loss(img, d):
        return tf.reduce_sum(ops.warp(img, d, fill_mode=fill_mode) * weights)

    img_t, ddf_t = tf.constant(image, tf.float32), tf.constant(ddf, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([img_t, ddf_t])
        value = loss(img_t, ddf_t)
    g_img, g_ddf = (g.numpy() for g in tape.gradient(value, [img_t, ddf_t]))

    # The loss is linear in the image: the gradient is exact against scipy's adjoint.
    eps = 1e-2
    for _ in range(6):
        idx = tuple(rng.integers(0, s) for s in ddf.shape)
        plus, minus = ddf.copy(), ddf.copy()
        plus[idx] += eps
        minus[idx] -= eps
        mode = "grid-constant" if fill_mode == "constant" else "nearest"
        fd = (np.sum(scipy_warp(image, plus, mode=mode) * weights)
              - np.sum(scipy_warp(image, minus, mode=mode) * weights)) / (2 * eps)
        assert g_ddf[idx] == pytest.approx(fd, rel=1e-3, abs=1e-3)
    for _ in range(6):
        idx = tuple(rng.integers(0, s) for s in image.shape)
        bump = np.zeros_like(image)
        bump[idx] = 1.0
        mode = "grid-constant" if fill_mode == "constant" else "nearest"
        fd = np.sum(scipy_warp(bump, ddf, mode=mode) * weights)
        assert g_img[idx] == pytest.approx(fd, rel=1e-4, abs=1e-4)


def test_sample_at_coordinates_matches_scipy(rng):
    image = rng.normal(size=(1, 9, 9, 9, 1)).astype(np.float32)
    coords = rng.uniform(-1, 9, size=(1, 20, 1, 1, 3)).astype(np.float32)
    out = ops.sample(image, coords).numpy()[0, :, 0, 0, 0]
    ref = ndimage.map_coordinates(image[0, ..., 0], coords[0, :, 0, 0].T, order=1,
                                  mode="grid-constant")
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_works_inside_tf_function_with_unknown_shapes(rng):
    image = rng.normal(size=(1, 8, 9, 10, 1)).astype(np.float32)
    ddf = rng.uniform(-2, 2, size=(1, 8, 9, 10, 3)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, 1]),
                                  tf.TensorSpec([None, None, None, None, 3])])
    def fn(a, b):
        return ops.warp(a, b)

    np.testing.assert_allclose(fn(image, ddf).numpy(), ops.warp(image, ddf).numpy(), atol=1e-6)
    with ops.xla_disabled():
        np.testing.assert_allclose(ops.warp(image, ddf).numpy(), scipy_warp(image, ddf), atol=1e-5)


def test_bad_ddf_components_named():
    with pytest.raises(ValueError, match=r"ddf has 2 displacement components.*3 spatial"):
        ops.warp(np.zeros((1, 4, 4, 4, 1)), np.zeros((1, 4, 4, 4, 2)))


def test_rank_mismatch_named():
    with pytest.raises(ValueError, match=r"image and ddf .*spatial axes.*\(1, 4, 4, 1\)"):
        ops.warp(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 4, 3)))


def test_batch_mismatch_named():
    with pytest.raises(ValueError, match="same batch size"):
        ops.warp(np.zeros((2, 4, 4, 1)), np.zeros((3, 4, 4, 2)))


def test_bad_options_named():
    with pytest.raises(ValueError, match="fill_mode"):
        ops.warp(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 2)), fill_mode="reflect")
    with pytest.raises(ValueError, match="interpolation"):
        ops.warp(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 2)), interpolation="cubic")


def test_check_finite_names_argument():
    bad = np.zeros((1, 4, 4, 1), np.float32)
    bad[0, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"moving_image contains 1 NaN"):
        ops.check_finite(tf.constant(bad), "moving_image")
