"""Tests of labelreg.losses.image: ssd, lncc, gncc, nmi and mind_ssc against NumPy references,
hand-derived values, invariances, and their behaviour on flat (constant, all-zero) images."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from labelreg import losses
from labelreg._tf import tf
from labelreg.losses import image as image_module

# The lazy ``labelreg.losses.gncc`` is added separately; the module function is the same object.
gncc = image_module.gncc

SHAPES = {2: (14, 12), 3: (9, 10, 8)}
# Larger images for the shift tests: cropped with a margin so that shifted crops stay inside.
BIG_SHAPES = {2: (36, 30), 3: (20, 18, 16)}
MARGIN = 3
ALL = {"ssd": losses.ssd, "lncc": losses.lncc, "gncc": gncc, "nmi": losses.nmi,
       "mind": losses.mind_ssc}


def _smooth_images(ndim, seed=0, batch=2, shape=None, sigma=1.0):
    """Smooth random images in [0, 1], with structure on the scale of a few voxels."""
    rng = np.random.default_rng(seed)
    shape = SHAPES[ndim] if shape is None else shape
    x = rng.random((batch, *shape, 1))
    x = ndimage.gaussian_filter(x, (0,) + (sigma,) * ndim + (0,))
    x = (x - x.min()) / (x.max() - x.min())
    return x.astype(np.float32)


def _shifted_crops(ndim, shifts, seed=30, transform=None):
    """Crops of one smooth image: the first unshifted, then shifted by ``s`` voxels along the
    first spatial axis for each ``s`` in ``shifts`` (``transform`` applied to those)."""
    big = _smooth_images(ndim, seed=seed, shape=BIG_SHAPES[ndim], sigma=1.5)

    def crop(s):
        first = slice(MARGIN + s, BIG_SHAPES[ndim][0] - MARGIN + s)
        rest = (slice(MARGIN, -MARGIN),) * (ndim - 1)
        return big[(slice(None), first, *rest)]

    transform = transform or (lambda x: x)
    return crop(0), {s: transform(crop(s)) for s in shifts}


def _gradient(fn, fixed, warped):
    w = tf.constant(warped)
    with tf.GradientTape() as tape:
        tape.watch(w)
        loss = tf.reduce_sum(fn(fixed, w))
    return tape.gradient(loss, w).numpy()


def _check_finite_differences(fn, fixed, warped, step=1e-2, rtol=1e-2):
    """The gradient in ``warped`` against central differences, all evaluated in one batch."""
    grad = _gradient(fn, fixed, warped)[0]
    size = warped[0].size
    bumps = np.eye(size, dtype=np.float32).reshape(size, *warped.shape[1:]) * step
    batch = np.concatenate([warped + bumps, warped - bumps])
    values = fn(np.repeat(fixed, 2 * size, axis=0), batch).numpy()
    numeric = (values[:size] - values[size:]) / (2 * step)
    assert np.abs(grad).max() > 0
    np.testing.assert_allclose(grad.ravel(), numeric, rtol=rtol,
                               atol=rtol * np.abs(numeric).max())


def _tiny_ramp(ndim, values):
    """A 1-voxel-wide line of ``values`` as ``[1, *S, 1]``: a 1-D signal in 2-D or 3-D."""
    return np.asarray(values, np.float32).reshape((1,) * (ndim - 1) + (-1,))[None, ..., None]


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
    """Direct loop over the windows (clipped to the image), centred statistics in float64."""
    r = window // 2
    out = []
    for f, w in zip(fixed.astype(np.float64), warped.astype(np.float64), strict=True):
        f, w = f[..., 0], w[..., 0]
        eps = max(1e-5 * f.var() * w.var(), 1e-30)
        ccs = []
        for index in np.ndindex(f.shape):
            box = tuple(slice(max(i - r, 0), i + r + 1) for i in index)
            a, b = f[box] - f[box].mean(), w[box] - w[box].mean()
            cross, var_a, var_b = np.mean(a * b), np.mean(a * a), np.mean(b * b)
            ccs.append(min(cross**2 / max(var_a * var_b, eps), 1.0))
        out.append(1 - np.mean(ccs))
    return np.array(out)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("window", [3, 5, 9])
def test_lncc_matches_numpy_loop(ndim, window):
    fixed = _smooth_images(ndim, seed=1)
    warped = _smooth_images(ndim, seed=2)
    result = losses.lncc(fixed, warped, window=window).numpy()
    np.testing.assert_allclose(result, _ref_lncc(fixed, warped, window), rtol=1e-4, atol=1e-6)
    assert np.all(result > 0) and np.all(result < 1)
    # A flat block (zero in sample 0, 0.6 in sample 1) and a 1000 offset in the fixed image.
    warped[0, :6], warped[1, :6] = 0.0, 0.6
    result = losses.lncc(fixed + 1000.0, warped, window=window).numpy()
    np.testing.assert_allclose(result, _ref_lncc(fixed, warped, window), rtol=1e-3, atol=1e-5)


def test_lncc_flat_region_gets_no_gradient():
    fixed = _smooth_images(2, seed=3, shape=(40, 24))
    warped = _smooth_images(2, seed=4, shape=(40, 24))
    warped[0, :20], warped[1, :20] = 0.0, 0.7
    grad = np.abs(_gradient(losses.lncc, fixed, warped))
    # Voxels more than two window radii inside the flat half only meet flat windows.
    assert grad[:, :12].max() < 0.01 * grad[:, 28:].max()


@pytest.mark.parametrize("ndim", [2, 3])
def test_lncc_hand_derived_values(ndim):
    # Windows of 3 along a line, clipped at the ends: {0,1}: (0,1) vs (0,1), cc 1;
    # {0,1,2}: (0,1,2) vs (0,1,0), cross 0; {1,2}: (1,2) vs (1,0), anti-correlated, cc 1.
    value = losses.lncc(_tiny_ramp(ndim, [0, 1, 2]), _tiny_ramp(ndim, [0, 1, 0]), window=3)
    np.testing.assert_allclose(value.numpy(), [1 / 3], rtol=1e-6)
    # (0,1,2,3) vs (2,2,2,7): the first two windows are flat in the warped image (cc 0, not 1);
    # {1,2,3}: centred (-1,0,1) and (-5/3,-5/3,10/3) give cross 5/3, variances 2/3 and 50/9,
    # cc = (25/9) / (100/27) = 3/4; {2,3}: cc 1.  1 - (0 + 0 + 3/4 + 1) / 4 = 9/16.
    value = losses.lncc(_tiny_ramp(ndim, [0, 1, 2, 3]), _tiny_ramp(ndim, [2, 2, 2, 7]), window=3)
    np.testing.assert_allclose(value.numpy(), [9 / 16], rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_lncc_identical_and_affine_intensity_invariance(ndim):
    image, other = _smooth_images(ndim, seed=3), _smooth_images(ndim, seed=4)
    np.testing.assert_allclose(losses.lncc(image, image).numpy(), [0, 0], atol=1e-6)
    # Squared local NCC ignores the gain (either sign) and offset of either image.
    for a, b in [(2.5, 0.3), (0.4, -1.0), (-2.0, 0.0), (-0.5, 1.0)]:
        np.testing.assert_allclose(losses.lncc(image, a * image + b).numpy(), [0, 0], atol=1e-4)
    base = losses.lncc(image, other).numpy()
    assert np.all(base > 0.05)
    np.testing.assert_allclose(losses.lncc(image, 3.0 * other + 2.0).numpy(), base, rtol=1e-4)
    np.testing.assert_allclose(losses.lncc(0.2 * image - 5.0, other).numpy(), base, rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_lncc_gradient_matches_finite_differences(ndim):
    shape = {2: (4, 5), 3: (3, 4, 3)}[ndim]
    fixed = _smooth_images(ndim, seed=5, batch=1, shape=shape, sigma=0.5)
    warped = _smooth_images(ndim, seed=6, batch=1, shape=shape, sigma=0.5)
    _check_finite_differences(lambda f, w: losses.lncc(f, w, window=3), fixed, warped)


@pytest.mark.parametrize("window", [0, 4, 2.0, True])
def test_lncc_invalid_window(window):
    image = _smooth_images(2)
    with pytest.raises(ValueError, match=r"window must be an odd integer >= 1"):
        losses.lncc(image, image, window=window)


# --- gncc -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_gncc_analytic_values(ndim):
    ramp = _tiny_ramp(ndim, [0, 1, 2, 3, 4])
    np.testing.assert_allclose(gncc(ramp, ramp).numpy(), [0], atol=1e-6)
    np.testing.assert_allclose(gncc(ramp, -ramp).numpy(), [2], atol=1e-6)
    np.testing.assert_allclose(gncc(ramp, 0.5 * ramp + 7).numpy(), [0], atol=1e-6)
    np.testing.assert_allclose(gncc(ramp, 1 - 3 * ramp).numpy(), [2], atol=1e-6)
    # (0,1,2,3,4) against (0,1,0,1,0): centred (-2,-1,0,1,2) and (-.4,.6,-.4,.6,-.4) give
    # covariance 0 (symmetric), so ncc 0 and loss 1.
    np.testing.assert_allclose(gncc(ramp, _tiny_ramp(ndim, [0, 1, 0, 1, 0])).numpy(), [1],
                               atol=1e-6)
    # Random images (two channels, pooled) against NumPy's Pearson correlation.
    rng = np.random.default_rng(7)
    fixed = rng.random((3, *SHAPES[ndim], 2)).astype(np.float32)
    warped = (0.5 * fixed + rng.random(fixed.shape)).astype(np.float32)
    expected = [1 - np.corrcoef(f.ravel(), w.ravel())[0, 1] for f, w in zip(fixed, warped,
                                                                            strict=True)]
    np.testing.assert_allclose(gncc(fixed, warped).numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gncc_identical_and_affine_intensity_invariance(ndim):
    image, other = _smooth_images(ndim, seed=8), _smooth_images(ndim, seed=9)
    np.testing.assert_allclose(gncc(image, image).numpy(), [0, 0], atol=1e-6)
    np.testing.assert_allclose(gncc(image, 1 - image).numpy(), [2, 2], atol=1e-6)
    base = gncc(image, other).numpy()
    assert np.all(base > 0.05)
    for a, b in [(2.5, 0.3), (0.01, -1.0), (100.0, 50.0)]:
        np.testing.assert_allclose(gncc(image, a * other + b).numpy(), base, rtol=1e-4)
        np.testing.assert_allclose(gncc(a * image + b, other).numpy(), base, rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_gncc_gradient_matches_finite_differences(ndim):
    shape = {2: (4, 5), 3: (3, 4, 3)}[ndim]
    fixed = _smooth_images(ndim, seed=10, batch=1, shape=shape, sigma=0.5)
    warped = _smooth_images(ndim, seed=11, batch=1, shape=shape, sigma=0.5)
    _check_finite_differences(gncc, fixed, warped)


# --- nmi ------------------------------------------------------------------------------------


def _ref_nmi(fixed, warped, bins, sigma=None, vmax=1.0):
    """Parzen-window NMI in float64, written from the docstring's definition."""
    centres = np.linspace(0, vmax, bins)
    if sigma is None:
        sigma = (vmax / (bins - 1)) / (2 * math.sqrt(2 * math.log(2)))
    out = []
    for f, w in zip(fixed.astype(np.float64), warped.astype(np.float64), strict=True):

        def weights(x):
            x = np.clip(x.reshape(-1, 1), 0, vmax)
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
@pytest.mark.parametrize("bins, sigma, vmax", [(8, None, 1.0), (64, None, 1.0),
                                               (32, 0.05, 1.0), (16, None, 2.5)])
def test_nmi_matches_numpy_reference(ndim, bins, sigma, vmax):
    fixed = _smooth_images(ndim, seed=12) * vmax
    warped = np.clip(_smooth_images(ndim, seed=13) * 1.2 - 0.1, -0.2, 1.2) * vmax  # some out
    result = losses.nmi(fixed, warped, bins=bins, sigma=sigma, vmax=vmax).numpy()
    np.testing.assert_allclose(result, _ref_nmi(fixed, warped, bins, sigma, vmax), rtol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
def test_nmi_prefers_identical_over_shifted_and_shuffled(ndim):
    fixed, moved = _shifted_crops(ndim, [-2, -1, 0, 1, 2])
    values = {s: losses.nmi(fixed, image).numpy() for s, image in moved.items()}
    for s in (-2, -1, 1, 2):
        assert np.all(values[0] < values[s] - 0.1), (s, values)
    rng = np.random.default_rng(0)
    shuffled = np.stack([rng.permutation(x.ravel()).reshape(x.shape) for x in fixed])
    mixed = losses.nmi(fixed, shuffled).numpy()
    assert np.all(values[0] < mixed - 0.2), (values[0], mixed)
    assert np.all(values[0] >= -2) and np.all(mixed <= -1 + 1e-6)
    # NMI only sees the joint histogram: an invertible intensity map keeps it high.
    remapped = losses.nmi(fixed, 1 - fixed**2).numpy()
    assert np.all(remapped < mixed - 0.2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_nmi_affine_intensity_change(ndim):
    fixed, moved = _shifted_crops(ndim, [-2, -1, 0, 1, 2])
    # 1 - x maps the bin centres onto themselves: exactly the same value.
    for image in moved.values():
        np.testing.assert_allclose(losses.nmi(fixed, 1 - image).numpy(),
                                   losses.nmi(fixed, image).numpy(), rtol=1e-5)
    # A general a x + b (kept inside [0, vmax]) only changes the bin quantisation: the value
    # moves by a few hundredths and the ranking of the shifts is unchanged.
    for a, b in [(0.6, 0.2), (0.8, 0.0)]:
        plain = {s: losses.nmi(fixed, image).numpy() for s, image in moved.items()}
        mapped = {s: losses.nmi(fixed, a * image + b).numpy() for s, image in moved.items()}
        np.testing.assert_allclose(mapped[0], plain[0], atol=0.08)
        for s in (-2, -1, 1, 2):
            assert np.all(mapped[0] < mapped[s] - 0.1)
    # Scaling both images and vmax together changes nothing.
    np.testing.assert_allclose(losses.nmi(4 * fixed, 4 * moved[1], vmax=4.0).numpy(),
                               losses.nmi(fixed, moved[1]).numpy(), rtol=1e-5)


def test_nmi_voxel_sampling():
    fixed, moved = _shifted_crops(3, [0, 2])
    full = losses.nmi(fixed, moved[2]).numpy()
    np.testing.assert_allclose(losses.nmi(fixed, moved[2], sample_fraction=1.0).numpy(), full)
    half = losses.nmi(fixed, moved[2], sample_fraction=0.5, seed=1).numpy()
    # Deterministic for a seed, another subset for another seed, close to the full value.
    np.testing.assert_array_equal(
        losses.nmi(fixed, moved[2], sample_fraction=0.5, seed=1).numpy(), half)
    assert not np.allclose(
        losses.nmi(fixed, moved[2], sample_fraction=0.5, seed=2).numpy(), half, rtol=1e-6)
    np.testing.assert_allclose(half, full, atol=0.05)
    # The subset is one set of voxels shared by both images: a perfect match stays perfect.
    np.testing.assert_allclose(
        losses.nmi(fixed, fixed, sample_fraction=0.1).numpy(), losses.nmi(fixed, fixed).numpy(),
        atol=0.05)
    assert np.all(losses.nmi(fixed, fixed, sample_fraction=0.1).numpy()
                  < losses.nmi(fixed, moved[2], sample_fraction=0.1).numpy() - 0.2)
    # One voxel at least, and gradients flow to the sampled voxels only.
    assert np.isfinite(losses.nmi(fixed, moved[2], sample_fraction=1e-9).numpy()).all()
    grad = _gradient(lambda f, w: losses.nmi(f, w, sample_fraction=0.25), fixed, moved[2])
    assert np.isfinite(grad).all()
    touched = np.mean(np.abs(grad[0]) > 0)
    assert 0.15 < touched < 0.3, touched


def test_nmi_constant_images_tiny_sigma_and_gradients_are_finite():
    image = _smooth_images(2, seed=14)
    constant = np.full_like(image, 0.3)
    np.testing.assert_allclose(losses.nmi(constant, constant).numpy(), [-1, -1], atol=1e-5)
    for pair in [(image, image), (image, constant)]:
        grad = _gradient(losses.nmi, *pair)
        assert np.isfinite(grad).all()
    assert np.abs(_gradient(losses.nmi, image, _smooth_images(2, seed=15))).max() > 0
    # A sigma far below the bin spacing: the Parzen weights stay normalised (no 0 / 0).
    value = losses.nmi(image, image, bins=8, sigma=1e-4).numpy()
    assert np.isfinite(value).all() and np.all(value < -1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bins": 1}, r"bins must be an integer >= 2; received bins=1"),
        ({"sigma": 0.0}, r"sigma must be a finite number > 0"),
        ({"sigma": float("nan")}, r"sigma must be a finite number > 0"),
        ({"vmax": -1.0}, r"vmax must be a finite number > 0"),
        ({"sample_fraction": 0.0}, r"sample_fraction must be in \(0, 1.0\]"),
        ({"sample_fraction": 1.5}, r"sample_fraction must be in \(0, 1.0\]"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
        ({"seed": 1.5}, r"seed must be an integer >= 0"),
    ],
)
def test_nmi_invalid_options(kwargs, match):
    image = _smooth_images(2)
    with pytest.raises(ValueError, match=match):
        losses.nmi(image, image, **kwargs)


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
    fixed, warped = _smooth_images(ndim, seed=16), _smooth_images(ndim, seed=17)
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
    fixed, warped = _smooth_images(ndim, seed=18), _smooth_images(ndim, seed=19)
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
    image = _smooth_images(3, seed=20)
    constant = np.full_like(image, 0.5)
    np.testing.assert_allclose(losses.mind_ssc(constant, constant).numpy(), [0, 0])
    assert np.isfinite(losses.mind_ssc(image, constant).numpy()).all()
    grad = _gradient(losses.mind_ssc, image, _smooth_images(3, seed=21))
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


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", ["ssd", "lncc", "gncc", "mind"])
def test_identical_images_give_zero(ndim, name):
    image = _smooth_images(ndim, seed=22)
    np.testing.assert_allclose(ALL[name](image, image).numpy(), [0, 0], atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", ["nmi", "mind", "lncc"])
def test_minimum_at_zero_shift_for_a_contrast_inverted_copy(ndim, name):
    fixed, moved = _shifted_crops(ndim, [-2, -1, 0, 1, 2], transform=lambda x: 1 - x)
    values = {s: ALL[name](fixed, image).numpy() for s, image in moved.items()}
    for s in (-2, -1, 1, 2):
        assert np.all(values[0] < values[s]), (s, values)
    if name == "lncc":  # sign-blind: the inverted copy is a perfect match
        np.testing.assert_allclose(values[0], [0, 0], atol=1e-4)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", list(ALL))
def test_flat_images_are_finite_with_finite_gradients(ndim, name):
    fn = ALL[name]
    image = _smooth_images(ndim, seed=23)
    flats = {"constant": np.full_like(image, 0.7), "zeros": np.zeros_like(image)}
    for flat in flats.values():
        for fixed, warped in [(image, flat), (flat, image), (flat, flat)]:
            value = fn(fixed, warped).numpy()
            assert value.shape == (2,) and np.isfinite(value).all(), (fixed, warped, value)
            grad = _gradient(fn, fixed, warped)
            assert np.isfinite(grad).all()
    if name in ("lncc", "gncc"):
        # No evidence of a match, and the flat image gets no pull either way.
        for flat in flats.values():
            for pair in [(image, flat), (flat, image), (flat, flat)]:
                np.testing.assert_allclose(fn(*pair).numpy(), [1, 1], atol=1e-5)
            assert np.abs(_gradient(fn, image, flat)).max() < 1e-2


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("name", list(ALL))
def test_flat_warped_image_scores_worse_than_a_misaligned_one(ndim, name):
    fn = ALL[name]
    fixed, moved = _shifted_crops(ndim, [2])
    misaligned = fn(fixed, moved[2]).numpy()
    aligned = fn(fixed, fixed).numpy()
    assert np.all(aligned < misaligned)
    mean = np.full_like(fixed, fixed.mean())
    for flat in (mean, np.full_like(fixed, 0.5), np.zeros_like(fixed)):
        assert np.all(fn(fixed, flat).numpy() > misaligned), fn(fixed, flat).numpy()


@pytest.mark.parametrize("fn", list(ALL.values()), ids=list(ALL))
def test_image_losses_reject_mismatched_shapes(fn):
    with pytest.raises(ValueError, match=r"fixed.*\(1, 8, 8, 1\).*warped.*\(1, 8, 7, 1\)"):
        fn(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 7, 1)))


@pytest.mark.parametrize(
    "fn",
    [losses.lncc, gncc, losses.nmi, losses.mind_ssc,
     lambda f, w: losses.nmi(f, w, sample_fraction=0.3, seed=4)],
    ids=["lncc", "gncc", "nmi", "mind", "nmi-sampled"],
)
def test_image_losses_work_in_a_graph_with_unknown_batch_and_channels(fn):
    spec = tf.TensorSpec([None, 10, 10, None], tf.float32)
    graph_fn = tf.function(fn, input_signature=[spec, spec])
    fixed, warped = _smooth_images(2, seed=24), _smooth_images(2, seed=25)
    fixed, warped = fixed[:, :10, :10], warped[:, :10, :10]
    np.testing.assert_allclose(
        graph_fn(fixed, warped).numpy(), fn(fixed, warped).numpy(), rtol=1e-5
    )


def test_image_losses_handle_channels_independently():
    fixed = np.concatenate([_smooth_images(2, seed=26), _smooth_images(2, seed=27)], -1)
    warped = np.concatenate([_smooth_images(2, seed=28), 5 * _smooth_images(2, seed=29)], -1)
    for fn in (losses.ssd, losses.lncc, losses.mind_ssc):
        per_channel = [fn(fixed[..., c : c + 1], warped[..., c : c + 1]).numpy() for c in range(2)]
        np.testing.assert_allclose(fn(fixed, warped).numpy(), np.mean(per_channel, 0), rtol=1e-5)


def test_registry_image_losses():
    fixed, warped = _smooth_images(2, seed=23), _smooth_images(2, seed=24)
    # The built-in similarities come first; factories (e.g. ``deepsim``) may follow.
    assert losses.IMAGE_LOSSES[:5] == ("ssd", "lncc", "gncc", "nmi", "mind")
    np.testing.assert_allclose(
        losses.get_image_loss("mind")(fixed, warped).numpy(),
        losses.mind_ssc(fixed, warped).numpy(),
    )
    np.testing.assert_allclose(
        losses.get_image_loss("lncc", window=5)(fixed, warped).numpy(),
        losses.lncc(fixed, warped, window=5).numpy(),
    )
    np.testing.assert_allclose(
        losses.get_image_loss("gncc")(fixed, warped).numpy(), gncc(fixed, warped).numpy()
    )
    np.testing.assert_allclose(
        losses.get_image_loss("nmi", bins=32, sigma=0.02, sample_fraction=0.5, seed=3)(
            fixed, warped).numpy(),
        losses.nmi(fixed, warped, bins=32, sigma=0.02, sample_fraction=0.5, seed=3).numpy(),
    )
    np.testing.assert_allclose(
        losses.get_image_loss("ssd")(fixed, warped).numpy(), losses.ssd(fixed, warped).numpy()
    )
    with pytest.raises(ValueError, match="known names are: ssd, lncc, gncc, nmi, mind"):
        losses.get_image_loss("gmi")
    with pytest.raises(ValueError, match=r"'nmi' does not take option\(s\) \['window'\]"):
        losses.get_image_loss("nmi", window=3)
    with pytest.raises(ValueError, match=r"'gncc' does not take option\(s\) \['window'\]"):
        losses.get_image_loss("gncc", window=3)
