"""Tests of labelreg.apps: warping volumes, carrying points both ways, inverting, composing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelreg import apps, ops
from labelreg._tf import tf

SHAPES = {2: (23, 19), 3: (14, 12, 11)}


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float,
                 sigma: float = 3.0, batch: int = 1) -> np.ndarray:
    """A smooth random DDF [batch, *shape, n] with max |component| == amplitude."""
    n = len(shape)
    fields = []
    for _ in range(batch):
        comps = [ndimage.gaussian_filter(rng.normal(size=shape), sigma) for _ in range(n)]
        field = np.stack(comps, -1)
        fields.append(field / np.abs(field).max() * amplitude)
    return np.stack(fields).astype(np.float32)


def scipy_sample(volume: np.ndarray, coords: np.ndarray, mode: str, order: int = 1) -> np.ndarray:
    """Sample a [*S] volume at coords [..., n] with scipy."""
    return ndimage.map_coordinates(volume.astype(np.float64), np.moveaxis(coords, -1, 0),
                                   order=order, mode=mode)


def grid(shape: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(
        np.float32)


# --------------------------------------------------------------------------------------------
# warp_volumes_by_ddf
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("channels", [None, 3])
def test_warp_volumes_matches_scipy(ndim, channels, rng):
    fixed_shape = SHAPES[ndim]
    moving_shape = tuple(s + 3 for s in fixed_shape)
    vol_shape = (2, *moving_shape) + ((channels,) if channels else ())
    volumes = rng.normal(size=vol_shape).astype(np.float32)
    ddf = smooth_field(rng, fixed_shape, 4.0, batch=2)
    out = apps.warp_volumes_by_ddf(volumes, ddf).numpy()
    assert out.shape == (2, *fixed_shape) + ((channels,) if channels else ())
    coords = grid(fixed_shape)
    for b in range(2):
        for c in range(channels or 1):
            vol = volumes[b, ..., c] if channels else volumes[b]
            got = out[b, ..., c] if channels else out[b]
            want = scipy_sample(vol, coords + ddf[b], mode="grid-constant")
            np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_warp_volumes_nearest_keeps_label_values(ndim, rng):
    shape = SHAPES[ndim]
    labels = rng.integers(0, 4, size=(1, *shape)).astype(np.float32)
    ddf = smooth_field(rng, shape, 3.0)
    out = apps.warp_volumes_by_ddf(labels, ddf, interpolation="nearest").numpy()
    assert set(np.unique(out)) <= {0.0, 1.0, 2.0, 3.0}
    # Reference: round each coordinate half up; zero outside the grid.
    index = np.floor(grid(shape) + ddf[0] + 0.5).astype(int)
    inside = np.all((index >= 0) & (index <= np.array(shape) - 1), axis=-1)
    clipped = np.clip(index, 0, np.array(shape) - 1)
    want = np.where(inside, labels[0][tuple(np.moveaxis(clipped, -1, 0))], 0.0)
    np.testing.assert_array_equal(out[0], want)
    assert 0.0 < inside.mean() < 1.0  # the field moves some voxels outside


def test_warp_volumes_rejects_bad_rank():
    with pytest.raises(ValueError, match="volumes must have shape"):
        apps.warp_volumes_by_ddf(np.zeros((1, 4, 4, 4, 1, 1)), np.zeros((1, 4, 4, 4, 3)))


def test_warp_volumes_gradient_flows_to_ddf():
    # A linear ramp along axis 0 has d(out)/d(ddf_0) == 1 inside the grid.
    shape = (9, 8, 7)
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32)[:, None, None], shape)[None]
    ddf = tf.Variable(np.full((1, *shape, 3), 0.3, np.float32))
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(apps.warp_volumes_by_ddf(ramp, ddf)[:, 1:-2, 1:-2, 1:-2])
    grad = tape.gradient(out, ddf).numpy()
    np.testing.assert_allclose(grad[0, 1:-2, 1:-2, 1:-2, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(grad[0, 1:-2, 1:-2, 1:-2, 1:], 0.0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_fixed_to_moving_matches_interpolated_field(ndim, rng):
    shape = SHAPES[ndim]
    ddf = smooth_field(rng, shape, 3.0, batch=2)
    points = rng.uniform(-1.0, np.array(shape) + 0.5, size=(2, 17, ndim)).astype(np.float32)
    out = apps.transport_points_fixed_to_moving(points, ddf).numpy()
    for b in range(2):
        disp = np.stack([scipy_sample(ddf[b, ..., d], points[b], mode="nearest")
                         for d in range(ndim)], -1)
        np.testing.assert_allclose(out[b], points[b] + disp, atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_fixed_to_moving_is_exact_for_affine_fields(ndim, rng):
    shape = SHAPES[ndim]
    theta = ops.random_affine(1, ndim=ndim, scale=0.2, seed=3).numpy()
    ddf = ops.affine_to_ddf(theta, shape)
    points = rng.uniform(0, np.array(shape) - 1, size=(9, ndim)).astype(np.float32)  # [P, n]
    out = apps.transport_points_fixed_to_moving(points, ddf).numpy()
    want = points @ theta[0, :, :ndim].T + theta[0, :, ndim]
    np.testing.assert_allclose(out[0], want, atol=1e-4)


def test_fixed_to_moving_gradient_is_the_interpolation_weight():
    shape = (6, 7, 5)
    ddf = tf.Variable(np.zeros((1, *shape, 3), np.float32))
    point = np.array([[[2.0, 3.25, 1.0]]], np.float32)  # between voxels (2,3,1) and (2,4,1)
    with tf.GradientTape() as tape:
        moved = apps.transport_points_fixed_to_moving(point, ddf)[0, 0, 0]
    grad = tape.gradient(moved, ddf).numpy()[0, ..., 0]
    assert grad[2, 3, 1] == pytest.approx(0.75)
    assert grad[2, 4, 1] == pytest.approx(0.25)
    assert grad.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_points_round_trip_within_a_tenth_of_a_voxel(ndim, rng):
    shape = SHAPES[ndim]
    ddf = smooth_field(rng, shape, 2.5, sigma=4.0, batch=2)
    points = rng.uniform(1, np.array(shape) - 2, size=(2, 40, ndim)).astype(np.float32)
    moving = apps.transport_points_fixed_to_moving(points, ddf)
    back = apps.transport_points_moving_to_fixed(moving, ddf, tolerance=1e-4)
    assert np.abs(back.points.numpy() - points).max() < 0.1
    assert bool(tf.reduce_all(back.converged))
    # The reported residual is |x + u(x) - q| for the returned x.
    again = apps.transport_points_fixed_to_moving(back.points, ddf).numpy()
    np.testing.assert_allclose(back.residual.numpy(),
                               np.linalg.norm(again - moving.numpy(), axis=-1), atol=1e-5)
    assert back.residual.numpy().max() <= 1e-4
    assert 1 <= back.iterations < 100


def test_moving_to_fixed_translation_is_exact():
    ddf = np.broadcast_to(np.array([1.5, -2.0], np.float32), (1, 10, 12, 2)).copy()
    q = np.array([[[4.0, 4.0], [0.5, 9.0]]], np.float32)
    out = apps.transport_points_moving_to_fixed(q, ddf)
    np.testing.assert_allclose(out.points.numpy(), q - np.array([1.5, -2.0]), atol=1e-6)
    assert out.iterations == 1


def test_moving_to_fixed_reports_failure_on_a_folding_field():
    # u(x) = 3 sin(x) along axis 0 has slope up to 3: x + u(x) folds, the inverse is not unique
    # and the iteration x <- q - u(x) cannot settle; the residual must say so.
    shape = (41, 5)
    ddf = np.zeros((1, *shape, 2), np.float32)
    ddf[0, ..., 0] = 3.0 * np.sin(np.arange(41, dtype=np.float32))[:, None]
    q = np.array([[[20.0, 2.0]]], np.float32)
    out = apps.transport_points_moving_to_fixed(q, ddf, max_iterations=20)
    assert out.iterations == 20
    assert not bool(out.converged.numpy().any())
    assert out.residual.numpy().max() > 0.1


def test_point_shapes_are_checked():
    ddf = np.zeros((2, 5, 6, 7, 3), np.float32)
    with pytest.raises(ValueError, match=r"points must have shape \[batch, points, 3\]"):
        apps.transport_points_fixed_to_moving(np.zeros((2, 4, 2)), ddf)
    with pytest.raises(ValueError, match="same batch size"):
        apps.transport_points_fixed_to_moving(np.zeros((3, 4, 3)), ddf)
    with pytest.raises(ValueError, match="max_iterations"):
        apps.transport_points_moving_to_fixed(np.zeros((2, 4, 3)), ddf, max_iterations=0)


# --------------------------------------------------------------------------------------------
# invert_ddf
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_invert_ddf_composes_to_identity(ndim, rng):
    shape = SHAPES[ndim]
    u = smooth_field(rng, shape, 2.0, sigma=4.0)
    inv = apps.invert_ddf(u, tolerance=1e-4)
    assert inv.ddf.shape == (1, *shape, ndim)
    assert inv.residual.numpy().max() <= 1e-4
    # u then v: x + u(x) + v(x + u(x)) == x, away from the border where u leaves the grid.
    both = ops.compose(inv.ddf, u).numpy()
    inner = tuple(slice(3, -3) for _ in range(ndim))
    assert np.abs(both[(0, *inner)]).max() < 0.1


def test_invert_ddf_of_a_scaling_matches_the_analytic_inverse():
    shape = (16, 18, 14)
    theta = np.array([[[0.9, 0, 0, 1.0], [0, 1.1, 0, -0.5], [0, 0, 1.0, 0.25]]], np.float32)
    u = ops.affine_to_ddf(theta, shape)
    moving_shape = (15, 20, 14)
    inv = apps.invert_ddf(u, moving_shape=moving_shape, tolerance=1e-5, max_iterations=200)
    y = grid(moving_shape)
    a, t = theta[0, :, :3], theta[0, :, 3]
    want = (y - t) @ np.linalg.inv(a).T - y
    x = y + want  # only where the inverse lands inside the fixed grid is u known exactly
    inside = np.all((x >= 0) & (x <= np.array(shape) - 1), axis=-1)
    assert inside.mean() > 0.7
    np.testing.assert_allclose(inv.ddf.numpy()[0][inside], want[inside], atol=1e-3)


def test_invert_ddf_checks_arguments():
    with pytest.raises(ValueError, match="moving_shape must list 3"):
        apps.invert_ddf(np.zeros((1, 4, 4, 4, 3)), moving_shape=(4, 4))


# --------------------------------------------------------------------------------------------
# compose_affine
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_affine_ddf_then_affine(ndim, rng):
    shape = SHAPES[ndim]
    u = smooth_field(rng, shape, 2.0, batch=2)
    theta = ops.random_affine(2, ndim=ndim, scale=0.2, seed=5).numpy()
    out = apps.compose_affine(u, theta, "ddf_then_affine").numpy()
    x = grid(shape)
    for b in range(2):
        mapped = (x + u[b]) @ theta[b, :, :ndim].T + theta[b, :, ndim]
        np.testing.assert_allclose(out[b], mapped - x, atol=1e-4)
    # Same as the general composition with the affine's field, inside the grid.
    general = ops.compose(ops.affine_to_ddf(theta, shape), u).numpy()
    inside = np.all((x + u >= 0) & (x + u <= np.array(shape) - 1), axis=-1)
    np.testing.assert_allclose(out[inside], general[inside], atol=1e-3)


@pytest.mark.parametrize("ndim", [2, 3])
def test_compose_affine_affine_then_ddf(ndim, rng):
    shape = SHAPES[ndim]
    out_shape = tuple(s - 2 for s in shape)
    u = smooth_field(rng, shape, 2.0)
    theta = ops.random_affine(1, ndim=ndim, scale=0.1, seed=9).numpy()
    out = apps.compose_affine(u, theta, "affine_then_ddf", output_shape=out_shape).numpy()
    assert out.shape == (1, *out_shape, ndim)
    x = grid(out_shape)
    z = x @ theta[0, :, :ndim].T + theta[0, :, ndim]
    u_at_z = np.stack([scipy_sample(u[0, ..., d], z, mode="nearest") for d in range(ndim)], -1)
    np.testing.assert_allclose(out[0], z + u_at_z - x, atol=1e-4)


def test_compose_affine_matches_sequential_warps(rng):
    # warp(moving, ddf_then_affine) == warp(resample_affine(moving, theta), u) for a smooth image.
    shape = (20, 22)
    moving = ndimage.gaussian_filter(rng.normal(size=(1, 26, 24, 1)), (0, 3, 3, 0)).astype(
        np.float32)
    u = smooth_field(rng, shape, 1.5)
    theta = ops.random_affine(1, ndim=2, scale=0.1, seed=2).numpy()
    pre = ops.resample_affine(moving, theta, output_shape=(24, 25))
    two_steps = ops.warp(pre, u).numpy()
    one_step = ops.warp(moving, apps.compose_affine(u, theta)).numpy()
    inner = (0, slice(2, -2), slice(2, -2), 0)
    assert np.abs(one_step[inner] - two_steps[inner]).max() < 0.02 * np.abs(moving).max()


def test_compose_affine_checks_arguments():
    u = np.zeros((1, 5, 6, 2), np.float32)
    with pytest.raises(ValueError, match="order must be one of"):
        apps.compose_affine(u, np.zeros((1, 2, 3)), order="both")
    with pytest.raises(ValueError, match=r"theta must have shape \[batch, 2, 3\]"):
        apps.compose_affine(u, np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="output_shape applies"):
        apps.compose_affine(u, np.zeros((1, 2, 3)), output_shape=(5, 6))
