"""Tests of comir_tf.register: conventions, recovery of known transforms, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage

from comir_tf.register import (
    corner_error,
    register_rigid,
    register_sift,
    rigid_matrix,
    warp_rigid,
)


def _smooth_image(seed: int, size: int, channels: int = 1, sigma: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=(size, size, channels)), (sigma, sigma, 0),
                                    mode="wrap")
    return ((image - image.mean()) / image.std()).astype(np.float32)


def _pair(angle: float, shift: tuple[float, float], side: int, channels: int = 1,
          seed: int = 0, big: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reference crop and a moved crop of one larger image, and the true matrix."""
    world = _smooth_image(seed, big, channels)
    off = (big - side) / 2.0
    crop = np.array([[1.0, 0.0, off], [0.0, 1.0, off]])
    a = warp_rigid(world, crop, (side, side)).numpy()
    truth = rigid_matrix(angle, shift, (side, side))
    # b(truth @ p) = a(p)  <=>  b(q) = world(crop @ truth^-1 @ q)
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))
    b = warp_rigid(world, crop @ inverse, (side, side)).numpy()
    return a, b, truth


def test_rigid_matrix_convention():
    m = rigid_matrix(90.0, (2.0, -1.0), (5, 7))  # H=5, W=7: centre (3, 2)
    centre = np.array([3.0, 2.0, 1.0])
    np.testing.assert_allclose(m @ centre, [3.0 + 2.0, 2.0 - 1.0], atol=1e-12)
    # x axis goes to y axis for +90 degrees (R = [[0, -1], [1, 0]]).
    np.testing.assert_allclose(m @ (centre + [1.0, 0.0, 0.0]) - m @ centre, [0.0, 1.0],
                               atol=1e-12)


@pytest.mark.parametrize("channels", [1, 2])
def test_warp_rigid_matches_scipy_affine_transform(channels):
    image = _smooth_image(1, 40, channels)[:30]  # non-square: H=30, W=40
    m = rigid_matrix(23.0, (3.5, -2.25), (26, 34), (30, 40))
    out = warp_rigid(image, m, (26, 34)).numpy()
    # scipy works in (row, col) = (y, x).
    matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
    offset = np.array([m[1, 2], m[0, 2]])
    for c in range(channels):
        expected = ndimage.affine_transform(image[..., c], matrix, offset, output_shape=(26, 34),
                                            order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[..., c], expected, atol=1e-4)


def test_corner_error_analytic():
    identity = rigid_matrix(0.0, (0.0, 0.0), (10, 10))
    shifted = rigid_matrix(0.0, (3.0, 4.0), (10, 10))
    assert corner_error(shifted, identity, (10, 10)) == pytest.approx(5.0)
    # A rotation by 180 degrees about the centre moves every corner across the diagonal.
    turned = rigid_matrix(180.0, (0.0, 0.0), (10, 10))
    assert corner_error(turned, identity, (10, 10)) == pytest.approx(9 * np.sqrt(2))


# Each case is a full multi-start search (about 6 s); the single-channel one runs in make
# test-slow.
@pytest.mark.parametrize("angle, shift, channels", [
    pytest.param(17.0, (6.3, -9.1), 1, marks=pytest.mark.slow), (-28.0, (-7.0, 4.5), 3)])
def test_register_rigid_recovers_known_transform(angle, shift, channels):
    a, b, truth = _pair(angle, shift, 64, channels, big=112)
    result = register_rigid(a, b)
    assert abs(result.angle - angle) < 1.0
    assert np.hypot(result.translation[0] - shift[0], result.translation[1] - shift[1]) < 1.0
    np.testing.assert_allclose(result.matrix, rigid_matrix(result.angle, result.translation,
                                                           (64, 64)))
    assert corner_error(result.matrix, truth, (64, 64)) < 1.0
    assert result.cost < 0.01  # the images match after alignment


def test_register_rigid_mutual_information_handles_a_non_monotone_map():
    a, b, _ = _pair(12.0, (-5.0, 7.0), 96, seed=3)
    # Different "modalities": a folded, non-monotone intensity map of B.
    lo, hi = b.min(), b.max()
    scaled_a = (a - lo) / (hi - lo)
    folded_b = np.abs((b - lo) / (hi - lo) - 0.5) * 2.0
    assert np.corrcoef(scaled_a.ravel(), folded_b.ravel())[0, 1] < 0.5
    # Few starts keep the test quick; the multi-start search is exercised above.
    result = register_rigid(scaled_a, folded_b, cost="mi", angle_step=90.0, translation_starts=1)
    assert abs(result.angle - 12.0) < 1.0
    assert np.hypot(result.translation[0] + 5.0, result.translation[1] - 7.0) < 1.0
    assert result.cost < 0.0  # minus the mutual information


def test_register_rigid_input_errors():
    a = np.zeros((32, 32), np.float32)
    with pytest.raises(ValueError, match="same number of channels"):
        register_rigid(a, np.zeros((32, 32, 2), np.float32))
    with pytest.raises(ValueError, match="at least 8x8"):
        register_rigid(a, np.zeros((4, 32), np.float32))
    with pytest.raises(ValueError, match="cost must be one of"):
        register_rigid(a, a, cost="ncc")
    with pytest.raises(ValueError, match="angle_step"):
        register_rigid(a, a, angle_step=0.0)
    with pytest.raises(ValueError, match="NaN"):
        register_rigid(np.full((32, 32), np.nan, np.float32), a)


def test_register_sift_needs_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # make `import cv2` fail even if installed
    with pytest.raises(ImportError, match=r"labelreg\[opencv\]"):
        register_sift(np.zeros((32, 32), np.float32), np.zeros((32, 32), np.float32))
