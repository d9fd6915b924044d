"""Tests of labelreg.losses.deform: bending energy and gradient norms of DDFs."""

from __future__ import annotations

import numpy as np
import pytest

from labelreg import losses, ops
from labelreg._tf import tf

SHAPES = {2: (9, 8), 3: (7, 6, 8)}


def _grid(shape):
    return np.stack(
        np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), -1
    )


def _numpy_derivatives(u):
    """Interior central differences of ``u [*S, n]`` with np.gradient (an independent path)."""
    n = u.ndim - 1
    return [np.gradient(u, axis=d) for d in range(n)]


def _crop(x, k, n):
    return x[(slice(k, -k),) * n]


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_is_zero_for_affine_fields(ndim):
    shape = SHAPES[ndim]
    theta = ops.random_affine(3, ndim=ndim, scale=0.3, seed=7)
    ddf = ops.affine_to_ddf(theta, shape)
    assert float(tf.reduce_max(tf.abs(ddf))) > 0.1  # the fields really do move voxels
    energy = losses.bending_energy(ddf).numpy()
    assert energy.shape == (3,)
    np.testing.assert_allclose(energy, 0.0, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_of_quadratic_field_matches_hand_value(ndim):
    # The doubled central difference is exact for quadratics: d²(a x²)/dx² = 2a and
    # d²(c x y)/dx dy = c, everywhere on the interior.
    a, c, e, g = 0.05, -0.03, 0.02, 0.04
    shape = SHAPES[ndim]
    grid = _grid(shape)
    x, y = grid[..., 0], grid[..., 1]
    if ndim == 2:
        u = np.stack([a * x**2, c * x * y], -1)
        # component 0: u_xx = 2a; component 1: u_xy = c (counted twice).
        expected = ((2 * a) ** 2 + 2 * c**2) / 2
    else:
        z = grid[..., 2]
        u = np.stack([a * x**2, c * x * y, e * y * z + g * z**2], -1)
        # component 2: u_yz = e (twice), u_zz = 2g.
        expected = ((2 * a) ** 2 + 2 * c**2 + 2 * e**2 + (2 * g) ** 2) / 3
    energy = losses.bending_energy(u[None].astype(np.float32)).numpy()
    np.testing.assert_allclose(energy, [expected], rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_bending_energy_matches_numpy_gradient_reference(ndim):
    rng = np.random.default_rng(ndim)
    u = rng.normal(size=(2, *SHAPES[ndim], ndim))
    expected = []
    for sample in u:
        first = _numpy_derivatives(sample)
        total = 0.0
        for i in range(ndim):
            total = total + np.gradient(first[i], axis=i) ** 2
            for j in range(i + 1, ndim):
                total = total + 2 * np.gradient(first[i], axis=j) ** 2
        expected.append(_crop(total, 2, ndim).mean())
    energy = losses.bending_energy(u.astype(np.float32)).numpy()
    np.testing.assert_allclose(energy, expected, rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gradient_norms_of_linear_field_match_hand_values(ndim):
    rng = np.random.default_rng(10 + ndim)
    matrix = rng.uniform(-0.5, 0.5, size=(ndim, ndim))
    shift = rng.uniform(-2, 2, size=ndim)
    u = _grid(SHAPES[ndim]) @ matrix.T + shift  # u_c(x) = Σ_d A[c, d] x_d + t_c
    ddf = u[None].astype(np.float32)
    # ∂u_c/∂x_d = A[c, d] everywhere: the mean over components of Σ_d A[c, d]² (or |A[c, d]|).
    np.testing.assert_allclose(
        losses.gradient_norm(ddf, norm="l2").numpy(), [np.sum(matrix**2) / ndim], rtol=1e-5
    )
    np.testing.assert_allclose(
        losses.gradient_norm(ddf, norm="l1").numpy(), [np.sum(np.abs(matrix)) / ndim], rtol=1e-5
    )
    assert losses.gradient_norm(ddf).numpy() == pytest.approx(np.sum(matrix**2) / ndim, rel=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_gradient_norm_matches_numpy_gradient_reference(ndim, norm):
    rng = np.random.default_rng(20 + ndim)
    u = rng.normal(size=(2, *SHAPES[ndim], ndim))
    penalty = np.square if norm == "l2" else np.abs
    expected = [_crop(sum(penalty(g) for g in _numpy_derivatives(s)), 1, ndim).mean() for s in u]
    result = losses.gradient_norm(u.astype(np.float32), norm=norm).numpy()
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_spatial_gradient_shapes_and_values():
    u = np.random.default_rng(0).normal(size=(1, 6, 5, 4, 3)).astype(np.float32)
    grads = losses.spatial_gradient(u)
    assert len(grads) == 3
    for d, g in enumerate(grads):
        assert g.shape == (1, 4, 3, 2, 3)
        np.testing.assert_allclose(
            g.numpy()[0], _crop(np.gradient(u[0].astype(np.float64), axis=d), 1, 3), atol=1e-6
        )


def _numeric_gradient(fn, x, eps):
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        grad[index] = (fn(plus) - fn(minus)) / (2 * eps)
    return grad


REGULARISERS = {
    "bending": losses.bending_energy,
    "gradient-l2": lambda d: losses.gradient_norm(d, "l2"),
    "gradient-l1": lambda d: losses.gradient_norm(d, "l1"),
}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", sorted(REGULARISERS))
def test_regulariser_gradients_match_finite_differences(ndim, name):
    fn = tf.function(REGULARISERS[name])
    shape = (6, 7) if ndim == 2 else (5, 5, 5)
    rng = np.random.default_rng(30 + ndim)
    # Derivatives of size >= 1 with small noise keep every |∂u| away from the l1 kink, where a
    # finite difference would straddle two slopes; the other two are quadratic. So the central
    # difference is exact up to rounding for any step, and a large step keeps the float32
    # rounding of the loss small against the difference it measures.
    matrix = rng.choice([-1.0, 1.0], size=(ndim, ndim)) * rng.uniform(1.0, 2.0, (ndim, ndim))
    x = (_grid(shape) @ matrix.T + rng.uniform(-0.1, 0.1, (*shape, ndim)))[None]

    def value(v):
        return float(tf.reduce_sum(fn(v.astype(np.float32))))

    ddf = tf.constant(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(ddf)
        loss = tf.reduce_sum(fn(ddf))
    analytic = tape.gradient(loss, ddf).numpy()
    numeric = _numeric_gradient(value, x, eps=0.1)
    assert np.abs(analytic).max() > 0
    np.testing.assert_allclose(analytic, numeric, atol=1e-3 * np.abs(numeric).max())


def test_bending_energy_gradient_is_finite_in_a_graph():
    fn = tf.function(losses.bending_energy)
    ddf = tf.random.normal([2, 8, 8, 8, 3], seed=1)
    with tf.GradientTape() as tape:
        tape.watch(ddf)
        loss = tf.reduce_mean(fn(ddf))
    assert np.isfinite(tape.gradient(loss, ddf).numpy()).all()


@pytest.mark.parametrize("fn", [losses.bending_energy, losses.gradient_norm])
def test_wrong_number_of_components_names_ddf_shape_and_both_numbers(fn):
    with pytest.raises(ValueError, match=r"ddf.*3 displacement components.*2 spatial") as err:
        fn(np.zeros((1, 8, 8, 3), np.float32))
    assert "(1, 8, 8, 3)" in str(err.value)
    with pytest.raises(ValueError, match=r"ddf.*2 displacement components.*3 spatial"):
        fn(np.zeros((1, 8, 8, 8, 2), np.float32))


@pytest.mark.parametrize(
    "fn, shape",
    [
        (losses.bending_energy, (1, 4, 9, 2)),
        (losses.bending_energy, (1, 9, 9, 4, 3)),
        (losses.gradient_norm, (1, 2, 9, 2)),
    ],
)
def test_too_small_side_raises(fn, shape):
    with pytest.raises(ValueError, match=r"ddf must have at least \d voxels") as err:
        fn(np.zeros(shape, np.float32))
    assert str(shape) in str(err.value)


def test_bad_rank_and_bad_norm_raise():
    with pytest.raises(ValueError, match="ddf"):
        losses.bending_energy(np.zeros((8, 8, 2), np.float32))
    with pytest.raises(ValueError, match=r"norm must be one of \('l2', 'l1'\).*'l3'"):
        losses.gradient_norm(np.zeros((1, 8, 8, 2), np.float32), norm="l3")


def test_registry_regularisers():
    u = np.random.default_rng(1).normal(size=(2, 7, 7, 2)).astype(np.float32)
    assert losses.REGULARISERS == ("bending", "gradient-l2", "gradient-l1")
    np.testing.assert_allclose(
        losses.get_regulariser("bending")(u).numpy(), losses.bending_energy(u).numpy()
    )
    np.testing.assert_allclose(
        losses.get_regulariser("gradient-l1")(u).numpy(), losses.gradient_norm(u, "l1").numpy()
    )
    np.testing.assert_allclose(
        losses.get_regulariser("gradient-l2")(u).numpy(), losses.gradient_norm(u, "l2").numpy()
    )
    with pytest.raises(ValueError, match="bending, gradient-l2, gradient-l1"):
        losses.get_regulariser("smooth")
