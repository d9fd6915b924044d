"""GraDIRN: parameter counts, the exact gradient descent it unrolls, second-order training
gradients through the XLA warp, serialisation and argument checks."""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import pytest
from scipy import ndimage

from labelreg import ops
from labelreg._tf import tf
from labelreg.losses.image import ssd
from labelreg.networks.gradirn import (
    GraDIRN,
    _fixed_to_moving_voxels,
    _upsample_ddf,
    ncc_energy,
    pyramid_shapes,
    similarity_gradient,
)

# Small networks for the tests that run the model; the CNN width does not change the algorithm.
SMALL = {"num_levels": 2, "num_repeat": 2, "channels": 4}
SHAPES = {2: (16, 16), 3: (8, 8, 8)}


def smooth_images(rng, shape, batch=2, sigma=1.5):
    """Smooth random images in [0, 1], ``[batch, *shape, 1]``."""
    out = []
    for _ in range(batch):
        x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        out.append((x - x.min()) / (x.max() - x.min()))
    return np.stack(out)[..., None].astype(np.float32)


def blob(shape, centre, radius=3.0):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    d2 = np.sum((grid - np.asarray(centre)) ** 2, -1)
    return np.exp(-d2 / (2 * radius**2)).astype(np.float32)[..., None]


def blob_pairs(ndim, shifts):
    """Fixed blobs at the centre, moving blobs shifted by ``shifts`` (voxels)."""
    shape = SHAPES[ndim]
    centre = np.array([(s - 1) / 2 for s in shape])
    fixed = np.stack([blob(shape, centre) for _ in shifts])
    moving = np.stack([blob(shape, centre + np.asarray(s)) for s in shifts])
    return moving, fixed


def zero_cnn_output(model):
    """Zero each level's last convolution, leaving the similarity gradient step alone."""
    for step in model.steps:
        last = step.convs[-1]
        last.kernel.assign(tf.zeros_like(last.kernel))
        last.bias.assign(tf.zeros_like(last.bias))


def built(ndim, channels_in=1, **kwargs):
    model = GraDIRN(ndim=ndim, **kwargs)
    shape = (None, *SHAPES[ndim], channels_in)
    model.build([shape, shape])
    return model


def diffusion(ddf):
    """GraDIRN's regulariser: mean over voxels of Σ_d |forward difference along d|²
    (Neumann boundary: the last difference is zero)."""
    n = ddf.shape.rank - 2
    # Each difference is one voxel shorter; the missing (Neumann) one contributes zero.
    total = tf.add_n(
        [tf.reduce_sum(tf.square(tf.experimental.numpy.diff(ddf, axis=1 + d))) for d in range(n)]
    )
    return total / tf.cast(tf.reduce_prod(tf.shape(ddf)[:-1]), tf.float32)


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim,expected", [(2, 88_521), (3, 269_964)])
def test_default_parameter_count_matches_reference(ndim, expected):
    model = built(ndim)
    assert model.count_params() == expected
    # 3 levels × (5 kernels + 5 biases + tau), all trainable.
    assert len(model.trainable_weights) == 33
    assert [float(s.tau.numpy()) for s in model.steps] == pytest.approx([0.05] * 3)
    per_cnn = (expected - 3) // 3
    conv = 3**ndim
    assert per_cnn == (
        (conv * (ndim + 2) * 32 + 32) + 3 * (conv * 32 * 32 + 32) + (conv * 32 * ndim + ndim)
    )


def test_parameter_count_multichannel():
    model = GraDIRN(ndim=2, num_levels=2, num_repeat=4, channels=8)
    model.build([(None, 16, 16, 3), (None, 16, 16, 2)])
    cnn = (9 * (2 + 2 + 3) * 8 + 8) + 3 * (9 * 8 * 8 + 8) + (9 * 8 * 2 + 2)
    assert model.count_params() == 2 * (cnn + 1)


def test_initialisation_follows_pytorch_kaiming_uniform():
    """Kernels are U(±gain·sqrt(3/fan_in)) with gain sqrt(2/(1+a²)), biases U(±1/sqrt(fan_in))."""
    model = built(3)
    for step in model.steps:
        for k, conv in enumerate(step.convs):
            kernel, bias = conv.kernel.numpy(), conv.bias.numpy()
            fan_in = math.prod(kernel.shape[:-1])
            a = 0.0 if k == len(step.convs) - 1 else 0.2
            bound = math.sqrt(2.0 / (1 + a**2)) * math.sqrt(3.0 / fan_in)
            assert np.abs(kernel).max() <= bound
            assert np.abs(kernel).max() > 0.95 * bound  # thousands of draws reach the bound
            # uniform on [-b, b]: variance b²/3
            assert kernel.var() == pytest.approx(bound**2 / 3, rel=0.1)
            assert np.abs(bias).max() <= 1.0 / math.sqrt(fan_in)


def test_pyramid_shapes_and_images():
    assert pyramid_shapes((16, 15), 3) == [(16, 15), (8, 8), (4, 4)]
    assert pyramid_shapes((5, 4, 3), 4) == [(5, 4, 3), (3, 2, 2), (2, 1, 1), (1, 1, 1)]
    rng = np.random.default_rng(0)
    model = GraDIRN(ndim=2, num_levels=3)
    moving = rng.random((2, 20, 12, 1), dtype=np.float32)
    fixed = rng.random((2, 16, 16, 1), dtype=np.float32)
    moving_levels, fixed_levels = model.pyramids(moving, fixed)
    assert [tuple(x.shape[1:3]) for x in fixed_levels] == [(16, 16), (8, 8), (4, 4)]
    assert [tuple(x.shape[1:3]) for x in moving_levels] == [(16, 16), (8, 8), (4, 4)]
    # Each halving of an even grid is the mean of 2×2 blocks.
    expected = fixed.reshape(2, 8, 2, 8, 2, 1).mean(axis=(2, 4))
    np.testing.assert_allclose(fixed_levels[1].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(
        moving_levels[0].numpy(), ops.resize(moving, (16, 16)).numpy(), atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# The unrolled gradient descent
# --------------------------------------------------------------------------------------------


def np_warp(image, ddf, offset=None):
    """``image [*S]`` sampled at ``x + ddf[x] (+ offset)`` (linear, border replicated).

    The coordinates ``x + ddf[x]`` are rounded to float32 as in ``ops.warp``. This matters at the
    replicated border: a sample on the last voxel has a zero right-hand slope, and rounding keeps
    it exactly there, where a float64 coordinate could drift inside by rounding noise.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in image.shape], indexing="ij"), -1)
    coords = (grid + ddf).astype(np.float32).astype(np.float64)
    if offset is not None:
        coords = coords + offset
    return ndimage.map_coordinates(image, np.moveaxis(coords, -1, 0), order=1, mode="nearest")


def np_ssd_sum_gradient(target, moving, ddf, h=1e-6):
    """Gradient of Σ_x (warp(moving, ddf)[x] - target[x])² with respect to ``ddf``.

    ``2 (w - t) · ∂w/∂u_d`` per voxel, with the interpolation's own derivative. The interpolation
    is linear along each axis inside a cell, so a forward difference gives that derivative
    exactly up to rounding. At a cell border it picks the right-hand slope, as ``floor`` does in
    ``ops.warp``.
    """
    warped = np_warp(moving, ddf)
    grad = np.zeros_like(ddf)
    for d in range(ddf.shape[-1]):
        offset = np.zeros(ddf.shape[-1])
        offset[d] = h
        slope = (np_warp(moving, ddf, offset) - warped) / h
        grad[..., d] = 2.0 * (warped - target) * slope
    return grad


def np_halve(x):
    """Half-pixel linear halving of an even grid: the mean of 2^n blocks."""
    n = x.ndim
    blocks = x.reshape([v for s in x.shape for v in (s // 2, 2)])
    return blocks.mean(axis=tuple(range(1, 2 * n, 2)))


def np_upsample_ddf(ddf):
    """Half-pixel linear doubling of every component, times 2 (coarse to fine voxels)."""
    comps = [
        ndimage.zoom(ddf[..., d], 2, order=1, mode="nearest", grid_mode=True)
        for d in range(ddf.shape[-1])
    ]
    return 2.0 * np.stack(comps, -1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_cnn_is_exact_gradient_descent_on_ssd(ndim):
    """With the CNN output zeroed, every step is u - tau_l · 10 · ∇ Σ (w - t)² (NumPy)."""
    rng = np.random.default_rng(7)
    moving = smooth_images(rng, SHAPES[ndim])
    fixed = smooth_images(rng, SHAPES[ndim])
    model = built(ndim, **SMALL)
    zero_cnn_output(model)
    taus = [0.08, 0.12]  # distinct per level, to check which level uses which step size
    for step, tau in zip(model.steps, taus, strict=True):
        step.tau.assign(tau)
    steps = model.forward([moving, fixed])["ddf_steps"]
    assert len(steps) == 4

    for b in range(moving.shape[0]):  # NumPy: one sample at a time
        src = [moving[b, ..., 0].astype(np.float64)]
        tar = [fixed[b, ..., 0].astype(np.float64)]
        src.append(np_halve(src[0]))
        tar.append(np_halve(tar[0]))
        u = np.zeros((*tar[1].shape, ndim))
        k = 0
        for level in (1, 0):
            if level == 0:
                u = np_upsample_ddf(u)
            for _ in range(2):
                u = u - taus[level] * 10.0 * np_ssd_sum_gradient(tar[level], src[level], u)
                got = steps[k].numpy()[b]
                scale = np.abs(u).max()
                assert scale > 0.05  # a real displacement
                np.testing.assert_allclose(got, u, rtol=0, atol=2e-4 * scale)
                k += 1
    # The final DDF is the last step's (same shapes: no conversion).
    np.testing.assert_array_equal(model([moving, fixed]).numpy(), steps[-1].numpy())


@pytest.mark.parametrize("ndim", [2, 3])
def test_zero_correction_init_starts_at_the_plain_descent(ndim):
    """correction_init="zero": each level's last convolution starts at zero, so the untrained
    network equals one whose CNN output is zeroed by hand (the plain descent, checked against
    NumPy above); the earlier convolutions keep the reference initialisation, and a training
    gradient reaches the last kernel at once (checked in 2-D)."""
    rng = np.random.default_rng(11)
    pair = [smooth_images(rng, SHAPES[ndim]), smooth_images(rng, SHAPES[ndim])]
    zero = built(ndim, correction_init="zero", **SMALL)
    for step in zero.steps:
        assert not np.any(step.convs[-1].kernel.numpy()) and not np.any(step.convs[-1].bias.numpy())
        assert np.any(step.convs[0].kernel.numpy()) and np.any(step.convs[0].bias.numpy())
    by_hand = built(ndim, **SMALL)
    zero_cnn_output(by_hand)
    want = by_hand(pair).numpy()
    assert np.abs(want).max() > 0.05  # the descent moves
    np.testing.assert_allclose(zero(pair).numpy(), want, rtol=0, atol=1e-6)
    assert GraDIRN.from_config(zero.get_config()).correction_init == "zero"
    if ndim == 3:  # the gradient's path is the same in 3-D, at several times the tracing time
        return
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(zero(pair)))
    last = [step.convs[-1].kernel for step in zero.steps]
    assert all(np.any(g.numpy()) for g in tape.gradient(loss, last))


# Traces a three-level pyramid with XLA (make test-slow).
@pytest.mark.slow
def test_a_three_level_pyramid_does_not_set_off_the_retracing_warning(caplog):
    """Each level's shape traces the compiled warp gradients once (then relaxed shapes serve):
    TensorFlow's "excessive retracing" warning, which counts traces per Python function, must
    not fire for a network that is working as designed."""
    import logging

    rng = np.random.default_rng(5)
    pair = [smooth_images(rng, (12, 10, 8), batch=1), smooth_images(rng, (12, 10, 8), batch=1)]
    model = GraDIRN(ndim=3, num_levels=3, num_repeat=2, channels=2, similarity="nmi")
    logger = logging.getLogger("tensorflow")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="tensorflow"):
            for _ in range(2):
                model(pair)
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()], caplog.text


def test_correction_init_names_its_choices():
    with pytest.raises(ValueError, match=r"correction_init.*'reference', 'zero'.*'random'"):
        GraDIRN(ndim=2, correction_init="random")


def _directional_derivatives(similarity, energy_fn, seed, shape, sigma, fractions, h):
    """The step's gradient (``numel · ∂E/∂u`` per sample) against central differences along a
    random direction: ``(analytic [2], finite difference [2])``.

    ``energy_fn(target, warped)`` is the reference energy of float64 NumPy-warped images; the
    DDF's fractional parts lie in ``fractions``, so ±h stays inside the interpolation cells."""
    rng = np.random.default_rng(seed)
    target = smooth_images(rng, shape, batch=2, sigma=sigma)
    moving = smooth_images(rng, shape, batch=2, sigma=sigma)
    ddf = rng.integers(-1, 2, (2, *shape, 2)) + rng.uniform(*fractions, (2, *shape, 2))
    direction = rng.standard_normal(ddf.shape)
    grad, _ = similarity_gradient(similarity, target, moving, tf.constant(ddf, tf.float32))

    def energy(offset):
        warped = [np_warp(moving[b, ..., 0].astype(np.float64), ddf[b], offset[b]) for b in (0, 1)]
        return energy_fn(target, np.stack(warped)[..., None])

    fd = (energy(h * direction) - energy(-h * direction)) / (2 * h) * math.prod(shape)
    return np.sum(grad.numpy() * direction, axis=(1, 2, 3)), fd


@pytest.mark.parametrize("similarity", ["ssd", "ncc"])
def test_similarity_gradient_matches_finite_differences(similarity):
    """The step's gradient is numel · ∂E/∂u per sample: a directional derivative check."""
    # The references in float64: the ssd energy (losses.image.ssd, which computes in float32)
    # by its formula in NumPy, the ncc energy by the TF function on float64 inputs.
    energy_fn = {"ssd": lambda t, w: np.mean((np.asarray(t) - w) ** 2, axis=(1, 2, 3)),
                 "ncc": lambda t, w: ncc_energy(tf.constant(t, tf.float64), w).numpy()
                 }[similarity]
    analytic, fd = _directional_derivatives(similarity, energy_fn, seed=3, shape=(7, 6),
                                            sigma=1.0, fractions=(0.25, 0.75), h=1e-4)
    np.testing.assert_allclose(analytic, fd, rtol=1e-3, atol=1e-4 * np.abs(fd).max())


@pytest.mark.parametrize("similarity", ["mind", "nmi", "lncc", "gncc"])
def test_registry_energies_give_their_finite_difference_gradient(similarity):
    """The energies beyond ssd / ncc (the image losses of the registry, computed in float32):
    the step's gradient against central differences of the loss itself, with a step large
    enough for float32 energies and small enough to stay inside the interpolation cells."""
    from labelreg.losses.registry import build_loss

    loss = build_loss(similarity, "image")

    def energy_fn(target, warped):
        return loss(tf.constant(target, tf.float32),
                    tf.constant(warped, tf.float32)).numpy().astype(np.float64)

    # NMI's Parzen windows are one bin (1/63) wide, so its energy curves fast: a smaller step.
    analytic, fd = _directional_derivatives(similarity, energy_fn, seed=5, shape=(12, 11),
                                            sigma=1.5, fractions=(0.3, 0.7),
                                            h=1e-3 if similarity == "nmi" else 1e-2)
    assert np.all(np.abs(fd) > 1e-3), fd  # a real slope, not rounding noise
    np.testing.assert_allclose(analytic, fd, rtol=2e-2)


@pytest.mark.parametrize("similarity", ["mind", "nmi"])
def test_a_multimodal_energy_descends_on_an_inverted_image(similarity):
    """Across modalities (the fixed image is the moving one inverted and shifted), the MIND and
    NMI steps lower their energy, where SSD's would pull the wrong way."""
    shifts = [[1.5, -1.0], [-1.0, 1.5]]
    moving, fixed = blob_pairs(2, shifts)
    fixed = 1.0 - fixed
    model = built(2, num_levels=1, num_repeat=3, channels=4, similarity=similarity)
    zero_cnn_output(model)
    from labelreg.losses.registry import build_loss

    energy_fn = build_loss(similarity, "image")
    steps = model.forward([moving, fixed])["ddf_steps"]
    previous = energy_fn(fixed, moving).numpy()
    for ddf in steps:
        current = energy_fn(fixed, ops.warp(moving, ddf, fill_mode="nearest")).numpy()
        assert np.all(current <= previous + 1e-6), (previous, current)
        previous = current
    assert np.all(previous < energy_fn(fixed, moving).numpy())


def test_energies_against_numpy():
    rng = np.random.default_rng(4)
    t = rng.random((3, 5, 4, 2))
    w = rng.random((3, 5, 4, 2))
    np.testing.assert_allclose(ssd(t, w).numpy(), ((t - w) ** 2).mean(axis=(1, 2, 3)))
    tc = t - t.mean(axis=(1, 2, 3), keepdims=True)
    wc = w - w.mean(axis=(1, 2, 3), keepdims=True)
    expected = -((tc * wc).sum((1, 2, 3)) ** 2) / (
        (tc**2).sum((1, 2, 3)) * (wc**2).sum((1, 2, 3)) + 1e-5
    )
    np.testing.assert_allclose(ncc_energy(t, w).numpy(), expected, rtol=1e-12)
    assert ncc_energy(t, 3.0 * t + 1.0).numpy() == pytest.approx([-1.0] * 3, abs=1e-6)


@pytest.mark.parametrize("similarity", ["ssd", "ncc"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_every_descent_step_lowers_its_energy(ndim, similarity):
    """Blobs shifted by 1-2 voxels: each step lowers the energy on its level's grid.

    The CNN output is zeroed: at the reference's random initialisation the CNN's correction is
    larger than the gradient step (see ``test_reference_initialisation_runs``).
    """
    shifts = [[1.5, -1.0, 0.5][:ndim], [-1.0, 2.0, -1.0][:ndim]]
    moving, fixed = blob_pairs(ndim, shifts)
    model = built(ndim, num_levels=2, num_repeat=3, channels=4, similarity=similarity)
    zero_cnn_output(model)
    energy_fn = {"ssd": ssd, "ncc": ncc_energy}[similarity]
    moving_levels, fixed_levels = model.pyramids(moving, fixed)
    steps = model.forward([moving, fixed])["ddf_steps"]

    def energy(level, ddf):
        warped = ops.warp(moving_levels[level], ddf, fill_mode="nearest")
        return energy_fn(fixed_levels[level], warped).numpy()

    k = 0
    start = energy(1, tf.zeros_like(steps[0]))
    for level in (1, 0):
        if level == 1:
            previous = start
        else:
            previous = energy(0, _upsample_ddf(steps[k - 1], SHAPES[ndim]))
        for _ in range(3):
            current = energy(level, steps[k])
            assert np.all(current < previous), (level, k, previous, current)
            previous = current
            k += 1
    # Overall progress on the full-resolution grid.
    initial = energy(0, tf.zeros_like(steps[-1]))
    if similarity == "ssd":
        assert np.all(previous < 0.8 * initial)
    else:
        assert np.all(previous < initial - 0.2)  # NCC energies are in [-1, 0]


def test_reference_initialisation_runs():
    """At the reference's initialisation the CNN's correction dominates: the output is finite
    and its steps differ from the pure gradient-descent ones."""
    moving, fixed = blob_pairs(2, [[1.5, -1.0]])
    model = built(2, **SMALL, similarity="ncc")
    out = model.forward([moving, fixed])
    assert out["ddf"].shape == (1, 16, 16, 2)
    assert np.isfinite(out["ddf"].numpy()).all()
    ddf_with_cnn = out["ddf"].numpy()
    zero_cnn_output(model)
    assert np.abs(model([moving, fixed]).numpy() - ddf_with_cnn).max() > 1e-2


def test_ddf_is_in_moving_voxels_when_shapes_differ():
    rng = np.random.default_rng(5)
    moving = rng.random((2, 16, 12, 1), dtype=np.float32)
    fixed = rng.random((2, 8, 6, 1), dtype=np.float32)
    ddf = _fixed_to_moving_voxels(tf.zeros((2, 8, 6, 2)), tf.constant(moving), tf.constant(fixed))
    # u = 0 on the fixed grid samples the moving image where the resized image samples it.
    np.testing.assert_allclose(
        ops.warp(moving, ddf).numpy(), ops.resize(moving, (8, 6)).numpy(), atol=1e-6
    )
    model = GraDIRN(ndim=2, **SMALL)
    assert model([moving, fixed]).shape == (2, 8, 6, 2)


# --------------------------------------------------------------------------------------------
# Training: second-order gradients through the XLA warp
# --------------------------------------------------------------------------------------------


def make_train_step(model, optimizer=None):
    spec = tf.TensorSpec([None, *model_shape(model), 1], tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def step(moving, fixed):
        with tf.GradientTape() as tape:
            ddf = model([moving, fixed], training=True)
            warped = ops.warp(moving, ddf)
            loss = tf.reduce_mean(tf.square(warped - fixed)) + 0.01 * diffusion(ddf)
        grads = tape.gradient(loss, model.trainable_weights)
        if optimizer is not None:
            optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return loss, grads

    return step


def model_shape(model):
    return SHAPES[model.ndim]


@pytest.mark.parametrize(
    # The compiled warp's second-order gradient against the plain graph is also checked in
    # tests/test_ops_warp.py; here with XLA in make test-slow.
    "ndim,xla", [pytest.param(2, True, marks=pytest.mark.slow), (3, False),
                 pytest.param(3, True, marks=pytest.mark.slow)]
)
def test_training_gradients_under_tf_function(ndim, xla):
    """Under tf.function and an outer tape every weight gets a finite, non-zero gradient. With
    XLA (the default) the compiled warp gives the same second-order gradients as the plain
    graph. (XLA compiles the warp's derivatives once per step, which is slow in a test.)"""
    keras.utils.set_random_seed(0)
    shifts = [[1.5, -1.0, 0.5][:ndim], [-1.0, 2.0, -1.0][:ndim]]
    moving, fixed = blob_pairs(ndim, shifts)
    # Two levels of one step: the fine step's similarity gradient depends on the weights through
    # the coarse step, so the outer gradient has a second-order part.
    model = built(ndim, num_levels=2, num_repeat=1, channels=4)
    with contextlib.nullcontext() if xla else ops.xla_disabled():
        loss, grads = make_train_step(model)(moving, fixed)
    assert np.isfinite(loss.numpy())
    assert len(grads) == len(model.trainable_weights) == 22
    for g, w in zip(grads, model.trainable_weights, strict=True):
        assert g is not None, w.path
        assert np.isfinite(g.numpy()).all(), w.path
        assert np.abs(g.numpy()).max() > 0, w.path
    if not xla:
        return
    with ops.xla_disabled():
        plain_loss, plain_grads = make_train_step(model)(moving, fixed)
    np.testing.assert_allclose(plain_loss.numpy(), loss.numpy(), rtol=1e-5)
    for g, p in zip(grads, plain_grads, strict=True):
        np.testing.assert_allclose(g.numpy(), p.numpy(), rtol=2e-3, atol=1e-5 * np.abs(p).max())


def test_tau_gradient_matches_finite_differences():
    """The outer gradient with respect to tau includes the second-order path."""
    moving, fixed = blob_pairs(2, [[1.5, -1.0]])
    model = built(2, num_levels=1, num_repeat=2, channels=4)
    zero_cnn_output(model)
    tau = model.steps[0].tau

    def loss():
        ddf = model([moving, fixed])
        return tf.reduce_mean(tf.square(ops.warp(moving, ddf) - fixed))

    with tf.GradientTape() as tape:
        value = loss()
    analytic = tape.gradient(value, tau).numpy()
    h = 1e-3
    tau.assign(0.05 + h)
    up = loss().numpy()
    tau.assign(0.05 - h)
    down = loss().numpy()
    assert analytic == pytest.approx((up - down) / (2 * h), rel=2e-2)
    # with two steps, the first step's gradient feeds the second: a second-order term
    assert abs(analytic) > 1e-4


def train(model, moving, fixed, num_steps):
    step = make_train_step(model, keras.optimizers.Adam(1e-3))
    return [float(step(moving, fixed)[0]) for _ in range(num_steps)]


# 30 training steps (make test-slow, beside the defaults' variant below); the default suite
# trains GraDIRN end to end in tests/test_gradirn_method.py.
@pytest.mark.slow
def test_short_training_lowers_the_loss():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    moving, fixed = blob_pairs(2, rng.uniform(-2.0, 2.0, (4, 2)))
    model = built(2, num_levels=2, num_repeat=2, channels=8)
    with ops.xla_disabled():  # the same graph compiles faster without XLA; see the test above
        losses = train(model, moving, fixed, 30)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < min(losses[:5])


@pytest.mark.slow
def test_short_training_defaults_lowers_the_loss():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    moving, fixed = blob_pairs(2, rng.uniform(-2.0, 2.0, (4, 2)))
    model = built(2)
    losses = train(model, moving, fixed, 30)
    assert losses[-1] < 0.2 * losses[0]


# --------------------------------------------------------------------------------------------
# Serialisation and arguments
# --------------------------------------------------------------------------------------------


def test_config_and_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    pair = [smooth_images(rng, (16, 16)), smooth_images(rng, (16, 16))]
    args = {
        "ndim": 2,
        "num_levels": 2,
        "num_repeat": 2,
        "similarity": "ncc",
        "channels": 4,
        "tau_init": 0.03,
        "train_scale": 5.0,
    }
    model = GraDIRN(**args)
    expected = model(pair).numpy()
    assert np.abs(expected).max() > 1e-2

    config = model.get_config()
    assert {k: config[k] for k in args} == args
    clone = GraDIRN.from_config(config)
    assert clone.get_config() == config
    clone(pair)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone(pair).numpy(), expected)

    path = str(tmp_path / "gradirn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is GraDIRN
    assert loaded.get_config() == config
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(loaded(pair).numpy(), expected)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ndim": 4}, "ndim must be 2 or 3; received ndim=4"),
        ({"num_levels": 0}, "num_levels must be a positive integer; received num_levels=0"),
        ({"num_repeat": 1.5}, "num_repeat must be a positive integer; received num_repeat=1.5"),
        (
            {"similarity": "deepsim"},  # needs a trained network: not an inner energy
            r"similarity must be one of \('ssd', 'ncc', 'lncc', 'gncc', 'nmi', 'mind'\); "
            "received similarity='deepsim'",
        ),
        ({"channels": -2}, "channels must be a positive integer; received channels=-2"),
        ({"tau_init": -0.1}, "tau_init must be a finite number >= 0.0; received tau_init=-0.1"),
        ({"tau_init": float("nan")}, "tau_init must be a finite number"),
        ({"train_scale": 0}, "train_scale must be a finite number > 0.0; received train_scale=0"),
        ({"train_scale": True}, "received train_scale=True"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraDIRN(**kwargs)


def test_bad_inputs_name_the_problem():
    model = GraDIRN(ndim=2, **SMALL)
    image = np.zeros((1, 8, 8, 1), np.float32)
    with pytest.raises(ValueError, match="GraDIRN is 2-D: moving_image must have rank 4"):
        model([np.zeros((1, 8, 8, 8, 1), np.float32), image])
    with pytest.raises(ValueError, match="expects a pair"):
        model([image])
