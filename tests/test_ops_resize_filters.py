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


def _correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """scipy's zero-padded correlation along every spatial axis of ``[B, *S, C]``."""
    out = x.astype(np.float64)
    for d in range(x.ndim - 2):
        out = ndimage.correlate1d(out, kernel.astype(np.float64), axis=1 + d, mode="constant")
    return out


def _traced(fn, x: np.ndarray, static: bool):
    """``fn`` run in a graph whose spatial sizes are known (banded matrices) or not
    (convolutions)."""
    shape = x.shape if static else (None, *[None] * (x.ndim - 2), x.shape[-1])
    return tf.function(fn, input_signature=[tf.TensorSpec(shape, tf.float32)],
                       autograph=False)(x).numpy()


@pytest.mark.parametrize("static", [True, False], ids=["static-sizes", "dynamic-sizes"])
@pytest.mark.parametrize("shape", [(11, 12, 10), (15, 16)])
@pytest.mark.parametrize("sigma", [0, 1, 2.5, 8])
def test_gaussian_filter_matches_scipy(rng, shape, sigma, static):
    # sigma 8 has 49 taps, longer than every axis: the band is cut by the zero padding.
    x = rng.uniform(size=(2, *shape, 2)).astype(np.float32)
    out = _traced(lambda v: ops.gaussian_filter(v, sigma), x, static)
    np.testing.assert_allclose(out, _correlate(x, ops.gaussian_kernel1d(sigma)), atol=1e-5)


@pytest.mark.parametrize("static", [True, False], ids=["static-sizes", "dynamic-sizes"])
@pytest.mark.parametrize("shape", [(9, 8, 7), (13, 6)])
def test_filter_gradients_are_the_adjoint_correlation(rng, shape, static):
    # The gradient of a zero-padded correlation is the correlation with the reversed kernel:
    # an asymmetric kernel through separable_filter, the Gaussian (sigma 4, 25 taps, longer
    # than every axis) through gaussian_filter.
    kernel = np.array([0.1, -0.4, 1.0, 0.3, 0.2], np.float32)
    x = rng.normal(size=(2, *shape, 3)).astype(np.float32)
    weights = rng.normal(size=x.shape).astype(np.float32)
    cases = [(lambda v: ops.separable_filter(v, kernel), kernel),
             (lambda v: ops.gaussian_filter(v, 4), ops.gaussian_kernel1d(4))]
    for fn, taps in cases:
        def value_and_gradient(v: tf.Tensor, fn=fn) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(v)
                out = fn(v)
                total = tf.reduce_sum(out * weights)
            return tf.concat([out, tape.gradient(total, v)], axis=-1)

        both = _traced(value_and_gradient, x, static)
        np.testing.assert_allclose(both[..., :3], _correlate(x, taps), atol=1e-5)
        np.testing.assert_allclose(both[..., 3:], _correlate(weights, taps[::-1]), atol=1e-5)


def test_static_sizes_filter_with_one_matrix_product_per_axis_and_no_convolution(rng):
    graph = tf.function(lambda v: ops.gaussian_filter(v, 16), autograph=False
                        ).get_concrete_function(tf.TensorSpec([2, 47, 63, 44, 1])).graph
    types = [op.type for op in graph.get_operations()]
    assert not any(t.startswith("Conv") for t in types)
    assert sum(t == "Const" and op.outputs[0].shape.rank == 2
               for t, op in zip(types, graph.get_operations(), strict=True)) == 3


def test_gaussian_filter_rejects_negative_sigma():
    with pytest.raises(ValueError, match="sigma"):
        ops.gaussian_filter(np.zeros((1, 4, 4, 1)), -1.0)
