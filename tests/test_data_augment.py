"""Tests of labelreg.data.augment: random affine augmentation in TensorFlow ops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import map_coordinates

from labelreg import ops
from labelreg.data.augment import (
    apply_affine,
    augment_batch,
    flip_affines,
    random_intensity,
    step_seed,
)


@pytest.mark.parametrize("ndim", [2, 3])
def test_affines_follow_label_reg_distribution_and_seed(ndim):
    shape = (2,) * ndim  # tiny volumes: this test is about the transforms
    batch = {
        "moving_image": np.zeros((300, *shape, 1), np.float32),
        "fixed_image": np.zeros((300, *shape, 1), np.float32),
    }
    out = augment_batch(batch, 0.1, step_seed(3, 4))
    for key in ("moving_affine", "fixed_affine"):
        theta = out[key].numpy()
        assert theta.shape == (300, ndim, ndim + 1)
        diagonal = theta[:, np.arange(ndim), np.arange(ndim)]
        off = theta[:, :, :ndim][:, ~np.eye(ndim, dtype=bool)]
        # label-reg's distribution: diagonal in [0.90, 1.00], |off-diagonal| <= 0.05, small shift.
        assert diagonal.min() >= 0.9 - 1e-6 and diagonal.max() <= 1.0 + 1e-6
        assert np.abs(off).max() <= 0.05 + 1e-6
        assert np.abs(theta[:, :, ndim]).max() <= 0.1 + 1e-6
        assert abs(diagonal.mean() - 0.95) < 0.01
    again = augment_batch(batch, 0.1, step_seed(3, 4))
    np.testing.assert_array_equal(again["fixed_affine"].numpy(), out["fixed_affine"].numpy())
    other = augment_batch(batch, 0.1, step_seed(3, 5))
    assert not np.allclose(other["fixed_affine"].numpy(), out["fixed_affine"].numpy())
    identity = augment_batch(batch, 0.0, step_seed(1, 1))["moving_affine"].numpy()
    np.testing.assert_allclose(identity, ops.identity_affine(300, ndim).numpy(), atol=1e-6)
    np.testing.assert_array_equal(step_seed(3, 4).numpy(), [3, 4])


def smooth_volume(shape, seed):
    """A smooth random image in [0, 1]: a few low-frequency cosines."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    total = sum(np.cos(grid @ rng.normal(0, 0.3, len(shape)) + rng.uniform(0, 6)) for _ in range(4))
    return ((total - total.min()) / (total.max() - total.min())).astype(np.float32)


# The same shapes in every test, so XLA compiles the warp once per shape.
SHAPES = {2: ((18, 20), (14, 16)), 3: ((12, 14, 10), (10, 12, 8))}
BATCH = 3


@pytest.mark.parametrize("ndim", [2, 3])
def test_apply_affine_equals_scipy(ndim):
    shape = SHAPES[ndim][1]
    image = np.stack([smooth_volume(shape, s) for s in range(BATCH)])[..., None]
    theta = ops.random_affine(BATCH, ndim, 0.1, seed=[0, 9]).numpy()
    warped, none = apply_affine(image, None, theta)
    assert none is None
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), 0).reshape(ndim, -1)
    for b in range(BATCH):
        coords = theta[b, :, :ndim] @ grid + theta[b, :, ndim:]
        expected = map_coordinates(image[b, ..., 0], coords, order=1, mode="grid-constant")
        np.testing.assert_allclose(warped.numpy()[b, ..., 0].ravel(), expected, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_augment_batch_applies_one_transform_to_image_and_label(ndim):
    moving_shape, fixed_shape = SHAPES[ndim]
    batch_size = BATCH
    moving = np.stack([smooth_volume(moving_shape, s) for s in range(batch_size)])[..., None]
    fixed = np.stack([smooth_volume(fixed_shape, 10 + s) for s in range(batch_size)])[..., None]
    batch = {
        "moving_image": moving,
        "fixed_image": fixed,
        # A label equal to the thresholded image, and for moving a label equal to the image.
        "moving_label": moving.copy(),
        "fixed_label": (fixed > 0.5).astype(np.float32),
        "case_index": np.arange(batch_size, dtype=np.int32),
    }
    out = augment_batch(batch, 0.1, step_seed(4, 17))
    assert out["case_index"] is batch["case_index"]
    assert out["moving_image"].shape == moving.shape and out["fixed_label"].shape == fixed.shape
    # Same transform for image and label: identical when the label is the image...
    np.testing.assert_array_equal(out["moving_label"].numpy(), out["moving_image"].numpy())
    # ...and where the warped mask is exactly 0 or 1 (every interpolation corner on one side of
    # the threshold, inside the grid), the warped image lies on the same side of the threshold.
    warped_label = out["fixed_label"].numpy()
    warped_image = out["fixed_image"].numpy()
    certain = (warped_label == 0.0) | (warped_label == 1.0)
    assert certain.mean() > 0.5
    np.testing.assert_array_equal((warped_image > 0.5)[certain], (warped_label == 1.0)[certain])
    # The transform used is the one reported, and moving and fixed differ.
    expected, _ = apply_affine(fixed, None, out["fixed_affine"])
    np.testing.assert_allclose(out["fixed_image"].numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(out["moving_affine"].numpy(), out["fixed_affine"].numpy())
    # Each sample of the batch gets its own transform.
    assert not np.allclose(out["fixed_affine"][0].numpy(), out["fixed_affine"][1].numpy())


def test_augment_batch_is_reproducible_in_a_tf_function():
    moving_shape, fixed_shape = SHAPES[3]
    batch = {
        "moving_image": np.stack([smooth_volume(moving_shape, s) for s in range(BATCH)])[..., None],
        "fixed_image": np.stack([smooth_volume(fixed_shape, s) for s in range(BATCH)])[..., None],
    }

    @tf.function
    def train_step_augment(batch, seed):
        return augment_batch(batch, 0.1, seed)

    eager = augment_batch(batch, 0.1, step_seed(0, 5))
    graph = train_step_augment(batch, step_seed(0, 5))
    np.testing.assert_allclose(graph["moving_image"].numpy(), eager["moving_image"].numpy(), atol=1e-6)
    np.testing.assert_allclose(graph["fixed_affine"].numpy(), eager["fixed_affine"].numpy())
    assert "moving_label" not in graph
    different = augment_batch(batch, 0.1, step_seed(0, 6))
    assert not np.allclose(different["moving_affine"].numpy(), eager["moving_affine"].numpy())


def test_apply_affine_rejects_mismatched_label():
    with pytest.raises(ValueError, match="share their spatial shape"):
        apply_affine(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 5, 1)), ops.identity_affine(1, 2))


@pytest.mark.parametrize("ndim", [2, 3])
def test_translation_adds_independent_bounded_shifts(ndim):
    moving_shape, fixed_shape = SHAPES[ndim]
    count = 64
    batch = {"moving_image": np.zeros((count, *moving_shape, 1), np.float32),
             "fixed_image": np.zeros((count, *fixed_shape, 1), np.float32)}
    plain = augment_batch(batch, 0.1, step_seed(3, 9))
    shifted = augment_batch(batch, 0.1, step_seed(3, 9), translation=5.0)
    for role in ("moving_affine", "fixed_affine"):
        a, b = plain[role].numpy(), shifted[role].numpy()
        # The affine part is the same draw; only the translation column changes.
        np.testing.assert_allclose(b[..., :ndim], a[..., :ndim], atol=1e-7)
        shift = b[..., ndim] - a[..., ndim]
        assert np.all(np.abs(shift) <= 5.0) and np.abs(shift).max() > 4.0
        # Uniform in [-5, 5]: mean about 0 and standard deviation about 10 / sqrt(12).
        assert abs(shift.mean()) < 0.6 and abs(shift.std() - 10 / np.sqrt(12)) < 0.4
    moving_shift = shifted["moving_affine"].numpy()[..., ndim] - plain["moving_affine"].numpy()[..., ndim]
    fixed_shift = shifted["fixed_affine"].numpy()[..., ndim] - plain["fixed_affine"].numpy()[..., ndim]
    assert abs(np.corrcoef(moving_shift.ravel(), fixed_shift.ravel())[0, 1]) < 0.2
    # A pure shift moves the image by whole voxels exactly (scipy's shift as the reference).
    image = smooth_volume(fixed_shape, 1)[None, ..., None]
    theta = np.concatenate([np.eye(ndim), np.full((ndim, 1), 2.0)], axis=1)[None]
    out, _ = apply_affine(image, None, theta.astype(np.float32))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in fixed_shape], indexing="ij"))
    expected = map_coordinates(image[0, ..., 0], grid + 2.0, order=1, mode="grid-constant")
    np.testing.assert_allclose(out.numpy()[0, ..., 0], expected, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_random_intensity_equals_the_gamma_formula(ndim):
    rng = np.random.default_rng(ndim)
    shape = (3, *SHAPES[ndim][1], 2)
    # Any intensity units: the curve runs over each sample's own range.
    scales = np.array([50.0, 1.0, 300.0]).reshape((3,) + (1,) * (ndim + 1))
    image = (rng.random(shape) * scales - 20.0).astype(np.float32)
    image[2] = 7.0  # a constant image stays constant
    log_gamma = np.array([0.3, -0.4, 0.2], np.float32)
    noise = np.array([0.0, 0.05, 0.1], np.float32)
    normal = rng.standard_normal(shape).astype(np.float32)
    out = random_intensity(image, log_gamma, noise, normal).numpy()
    for b in range(2):
        lo, hi = image[b].min(), image[b].max()
        unit = (image[b] - lo) / (hi - lo)
        expected = lo + (hi - lo) * unit ** np.exp(log_gamma[b]) + noise[b] * (hi - lo) * normal[b]
        np.testing.assert_allclose(out[b], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out[2], 7.0)
    # Without noise the range is kept and the order of intensities too.
    clean = random_intensity(image, log_gamma, np.zeros(3, np.float32), normal).numpy()
    np.testing.assert_allclose(clean[0].min(), image[0].min(), atol=1e-5)
    np.testing.assert_allclose(clean[0].max(), image[0].max(), rtol=1e-6)
    order = np.argsort(image[1].ravel())
    assert np.all(np.diff(clean[1].ravel()[order]) >= -1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_intensity_augmentation_leaves_geometry_and_labels_alone(ndim):
    moving_shape, fixed_shape = SHAPES[ndim]
    batch = {
        "moving_image": np.stack([smooth_volume(moving_shape, s) for s in range(BATCH)])[..., None],
        "fixed_image": np.stack([smooth_volume(fixed_shape, s) for s in range(BATCH)])[..., None],
    }
    batch["moving_label"] = (batch["moving_image"] > 0.5).astype(np.float32)
    batch["fixed_label"] = (batch["fixed_image"] > 0.5).astype(np.float32)
    seed = step_seed(2, 11)
    plain = augment_batch(batch, 0.1, seed, translation=2.0)
    bright = augment_batch(batch, 0.1, seed, translation=2.0, intensity_gamma=0.5,
                           intensity_noise=0.1)
    for key in ("moving_affine", "fixed_affine", "moving_label", "fixed_label"):
        np.testing.assert_array_equal(bright[key].numpy(), plain[key].numpy())
    for role in ("moving", "fixed"):
        a, b = plain[f"{role}_image"].numpy(), bright[f"{role}_image"].numpy()
        assert np.abs(a - b).max() > 0.01
        # Each sample is its geometric augmentation under some gamma, plus noise: the
        # correlation with the plain image stays high.
        for i in range(BATCH):
            assert np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] > 0.7
    # Gamma alone is a monotone map of the plain image: recover each sample's gamma and
    # check its bound.
    gamma_only = augment_batch(batch, 0.1, seed, translation=2.0, intensity_gamma=0.5)
    for i in range(BATCH):
        a, b = plain["moving_image"].numpy()[i], gamma_only["moving_image"].numpy()[i]
        lo, hi = a.min(), a.max()
        mid = ((a - lo) / (hi - lo) > 0.2) & ((a - lo) / (hi - lo) < 0.8)
        gammas = np.log((b[mid] - lo) / (hi - lo)) / np.log((a[mid] - lo) / (hi - lo))
        np.testing.assert_allclose(gammas, gammas.mean(), rtol=1e-3)
        assert abs(np.log(gammas.mean())) <= 0.5 + 1e-6


def test_intensity_draws_follow_the_sample_not_the_replica_split():
    moving_shape, fixed_shape = SHAPES[3]
    batch = {
        "moving_image": np.stack([smooth_volume(moving_shape, s) for s in range(4)])[..., None],
        "fixed_image": np.stack([smooth_volume(fixed_shape, s) for s in range(4)])[..., None],
    }
    kwargs = {"translation": 1.0, "intensity_gamma": 0.4, "intensity_noise": 0.05}
    whole = augment_batch(batch, 0.1, step_seed(0, 3), **kwargs)
    half = augment_batch({k: v[2:] for k, v in batch.items()}, 0.1, step_seed(0, 3),
                         sample_index=tf.constant([2, 3]), num_samples=4, **kwargs)
    for role in ("moving_image", "fixed_image"):
        np.testing.assert_allclose(half[role].numpy(), whole[role].numpy()[2:], atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_flip_affines_mirror_the_output_grid_before_the_affine(ndim):
    shape = SHAPES[ndim][1]
    image = np.stack([smooth_volume(shape, s) for s in range(BATCH)])[..., None]
    theta = ops.random_affine(BATCH, ndim, 0.1, seed=[0, 4]).numpy()
    flips = np.zeros((BATCH, ndim), bool)
    flips[0, 0] = True
    flips[1, -1] = True
    flips[2] = True
    composed = flip_affines(theta, flips, shape).numpy()
    warped = apply_affine(image, None, theta)[0].numpy()
    mirrored = apply_affine(image, None, composed)[0].numpy()
    for b in range(BATCH):
        # Mirroring the output of the plain affine, with NumPy, gives the same volume.
        axes = [1 + a for a in range(ndim) if flips[b, a]]
        np.testing.assert_allclose(mirrored[b], np.flip(warped[b], axis=[a - 1 for a in axes]),
                                   atol=1e-5)
    # No flip leaves theta as it is.
    np.testing.assert_allclose(flip_affines(theta, np.zeros((BATCH, ndim), bool), shape).numpy(),
                               theta, atol=1e-6)


@pytest.mark.parametrize("ndim", [2, 3])
def test_flip_axes_mirror_both_images_and_labels_of_a_pair_together(ndim):
    moving_shape, fixed_shape = SHAPES[ndim]
    count = 32
    moving = np.stack([smooth_volume(moving_shape, s % 3) for s in range(count)])[..., None]
    fixed = np.stack([smooth_volume(fixed_shape, 10 + s % 3) for s in range(count)])[..., None]
    batch = {"moving_image": moving, "fixed_image": fixed,
             "moving_label": (moving > 0.5).astype(np.float32),
             "fixed_label": (fixed > 0.5).astype(np.float32)}
    axis = ndim - 1
    out = augment_batch(batch, 0.0, step_seed(2, 9), flip_axes=[axis])
    flipped = []
    for b in range(count):
        for role, volume in (("moving", moving[b]), ("fixed", fixed[b])):
            image, label = out[f"{role}_image"].numpy()[b], out[f"{role}_label"].numpy()[b]
            mirror = np.flip(volume, axis)
            is_flipped = np.allclose(image, mirror, atol=1e-5)
            assert is_flipped or np.allclose(image, volume, atol=1e-5)
            np.testing.assert_array_equal(label, (image > 0.5).astype(np.float32))
            if role == "moving":
                flipped.append(is_flipped)
            else:  # the fixed image of a pair is mirrored exactly when its moving image is
                assert is_flipped == flipped[-1]
    # About half the pairs are mirrored (Binomial(32, 1/2): 6..26 with probability > 0.999).
    assert 6 <= sum(flipped) <= 26
    # Another axis is never touched, and the affines are the same with or without flips.
    other = augment_batch(batch, 0.1, step_seed(2, 9), flip_axes=[0])
    plain = augment_batch(batch, 0.1, step_seed(2, 9))
    np.testing.assert_allclose(other["moving_affine"].numpy()[..., 1:ndim],
                               plain["moving_affine"].numpy()[..., 1:ndim], atol=1e-6)
    # The draws follow the sample, not the replica split.
    half = augment_batch({k: v[4:8] for k, v in batch.items()}, 0.1, step_seed(2, 9),
                         sample_index=tf.constant([4, 5, 6, 7]), num_samples=count,
                         flip_axes=[axis])
    whole = augment_batch(batch, 0.1, step_seed(2, 9), flip_axes=[axis])
    np.testing.assert_allclose(half["fixed_image"].numpy(), whole["fixed_image"].numpy()[4:8],
                               atol=1e-6)
    with pytest.raises(ValueError, match="flip_axes"):
        augment_batch(batch, 0.1, step_seed(2, 9), flip_axes=[ndim])
