"""resize against scipy.ndimage.zoom, and the Gaussian filter against scipy.ndimage.correlate1d."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from labelreg import ops
from labelreg.ops.resize import _interpolation_matrix, _static_interpolation_matrix


@pytest.mark.parametrize(
    "shape_in,shape_out",
    [((69, 69, 64), (47, 63, 44)), ((5, 6, 7), (11, 13, 14)), ((12, 9), (5, 18)), ((8, 8), (8, 8))],
)
def test_resize_matches_scipy_zoom(rng, shape_in, shape_out):
    image = rng.normal(size=(1, *shape_in, 2)).astype(np.float32)
    out = ops.resize(image, shape_out).numpy()
    assert out.shape == (1, *shape_out, 2)
    for c in range(2):
        zoom = [o / i for o, i in zip(shape_out, shape_in, strict=True)]
        ref = ndimage.zoom(image[0, ..., c].astype(np.float64), zoom, order=1, mode="nearest",
                           grid_mode=True)
        # Three chained float32 matrix products against a float64 reference.
        np.testing.assert_allclose(out[0, ..., c], ref, atol=5e-5)


def test_resize_matches_tf_image_resize_2d(rng):
    image = rng.normal(size=(2, 13, 17, 3)).astype(np.float32)
    ref = tf.image.resize(image, (7, 29), method="bilinear").numpy()
    np.testing.assert_allclose(ops.resize(image, (7, 29)).numpy(), ref, atol=1e-5)


def test_resize_dynamic_shape(rng):
    image = rng.normal(size=(1, 9, 10, 11, 1)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None, 1])])
    def fn(x):
        return ops.resize(x, (5, 6, 7))

    np.testing.assert_allclose(fn(image).numpy(), ops.resize(image, (5, 6, 7)).numpy(), atol=1e-5)


def test_static_sizes_resize_with_one_constant_per_axis(rng):
    # Sizes known when the graph is built give a precomputed matrix (one constant an axis);
    # only sizes known at run time build the matrix from TensorFlow operations.
    def graph_ops(spec):
        return tf.function(lambda x: ops.resize(x, (5, 6, 7))).get_concrete_function(
            spec).graph.get_operations()

    static = graph_ops(tf.TensorSpec([2, 9, 10, 11, 1]))
    dynamic = graph_ops(tf.TensorSpec([None, None, None, None, 1]))
    assert not any(op.type == "OneHot" for op in static)
    assert sum(op.type == "OneHot" for op in dynamic) == 6
    assert len(static) < len(dynamic) / 2
    # Down and up, odd and even: the precomputed rows (float64, then rounded) equal the
    # TensorFlow form's within its float32 rounding of coordinates up to 64 (eps * 64 = 8e-6).
    for size_in, size_out in ((9, 5), (5, 11), (64, 47), (7, 7), (1, 4), (4, 1)):
        np.testing.assert_allclose(_static_interpolation_matrix(size_in, size_out),
                                   _interpolation_matrix(tf.constant(size_in), size_out).numpy(),
                                   atol=1e-5)


def test_resize_errors():
    with pytest.raises(ValueError, match="shape must list 3"):
        ops.resize(np.zeros((1, 4, 4, 4, 1)), (4, 4))


@pytest.mark.parametrize("sigma,length", [(0, 1), (1, 7), (2, 13), (4, 25), (8, 49), (16, 97)])
def test_gaussian_kernel_lengths_follow_label_reg(sigma, length):
    kernel = ops.gaussian_kernel1d(sigma)
    assert kernel.size == length
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(kernel, kernel[::-1])


@pytest.mark.parametrize("shape", [(11, 12, 10), (15, 16)])
@pytest.mark.parametrize("sigma", [0, 1, 2.5, 8])
def test_gaussian_filter_matches_scipy(rng, shape, sigma):
    x = rng.uniform(size=(2, *shape, 2)).astype(np.float32)
    out = ops.gaussian_filter(x, sigma).numpy()
    kernel = ops.gaussian_kernel1d(sigma).astype(np.float64)
    ref = x.astype(np.float64)
    for d in range(len(shape)):
        ref = ndimage.correlate1d(ref, kernel, axis=1 + d, mode="constant")
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_gaussian_filter_rejects_negative_sigma():
    with pytest.raises(ValueError, match="sigma"):
        ops.gaussian_filter(np.zeros((1, 4, 4, 1)), -1.0)
