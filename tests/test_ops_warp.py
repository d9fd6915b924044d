"""warp / sample against scipy.ndimage.map_coordinates, boundary modes, gradients, errors."""

from __future__ import annotations

import contextlib

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


def assert_ddf_gradient_is_central_difference(rng, g_ddf, image, ddf, weights, mode, draws):
    """``g_ddf`` of ``sum(warp(image, ddf) * weights)`` against scipy's central differences at
    ``draws`` random entries (the DDF keeps away from integer coordinates, where linear
    interpolation has kinks)."""
    eps = 1e-2
    for _ in range(draws):
        idx = tuple(rng.integers(0, s) for s in ddf.shape)
        plus, minus = ddf.copy(), ddf.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd = (np.sum(scipy_warp(image, plus, mode=mode) * weights)
              - np.sum(scipy_warp(image, minus, mode=mode) * weights)) / (2 * eps)
        assert g_ddf[idx] == pytest.approx(fd, rel=1e-3, abs=1e-3)


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


@pytest.mark.parametrize("ndim,fill_mode", [(2, "nearest"), (3, "constant")])
def test_ddf_gradient_of_data_image_matches_finite_differences(rng, ndim, fill_mode):
    # The image is data (not watched): the written-out DDF gradient, not TensorFlow's.
    shape = (6, 5, 4)[:ndim]
    image = rng.normal(size=(2, *shape, 3))
    ddf = rng.integers(-3, 3, size=(2, *shape, ndim)) + rng.uniform(0.2, 0.8, (2, *shape, ndim))
    weights = rng.normal(size=(2, *shape, 3))
    ddf_t = tf.constant(ddf, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(ddf_t)
        value = tf.reduce_sum(ops.warp(image, ddf_t, fill_mode=fill_mode, fill_value=0.0) * weights)
    mode = "grid-constant" if fill_mode == "constant" else "nearest"
    assert_ddf_gradient_is_central_difference(rng, tape.gradient(value, ddf_t).numpy(), image,
                                              ddf, weights, mode, draws=8)


@pytest.mark.parametrize("ndim,fill_mode,fill_value", [
    (2, "constant", 2.5), (3, "constant", 0.0), (3, "nearest", 0.0)])
def test_both_backward_passes_agree(rng, ndim, fill_mode, fill_value):
    # Three routes to the gradients of one loss: the written-out backward (image not watched;
    # its image gradient reached by symbolic tf.gradients), TensorFlow's differentiation of the
    # compiled forward (image watched) and of the plain graph (no XLA).
    shape = (7, 6, 5)[:ndim]
    image = tf.constant(rng.normal(size=(2, *shape, 2)), tf.float32)
    # Up to 4 voxels out: corners outside the grid, clamped coordinates, and a NaN sample.
    ddf_np = rng.uniform(-4, 4, size=(2, *shape, ndim)).astype(np.float32)
    ddf_np[1, 0, 0, ..., 0] = np.nan
    ddf = tf.constant(ddf_np)
    weights = tf.constant(np.nan_to_num(rng.normal(size=(2, *shape, 2))), tf.float32)

    def loss(img, d):
        out = ops.warp(img, d, fill_mode=fill_mode, fill_value=fill_value)
        return tf.reduce_sum(tf.where(tf.math.is_finite(out), out, 0.0) * weights)

    with tf.GradientTape() as tape:
        tape.watch(ddf)
        value_data = loss(image, ddf)
    ddf_data = tape.gradient(value_data, ddf)

    @tf.function
    def symbolic(img, d):
        return tf.gradients(loss(img, d), [img, d])

    img_symbolic, ddf_symbolic = symbolic(image, ddf)
    with tf.GradientTape() as tape:
        tape.watch([image, ddf])
        value_watched = loss(image, ddf)
    img_watched, ddf_watched = tape.gradient(value_watched, [image, ddf])
    with ops.xla_disabled(), tf.GradientTape() as tape:
        tape.watch([image, ddf])
        value_plain = loss(image, ddf)
    img_plain, ddf_plain = tape.gradient(value_plain, [image, ddf])

    np.testing.assert_allclose(value_data, value_plain, rtol=1e-5)
    # At the NaN sample TensorFlow's gradient is NaN (0 * NaN); the written-out one passes no
    # gradient to a displacement that has no place in the image.
    finite = np.broadcast_to(np.isfinite(ddf_np).all(-1, keepdims=True), ddf_np.shape)
    for ddf_grad in (ddf_data, ddf_symbolic, ddf_watched):
        np.testing.assert_allclose(ddf_grad.numpy()[finite], ddf_plain.numpy()[finite],
                                   rtol=1e-4, atol=1e-4)
    for ddf_grad in (ddf_data, ddf_symbolic):
        np.testing.assert_array_equal(ddf_grad.numpy()[1, 0, 0], 0.0)
    # TensorFlow's image gradients carry NaN from the NaN sample's weights into whichever voxel
    # its clamped index reaches; the written-out one leaves the image gradient finite.
    known = np.isfinite(img_plain.numpy())
    for img_grad in (img_symbolic, img_watched):
        np.testing.assert_allclose(img_grad.numpy()[known], img_plain.numpy()[known],
                                   rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(img_symbolic.numpy()))


# 3-D compiles for 8 s: make test-slow.
@pytest.mark.parametrize("ndim", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_second_order_ddf_gradient_matches_the_plain_graph(rng, ndim):
    # GraDIRN differentiates the similarity's DDF gradient again: the written-out backward must
    # be differentiable itself (bilinear weights have non-zero mixed second derivatives).
    shape = (6, 5, 4)[:ndim]
    image = tf.constant(rng.normal(size=(1, *shape, 1)), tf.float32)
    target = tf.constant(rng.normal(size=(1, *shape, 1)), tf.float32)
    ddf = tf.constant(rng.uniform(-1.5, 1.5, size=(1, *shape, ndim)), tf.float32)
    direction = tf.constant(rng.normal(size=(1, *shape, ndim)), tf.float32)

    def hessian_vector(xla):
        with ops.xla_disabled() if not xla else contextlib.nullcontext(), \
                tf.GradientTape() as outer:
            outer.watch(ddf)
            with tf.GradientTape() as inner:
                inner.watch(ddf)
                energy = tf.reduce_sum(tf.square(ops.warp(image, ddf) - target))
            gradient = inner.gradient(energy, ddf)
            projected = tf.reduce_sum(gradient * direction)
        return outer.gradient(projected, ddf).numpy()

    np.testing.assert_allclose(hessian_vector(True), hessian_vector(False), rtol=1e-4, atol=1e-4)


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

    mode = "grid-constant" if fill_mode == "constant" else "nearest"
    assert_ddf_gradient_is_central_difference(rng, g_ddf, image, ddf, weights, mode, draws=6)
    # The loss is linear in the image: the gradient is exact against scipy's adjoint.
    for _ in range(6):
        idx = tuple(rng.integers(0, s) for s in image.shape)
        bump = np.zeros_like(image)
        bump[idx] = 1.0
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
