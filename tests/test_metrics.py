"""Tests of labelreg.metrics against hand-built cases, NumPy/SciPy and real MR/US labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from labelreg import metrics, ops
from labelreg._tf import tf


def _box(shape, lo, hi, batch=1):
    """Mask ``[batch, *shape, 1]`` that is 1 on the box ``lo <= x < hi``."""
    mask = np.zeros((batch, *shape, 1), np.float32)
    mask[(slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))] = 1
    return mask


# --- dice -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_dice_hand_values(ndim):
    shape = (10,) * ndim
    a = _box(shape, (2,) * ndim, (6,) * ndim)  # 4^n voxels
    b = _box(shape, (4,) + (2,) * (ndim - 1), (8,) + (6,) * (ndim - 1))  # half overlaps
    assert metrics.dice(a, b).numpy() == pytest.approx([0.5])
    assert metrics.dice(a, a).numpy() == pytest.approx([1.0])
    empty = np.zeros_like(a)
    assert metrics.dice(empty, empty).numpy() == pytest.approx([1.0])
    assert metrics.dice(a, empty).numpy() == pytest.approx([0.0])
    # Soft values are binarised at the threshold: 0.5 counts as inside.
    assert metrics.dice(a * 0.5, a).numpy() == pytest.approx([1.0])
    assert metrics.dice(a * 0.5, a, threshold=0.6).numpy() == pytest.approx([0.0])


def test_dice_is_per_sample_and_never_nan():
    a = np.concatenate([_box((6, 6), (1, 1), (3, 3)), np.zeros((1, 6, 6, 1), np.float32)])
    result = metrics.dice(a, a)
    assert result.shape == (2,) and result.dtype == tf.float32
    np.testing.assert_array_equal(result.numpy(), [1.0, 1.0])


# --- centroid distance ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "shift, spacing",
    [((2, -1), None), ((3, 1), (1.5, 0.5)), ((2, -1, 3), None), ((1, 2, -2), (1.5, 2.0, 0.5))],
)
def test_centroid_distance_of_shifted_cube(shift, spacing):
    ndim = len(shift)
    shape = (16,) * ndim
    a = _box(shape, (5,) * ndim, (9,) * ndim)
    b = np.roll(a, shift, axis=tuple(range(1, ndim + 1)))
    sizes = np.ones(ndim) if spacing is None else np.array(spacing)
    expected = np.linalg.norm(np.array(shift) * sizes)
    assert metrics.centroid_distance(a, b, spacing=spacing).numpy() == pytest.approx(
        [expected], rel=1e-6
    )


def test_centroid_distance_per_sample_spacing_and_empty_mask():
    a = _box((12, 12), (2, 2), (6, 6), batch=3)
    b = np.roll(a, (3, 4), axis=(1, 2))
    b[2] = 0  # no centroid: NaN for that sample only
    spacing = np.array([[1.0, 1.0], [2.0, 0.5], [1.0, 1.0]])
    result = metrics.centroid_distance(a, b, spacing=spacing).numpy()
    np.testing.assert_allclose(result[:2], [5.0, np.hypot(6.0, 2.0)], rtol=1e-6)
    assert np.isnan(result[2])


@pytest.mark.parametrize("spacing", [(1.0,), (1.0, -2.0), np.ones((3, 2)), "1,1"])
def test_centroid_distance_rejects_bad_spacing(spacing):
    a = _box((8, 8), (2, 2), (4, 4), batch=2)
    with pytest.raises(ValueError, match="spacing must be 2 positive voxel sizes"):
        metrics.centroid_distance(a, a, spacing=spacing)


def test_single_channel_metrics_reject_several_channels():
    a = np.zeros((1, 8, 8, 2), np.float32)
    with pytest.raises(ValueError, match=r"single-channel masks.*\(1, 8, 8, 2\)"):
        metrics.centroid_distance(a, a)
    with pytest.raises(ValueError, match="single-channel masks"):
        metrics.hausdorff95(a, a)


def test_mismatched_shapes_name_both():
    with pytest.raises(
        ValueError,
        match=r"a and b must have the same shape.*\(1, 8, 8, 1\).*"
        r"\(1, 8, 6, 1\)",
    ):
        metrics.dice(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 6, 1)))


# --- Jacobian and folding -------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_of_identity_and_of_linear_map(ndim):
    shape = (6, 7, 5)[:ndim]
    zero = np.zeros((2, *shape, ndim), np.float32)
    det = metrics.jacobian_determinant(zero)
    assert det.shape == (2, *(s - 2 for s in shape))
    np.testing.assert_allclose(det.numpy(), 1.0)
    np.testing.assert_allclose(metrics.folding_ratio(zero).numpy(), [0.0, 0.0])

    rng = np.random.default_rng(ndim)
    matrix = np.eye(ndim) + rng.uniform(-0.4, 0.4, (ndim, ndim))
    theta = np.concatenate([matrix, rng.uniform(-1, 1, (ndim, 1))], 1)[None].astype(np.float32)
    ddf = ops.affine_to_ddf(theta, shape)  # x -> A x + t
    np.testing.assert_allclose(
        metrics.jacobian_determinant(ddf).numpy(), np.linalg.det(matrix), rtol=1e-5
    )


@pytest.mark.parametrize("ndim", [2, 3])
def test_folding_ratio_of_folding_fields(ndim):
    shape = (8,) * ndim
    grid = np.stack(np.meshgrid(*[np.arange(8.0)] * ndim, indexing="ij"), -1)
    # Mirror axis 0 everywhere: x0 -> -x0 has det -1 at every voxel.
    mirror = np.zeros((1, *shape, ndim))
    mirror[..., 0] = -2 * grid[..., 0]
    np.testing.assert_allclose(metrics.jacobian_determinant(mirror).numpy(), -1.0, rtol=1e-6)
    assert metrics.folding_ratio(mirror).numpy() == pytest.approx([1.0])
    # Fold where x0 >= 4: u0 = -2 (x0 - 3) there, else 0. The central difference of u0 on the
    # interior x0 = 1..6 is 0, 0, -1, -2, -2, -2, so det = 1, 1, 0, -1, -1, -1: 4 of 6 slices
    # fold (det <= 0).
    partial = np.zeros((1, *shape, ndim))
    partial[..., 0] = np.where(grid[..., 0] >= 4, -2 * (grid[..., 0] - 3), 0.0)
    det = metrics.jacobian_determinant(partial).numpy()[0]
    np.testing.assert_allclose(det[:2], 1.0)
    np.testing.assert_allclose(det[2], 0.0, atol=1e-6)
    np.testing.assert_allclose(det[3:], -1.0)
    assert metrics.folding_ratio(partial).numpy() == pytest.approx([4 / 6])


def test_jacobian_rejects_wrong_components():
    with pytest.raises(ValueError, match=r"ddf.*3 displacement components.*2 spatial"):
        metrics.jacobian_determinant(np.zeros((1, 6, 6, 3)))


# --- surface distances ----------------------------------------------------------------------


def _concentric(ndim, outer=4, inner=2, size=13):
    c = size // 2
    a = _box((size,) * ndim, (c - inner,) * ndim, (c + inner + 1,) * ndim)
    b = _box((size,) * ndim, (c - outer,) * ndim, (c + outer + 1,) * ndim)
    return a, b


def _hand_distances(ndim, spacing, outer=4, inner=2):
    """Surface distances of concentric cubes by enumeration (no distance transform).

    Inner shell voxel p (max|p_i| = inner) to the outer shell: move along one axis to
    |q_i| = outer, so min_i s_i (outer - |p_i|). Outer shell voxel q to the inner cube's shell:
    its projection onto the inner box, so sqrt(Σ (s_i max(|q_i| - inner, 0))²).
    """
    s = np.asarray(spacing, float)
    coords = np.array(list(itertools.product(range(-outer, outer + 1), repeat=ndim)))
    cheb = np.abs(coords).max(1)
    inner_shell, outer_shell = np.abs(coords[cheb == inner]), np.abs(coords[cheb == outer])
    d_in = (s * (outer - inner_shell)).min(1)
    d_out = np.sqrt(((s * np.maximum(outer_shell - inner, 0)) ** 2).sum(1))
    return d_in, d_out


def test_surface_distances_of_concentric_squares_by_hand():
    # Squares of half-sides 2 and 4: all 16 inner-shell voxels lie 2 from the outer shell; of
    # the 32 outer-shell voxels 20 lie 2 from the inner shell, 8 lie sqrt(5), 4 corners sqrt(8).
    a, b = _concentric(2)
    asd = (16 * 2 + 20 * 2 + 8 * np.sqrt(5) + 4 * np.sqrt(8)) / 48
    # The 95th percentile of the outer distances lies among the 4 corners (top 12.5 %).
    assert metrics.hausdorff95(a, b).numpy() == pytest.approx([np.sqrt(8)], rel=1e-6)
    assert metrics.hausdorff95(b, a).numpy() == pytest.approx([np.sqrt(8)], rel=1e-6)
    assert metrics.average_surface_distance(a, b).numpy() == pytest.approx([asd], rel=1e-6)
    assert metrics.average_surface_distance(a, b, spacing=(1.5, 1.5)).numpy() == pytest.approx(
        [1.5 * asd], rel=1e-6
    )


@pytest.mark.parametrize(
    "ndim, spacing", [(2, (1.0, 1.0)), (2, (1.0, 2.5)), (3, (1.0, 1.0, 1.0)), (3, (1.5, 0.5, 2.0))]
)
def test_surface_distances_of_concentric_cubes(ndim, spacing):
    a, b = _concentric(ndim)
    d_in, d_out = _hand_distances(ndim, spacing)
    hd95 = max(np.percentile(d_in, 95), np.percentile(d_out, 95))
    asd = np.concatenate([d_in, d_out]).mean()
    assert metrics.hausdorff95(a, b, spacing=spacing).numpy() == pytest.approx([hd95], rel=1e-6)
    assert metrics.average_surface_distance(a, b, spacing=spacing).numpy() == pytest.approx(
        [asd], rel=1e-6
    )


def test_surface_distances_identical_empty_and_batched():
    a, b = _concentric(3)
    batch_a = np.concatenate([a, a, np.zeros_like(a)])
    batch_b = np.concatenate([a, b, b])
    hd = metrics.hausdorff95(batch_a, batch_b).numpy()
    asd = metrics.average_surface_distance(batch_a, batch_b, spacing=np.ones((3, 3))).numpy()
    assert hd[0] == 0 and asd[0] == 0
    assert hd[1] > 0 and asd[1] > 0
    assert np.isnan(hd[2]) and np.isnan(asd[2])


# --- real labels ----------------------------------------------------------------------------


def test_metrics_on_real_prostate_labels(mrus_sample_dir):
    fixed = np.asarray(nib.load(Path(mrus_sample_dir) / "fixed_labels" / "obs000.nii.gz").dataobj)
    gland = fixed[..., 0][None, ..., None].astype(np.float32)  # [1, 47, 63, 44, 1]
    landmark = fixed[..., 1][None, ..., None].astype(np.float32)
    spacing = (1.5, 1.5, 1.5)
    centres = [np.array(ndimage.center_of_mass(m[0, ..., 0] >= 0.5)) for m in (gland, landmark)]
    expected = 1.5 * np.linalg.norm(centres[0] - centres[1])
    assert metrics.centroid_distance(gland, landmark, spacing=spacing).numpy() == pytest.approx(
        [expected], rel=1e-5
    )
    overlap = np.logical_and(gland >= 0.5, landmark >= 0.5).sum()
    expected_dice = 2 * overlap / ((gland >= 0.5).sum() + (landmark >= 0.5).sum())
    assert metrics.dice(gland, landmark).numpy() == pytest.approx([expected_dice], rel=1e-6)
    assert metrics.hausdorff95(gland, gland, spacing=spacing).numpy() == pytest.approx([0.0])
    # Shifting the gland by one voxel along axis 0 moves every surface voxel at most 1.5 mm.
    shifted = np.roll(gland, 1, axis=1)
    hd = metrics.hausdorff95(gland, shifted, spacing=spacing).numpy()[0]
    asd = metrics.average_surface_distance(gland, shifted, spacing=spacing).numpy()[0]
    assert 0 < asd <= hd <= 1.5 + 1e-6
