"""affine_to_ddf, resample_affine, random_affine, compose and integrate_svf."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from labelreg import ops


@pytest.mark.parametrize("ndim", [2, 3])
def test_affine_to_ddf_matches_hand_computation(rng, ndim):
    shape = (5, 6, 7)[:ndim]
    theta = rng.normal(size=(2, ndim, ndim + 1)).astype(np.float32)
    ddf = ops.affine_to_ddf(theta, shape).numpy()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    for b in range(2):
        expected = grid @ theta[b, :, :ndim].T + theta[b, :, ndim] - grid
        np.testing.assert_allclose(ddf[b], expected, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_identity_affine_gives_zero_ddf(ndim):
    ddf = ops.affine_to_ddf(ops.identity_affine(3, ndim), (4, 5, 6)[:ndim])
    assert ddf.shape == (3, *(4, 5, 6)[:ndim], ndim)
    np.testing.assert_array_equal(ddf.numpy(), 0.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_resample_affine_matches_scipy_affine_transform(rng, ndim):
    shape_in, shape_out = (9, 10, 8)[:ndim], (7, 6, 9)[:ndim]
    image = rng.normal(size=(1, *shape_in, 1)).astype(np.float32)
    theta = ops.random_affine(1, ndim, scale=0.1, seed=3).numpy()
    theta[0, :, ndim] += 0.7
    out = ops.resample_affine(image, theta, output_shape=shape_out).numpy()
    ref = ndimage.affine_transform(image[0, ..., 0].astype(np.float64), theta[0, :, :ndim],
                                   offset=theta[0, :, ndim], output_shape=shape_out, order=1,
                                   mode="grid-constant")
    np.testing.assert_allclose(out[0, ..., 0], ref, atol=1e-5)


def test_random_affine_follows_label_reg_distribution():
    theta = ops.random_affine(4000, 3, scale=0.1, seed=0).numpy()
    matrix, translation = theta[:, :, :3], theta[:, :, 3]
    diagonal = np.einsum("bii->bi", matrix)
    off_diagonal = matrix[:, ~np.eye(3, dtype=bool)]
    assert diagonal.min() >= 0.9 - 1e-6 and diagonal.max() <= 1.0 + 1e-6
    assert abs(diagonal.mean() - 0.95) < 0.005
    assert np.abs(off_diagonal).max() <= 0.05 + 1e-6
    assert np.abs(translation).max() <= 0.1
    # Seeded draws repeat; different seeds differ.
    np.testing.assert_array_equal(theta[:5], ops.random_affine(5, 3, seed=0).numpy()[:5])
    assert not np.allclose(theta[:5], ops.random_affine(5, 3, seed=1).numpy())


def test_random_affine_2d_and_errors():
    theta = ops.random_affine(100, 2, scale=0.2, seed=1).numpy()
    assert theta.shape == (100, 2, 3)
    assert np.einsum("bii->bi", theta[:, :, :2]).min() >= 0.8 - 1e-6
    # Usable inside a compiled step with a per-step seed.
    fn = tf.function(lambda step: ops.random_affine(2, 3, seed=tf.stack([7, step])))
    np.testing.assert_array_equal(fn(tf.constant(3, tf.int64)).numpy(),
                                  ops.random_affine(2, 3, seed=[7, 3]).numpy())
    with pytest.raises(ValueError, match="ndim"):
        ops.random_affine(1, 4)
    with pytest.raises(ValueError, match="scale"):
        ops.random_affine(1, 3, scale=1.5)
    with pytest.raises(ValueError, match=r"theta must have shape"):
        ops.affine_to_ddf(np.zeros((1, 3, 3)), (4, 4, 4))


def smooth_field(rng, shape, amplitude):
    ndim = len(shape)
    field = rng.normal(size=(1, *shape, ndim))
    for d in range(ndim):
        field[0, ..., d] = ndimage.gaussian_filter(field[0, ..., d], 3.0)
    field *= amplitude / np.abs(field).max()
    return field.astype(np.float32)


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_equals_sequential_warps(rng, ndim):
    shape = (24, 22, 20)[:ndim]
    image = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)[None, ..., None].astype(np.float32)
    a, b = smooth_field(rng, shape, 2.0), smooth_field(rng, shape, 2.0)
    sequential = ops.warp(ops.warp(image, a, fill_mode="nearest"), b, fill_mode="nearest")
    composed = ops.warp(image, ops.compose(a, b), fill_mode="nearest")
    added = ops.warp(image, a + b, fill_mode="nearest")
    inner = (slice(None),) + tuple(slice(4, -4) for _ in shape)
    err = np.abs(sequential.numpy()[inner] - composed.numpy()[inner]).max()
    err_added = np.abs(sequential.numpy()[inner] - added.numpy()[inner]).max()
    # Only double interpolation separates the two; adding the fields is clearly worse.
    assert err < 0.05 * np.abs(image).max()
    assert err < 0.5 * err_added


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_with_zero_is_identity(rng, ndim):
    shape = (8, 9, 7)[:ndim]
    a = smooth_field(rng, shape, 1.5)
    zero = np.zeros_like(a)
    np.testing.assert_allclose(ops.compose(a, zero).numpy(), a, atol=1e-6)
    np.testing.assert_allclose(ops.compose(zero, a).numpy(), a, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_integrate_constant_velocity_is_translation(ndim):
    shape = (10, 9, 8)[:ndim]
    velocity = np.zeros((1, *shape, ndim), np.float32) + np.arange(1, ndim + 1) * 0.5
    ddf = ops.integrate_svf(velocity, steps=5).numpy()
    np.testing.assert_allclose(ddf, velocity, atol=1e-5)


def test_integrate_svf_is_invertible(rng):
    shape = (20, 20)
    velocity = smooth_field(rng, shape, 2.0)
    forward = ops.integrate_svf(velocity)
    backward = ops.integrate_svf(-velocity)
    residual = ops.compose(forward, backward).numpy()[:, 3:-3, 3:-3]
    assert np.abs(residual).max() < 0.05
    with pytest.raises(ValueError, match="steps"):
        ops.integrate_svf(velocity, steps=-1)
