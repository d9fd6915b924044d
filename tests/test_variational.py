"""learnsim's variational SVF posterior: the Sobolev kernel and its identity gradient, the entropy
and quadratic terms against a dense covariance, antithetic sampling, the regulariser against a
NumPy reference, inverse consistency of the integrated flow, and no retracing under a seed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from labelreg import ops
from labelreg._tf import tf
from labelreg.ops.sobolev import sobolev_kernel_1d, sobolev_smooth
from labelreg.variational import SVFPosterior, transformation, velocity_regulariser

SHAPES = {2: (5, 4), 3: (4, 3, 3)}
NDIMS = [2, 3]


def random_posterior(rng, ndim, batch=2):
    """A posterior with random mu, sigma in [0.3, 1.2] and u of either sign."""
    shape = (batch, *SHAPES[ndim], ndim)
    post = SVFPosterior(shape)
    post.mu.assign(rng.normal(0.0, 0.5, shape).astype(np.float32))
    sigma = rng.uniform(0.3, 1.2, shape)
    post.log_var.assign(np.log(sigma**2).astype(np.float32))
    post.u.assign(rng.normal(0.0, 0.4, shape).astype(np.float32))
    return post


def dense_covariance(post, b):
    sigma = post.sigma.numpy()[b].astype(np.float64).ravel()
    u = post.u.numpy()[b].astype(np.float64).ravel()
    return np.diag(sigma**2) + np.outer(u, u)


def smooth_field(shape, amplitude):
    """A smooth vortex-like field vanishing on the border, max component ``amplitude`` voxels."""
    grid = np.meshgrid(*[np.linspace(0.0, 1.0, s) for s in shape], indexing="ij")
    bump = np.prod([np.sin(np.pi * g) for g in grid], axis=0)
    n = len(shape)
    comps = [(-1) ** c * bump * np.cos(np.pi * grid[(c + 1) % n]) for c in range(n)]
    v = np.stack(comps, -1)
    return (amplitude * v / np.abs(v).max())[None].astype(np.float32)


# --- Sobolev kernel and smoothing -------------------------------------------------------------


def test_kernel_defaults_match_learnsim():
    k = sobolev_kernel_1d()
    # Sobolev_kernel_1D(s=3, lambda=0.5) of learnsim, in closed form.
    np.testing.assert_allclose(k, np.array([1, 4, 15, 56, 15, 4, 1]) / 96.0, rtol=0, atol=1e-7)
    assert k.dtype == np.float32 and k.shape == (7,)
    np.testing.assert_array_equal(k, k[::-1])
    assert abs(float(k.sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("s,lam", [(1, 0.5), (2, 1.0), (5, 0.25), (3, 0.0)])
def test_kernel_equals_eigendecomposition_route(s, lam):
    """The reference's route: ``V diag(1 / (1 - lam w)) V^T`` at the centre, normalised."""
    size = 2 * s + 1
    lap = np.diag(np.full(size, -2.0)) + np.eye(size, k=1) + np.eye(size, k=-1)
    w, vecs = np.linalg.eigh(lap)
    column = (vecs / (1.0 - lam * w)) @ vecs[s]
    expected = column / column.sum()
    k = sobolev_kernel_1d(size, s, lam)
    np.testing.assert_allclose(k, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(k, k[::-1])
    if lam == 0:
        np.testing.assert_array_equal(k, np.eye(size)[s])


def test_kernel_rejects_ill_arguments():
    with pytest.raises(ValueError, match=r"size must be 2 \* smoothness \+ 1 = 7; received size=5"):
        sobolev_kernel_1d(5, 3)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0; received lam=-1"):
        sobolev_kernel_1d(7, 3, -1.0)
    with pytest.raises(ValueError, match="smoothness must be an integer >= 0"):
        sobolev_kernel_1d(7, 2.5)


@pytest.mark.parametrize("ndim", NDIMS)
def test_smooth_equals_replicate_padded_correlation(rng, ndim):
    shape = {2: (2, 9, 8, 2), 3: (1, 8, 7, 9, 3)}[ndim]
    v = rng.normal(size=shape).astype(np.float32)
    expected = v.astype(np.float64)
    k = sobolev_kernel_1d().astype(np.float64)
    for axis in range(1, ndim + 1):
        # scipy's "nearest" mode extends the input with its edge values: PyTorch's "replicate".
        expected = ndimage.correlate1d(expected, k, axis=axis, mode="nearest")
    np.testing.assert_allclose(sobolev_smooth(v).numpy(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("ndim", NDIMS)
def test_smooth_keeps_constants_everywhere_and_ramps_inside(ndim):
    shape = (1, *(10,) * ndim, ndim)
    const = np.full(shape, 1.7, np.float32)
    # Replicate padding and a kernel summing to one: constant up to the border.
    np.testing.assert_allclose(sobolev_smooth(const).numpy(), const, rtol=0, atol=1e-6)
    grid = np.meshgrid(*[np.arange(10.0)] * ndim, indexing="ij")
    plane = sum((d + 1) * g for d, g in enumerate(grid))  # i + 2 j (+ 3 k)
    ramp = np.broadcast_to(plane[None, ..., None], shape).astype(np.float32)
    out = sobolev_smooth(ramp).numpy()
    inner = (slice(None), *(slice(3, -3),) * ndim, slice(None))
    # A symmetric kernel leaves a linear field unchanged where it does not reach the border.
    np.testing.assert_allclose(out[inner], ramp[inner], rtol=0, atol=1e-5)
    assert abs(out[(0,) * (ndim + 2)] - 0.0) > 0.1  # the border sees the replicated values


@pytest.mark.parametrize("ndim", NDIMS)
def test_smooth_gradient_is_identity(rng, ndim):
    shape = (2, *SHAPES[ndim], ndim)
    v = tf.constant(rng.normal(size=shape).astype(np.float32))
    upstream = rng.normal(size=shape).astype(np.float32)
    with tf.GradientTape() as tape:
        tape.watch(v)
        y = tf.reduce_sum(upstream * sobolev_smooth(v))
    np.testing.assert_array_equal(tape.gradient(y, v).numpy(), upstream)

    @tf.function
    def grad(x):
        with tf.GradientTape() as t:
            t.watch(x)
            z = tf.reduce_sum(upstream * sobolev_smooth(x))
        return t.gradient(z, x)

    np.testing.assert_array_equal(grad(v).numpy(), upstream)


# --- posterior --------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", NDIMS)
def test_entropy_and_quadratic_match_dense_covariance(rng, ndim):
    post = random_posterior(rng, ndim)
    v = rng.normal(0.0, 1.0, post.shape).astype(np.float32)
    entropy = post.entropy().numpy()
    quadratic = post.quadratic(v).numpy()
    assert entropy.shape == (2,) and quadratic.shape == (2,)
    for b in range(2):
        cov = dense_covariance(post, b)
        sign, logdet = np.linalg.slogdet(cov)
        assert sign > 0
        np.testing.assert_allclose(entropy[b], 0.5 * logdet, rtol=1e-5, atol=1e-4)
        r = (v[b] - post.mu.numpy()[b]).astype(np.float64).ravel()
        np.testing.assert_allclose(quadratic[b], 0.5 * r @ np.linalg.solve(cov, r), rtol=1e-5)


def test_initial_values_and_entropy():
    post = SVFPosterior((1, 3, 2, 2))
    np.testing.assert_array_equal(post.mu.numpy(), 0.0)
    np.testing.assert_allclose(post.sigma.numpy(), 0.5, rtol=1e-6)
    np.testing.assert_allclose(post.u.numpy(), 0.1, rtol=1e-6)
    n = 12
    expected = 0.5 * (np.log1p(n * (0.1 / 0.5) ** 2) + n * np.log(0.25))
    np.testing.assert_allclose(post.entropy().numpy(), [expected], rtol=1e-6)
    post.mu.assign(tf.ones(post.shape))
    post.reset()
    np.testing.assert_array_equal(post.mu.numpy(), 0.0)
    assert len(post.trainable_variables) == 3


def test_entropy_gradient_is_analytic(rng):
    post = random_posterior(rng, 2, batch=1)
    with tf.GradientTape() as tape:
        h = tf.reduce_sum(post.entropy())
    d_u = tape.gradient(h, post.u).numpy()
    sigma2 = post.sigma.numpy().astype(np.float64) ** 2
    u = post.u.numpy().astype(np.float64)
    # d/du 0.5 log(1 + sum u^2 / sigma^2) = (u / sigma^2) / (1 + sum u^2 / sigma^2)
    np.testing.assert_allclose(d_u, (u / sigma2) / (1 + np.sum(u**2 / sigma2)), rtol=1e-4)


@pytest.mark.parametrize("ndim", NDIMS)
def test_antithetic_samples_average_to_mu(rng, ndim):
    post = SVFPosterior((2, *SHAPES[ndim], ndim))
    v1, v2 = post.sample(tf.constant([3, 4]))
    # mu = 0: v2 is exactly -v1, the average is bitwise zero.
    np.testing.assert_array_equal(v1.numpy(), -v2.numpy())
    np.testing.assert_array_equal((v1 + v2).numpy(), 0.0)
    post = random_posterior(rng, ndim)
    v1, v2 = (t.numpy().astype(np.float64) for t in post.sample(tf.constant([5, 6])))
    error = np.abs((v1 + v2) / 2 - post.mu.numpy())
    # Each of mu + d and mu - d is rounded once to float32, so the average is off by at most half
    # an ulp of the larger sample: 2^-24 |v| (asserted with a factor 2 margin).
    bound = 2.0**-23 * np.maximum(np.abs(v1), np.abs(v2))
    assert np.all(error <= bound), float(np.max(error / bound))
    assert error.max() < 1e-6


def test_sample_covariance_approaches_diag_plus_rank_one(rng):
    """20,000 pairs sharing the same parameters: the empirical covariance of one field."""
    batch, spatial = 20000, (3, 2)
    one = random_posterior(rng, 2, batch=1)
    shape = (batch, *spatial, 2)
    post = SVFPosterior(shape)
    for name in ("mu", "log_var", "u"):
        value = getattr(one, name).numpy()[:, :3, :2]
        getattr(post, name).assign(np.broadcast_to(value, shape))
    cov = dense_covariance(post, 0)
    mu = post.mu.numpy()[0].ravel()
    for v in post.sample(tf.constant([11, 12])):
        r = v.numpy().reshape(batch, -1).astype(np.float64) - mu
        empirical = r.T @ r / batch
        # Standard error of an entry is at most ~0.01 here (variances below 1.6).
        np.testing.assert_allclose(empirical, cov, rtol=0, atol=0.06)
        off = ~np.eye(cov.shape[0], dtype=bool)
        # The rank-one term shows: the off-diagonal entries follow u u^T, not zero.
        assert np.corrcoef(empirical[off], cov[off])[0, 1] > 0.95


def test_x_is_one_scalar_per_pair(rng):
    """With sigma ~ 0, ``v - mu = x u``: one ratio per pair, different between pairs."""
    shape = (4, 3, 2, 2)
    post = SVFPosterior(shape)
    post.log_var.assign(np.full(shape, -40.0, np.float32))
    u = rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    post.u.assign(u.astype(np.float32))
    v1, _ = post.sample(tf.constant([1, 2]))
    x = (v1.numpy() / u).reshape(4, -1)
    np.testing.assert_allclose(x, np.broadcast_to(x[:, :1], x.shape), rtol=1e-5, atol=1e-6)
    assert np.unique(np.round(x[:, 0], 4)).size == 4


def test_sample_is_deterministic_in_the_seed(rng):
    post = random_posterior(rng, 3)
    a = post.sample(tf.constant([7, 8]))
    b = post.sample(tf.constant([7, 8]))
    c = post.sample(tf.constant([7, 9]))
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert np.abs(a[0].numpy() - c[0].numpy()).max() > 0.1
    np.testing.assert_array_equal(post.sample(7)[0].numpy(), post.sample(tf.constant([7, 0]))[0])


def test_sample_does_not_retrace_for_new_seeds(rng):
    post = random_posterior(rng, 2)

    @tf.function
    def draw(seed):
        v1, v2 = post.sample(seed)
        return v1, tf.reduce_sum(post.quadratic(v1) + post.quadratic(v2))

    first = draw(tf.constant([0, 1], tf.int64))[0].numpy()
    for i in range(2, 6):
        out = draw(tf.constant([0, i], tf.int64))[0].numpy()
        assert np.abs(out - first).max() > 0.1
    assert draw.experimental_get_tracing_count() == 1


def test_posterior_rejects_ill_arguments():
    with pytest.raises(ValueError, match="n equal to the number of spatial axes"):
        SVFPosterior((1, 5, 4, 3))
    with pytest.raises(ValueError, match="sigma_init must be a finite number > 0"):
        SVFPosterior((1, 5, 4, 2), sigma_init=0.0)
    post = SVFPosterior((1, 5, 4, 2))
    with pytest.raises(ValueError, match=r"posterior's shape \(1, 5, 4, 2\)"):
        post.quadratic(np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="seed must be an integer or an integer tensor"):
        post.sample(tf.constant([1.0, 2.0]))


# --- regulariser and transformation -----------------------------------------------------------


def numpy_regulariser(v, weight):
    """Forward differences, replicate-padded at the far end, squared and summed per pair."""
    total = np.zeros(v.shape[0])
    for axis in range(1, v.ndim - 1):
        d = np.diff(v.astype(np.float64), axis=axis)
        d = np.concatenate([d, np.take(d, [-1], axis=axis)], axis=axis)
        total += np.sum(d**2, axis=tuple(range(1, v.ndim)))
    return 0.5 * weight * total


@pytest.mark.parametrize("ndim", NDIMS)
def test_regulariser_matches_numpy(rng, ndim):
    v = rng.normal(size=(2, *SHAPES[ndim], ndim)).astype(np.float32)
    out = velocity_regulariser(v, 1.8).numpy()
    assert out.shape == (2,)
    np.testing.assert_allclose(out, numpy_regulariser(v, 1.8), rtol=1e-5)
    np.testing.assert_allclose(
        velocity_regulariser(v, tf.constant(2.8)).numpy(), numpy_regulariser(v, 2.8), rtol=1e-5
    )


@pytest.mark.parametrize("ndim", NDIMS)
def test_regulariser_of_constant_and_linear_fields(ndim):
    shape = (1, *SHAPES[ndim], ndim)
    assert velocity_regulariser(np.full(shape, 3.0, np.float32), 1.0).numpy()[0] == 0.0
    # v = a * i along the first axis: every forward difference (and its replica) is a, on every
    # voxel and component.
    a = 0.5
    ramp = a * np.arange(shape[1], dtype=np.float32).reshape((1, -1) + (1,) * ndim)
    ramp = np.broadcast_to(ramp, shape)
    expected = 0.5 * 2.0 * a**2 * np.prod(shape)
    np.testing.assert_allclose(velocity_regulariser(ramp, 2.0).numpy(), [expected], rtol=1e-6)


def test_regulariser_rejects_negative_weight():
    with pytest.raises(ValueError, match="weight must be a finite number >= 0; received weight=-1"):
        velocity_regulariser(np.zeros((1, 5, 4, 2), np.float32), -1.0)


@pytest.mark.parametrize(
    "shape,amplitude,tolerance",
    # Measured max |compose| error: 0.0134 voxels (32^2, amplitude 2) and 0.033 (16^3, 1).
    [((32, 32), 2.0, 0.02), ((16, 16, 16), 1.0, 0.05)],
)
def test_flows_of_v_and_minus_v_are_inverse(shape, amplitude, tolerance):
    """``phi_-v o phi_v = id`` up to linear interpolation of the fields.

    The error is that of the interpolation, not of the 12 squarings (7 squarings give about the
    same); it grows like the square of the amplitude (0.0056, 0.0134, 0.034 voxels for amplitude
    1, 2 and 4 on 32^2), and the tolerance is 1% of the largest displacement in 2-D, 5% on the
    coarser 3-D grid.
    """
    v = smooth_field(shape, amplitude)
    forward = transformation(v, 12)
    backward = transformation(-v, 12)
    assert np.abs(forward.numpy()).max() > 0.8 * amplitude
    for a, b in ((backward, forward), (forward, backward)):
        error = np.linalg.norm(ops.compose(a, b).numpy(), axis=-1).max()
        assert error < tolerance, error
    # Smoothing happens: the displacement differs from that of the raw field.
    raw = transformation(v, 12, smooth=False)
    assert np.abs(raw.numpy() - forward.numpy()).max() > 1e-3
