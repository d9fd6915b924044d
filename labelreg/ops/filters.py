"""Separable filtering with zero padding: Gaussian smoothing and box sums.

These run as plain TensorFlow graphs, not XLA: on this kind of CPU the oneDNN convolutions are
30-50x faster than XLA's for long 1-D kernels (measured with sigma 16 on ``[4, 64, 64, 64, 1]``:
0.19 s plain against 9.2 s compiled).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.ops.checks import check_image

__all__ = ["gaussian_kernel1d", "gaussian_filter", "separable_filter"]


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of standard deviation ``sigma`` voxels.

    The half-width is ``int(3 * sigma)`` (label-reg's choice), so the kernel has
    ``2 * int(3 * sigma) + 1`` taps summing to 1; ``sigma == 0`` gives ``[1.0]``.
    """
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0; received sigma={sigma}.")
    if sigma == 0:
        return np.ones(1, np.float32)
    tail = int(3 * sigma)
    x = np.arange(-tail, tail + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2.0 * sigma**2))
    return (kernel / kernel.sum()).astype(np.float32)


def _filter(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    n = x.shape.rank - 2
    shape = tf.shape(x)
    channels = shape[-1]
    # Fold the channels into the batch so one single-channel convolution serves every channel.
    perm = [0, n + 1] + list(range(1, n + 1))
    y = tf.transpose(x, perm)
    folded = tf.reshape(y, tf.concat([[-1], tf.shape(y)[2:], [1]], axis=0))
    for d in range(n):
        kshape = [1] * n + [1, 1]
        kshape[d] = -1
        # An explicit data_format avoids a TF 2.21 crash in the eager Conv3D gradient.
        folded = tf.nn.convolution(folded, tf.reshape(kernel, kshape), padding="SAME",
                                   data_format="NHWC" if n == 2 else "NDHWC")
    unfolded = tf.reshape(folded, tf.concat([[shape[0], channels], tf.shape(folded)[1:-1]], 0))
    inverse = [0] + list(range(2, n + 2)) + [1]
    return tf.transpose(unfolded, inverse)


def separable_filter(x: Any, kernel: Any) -> tf.Tensor:
    """Correlate each channel of ``[B, *S, C]`` with a 1-D kernel along every spatial axis.

    Zero padding outside (``"SAME"``), so it equals ``scipy.ndimage.correlate1d(...,
    mode="constant")`` applied along each spatial axis in turn for odd-length kernels.

    Args:
        x: ``[B, *S, C]`` with 2 or 3 spatial axes.
        kernel: 1-D weights (odd length).

    Returns:
        float32 ``[B, *S, C]``.
    """
    x = check_image(x, "x")
    kernel = tf.reshape(tf.cast(kernel, tf.float32), [-1])
    return _filter(x, kernel)


def gaussian_filter(x: Any, sigma: float) -> tf.Tensor:
    """Smooth each channel of ``[B, *S, C]`` with a separable Gaussian, zero padding outside.

    Equals ``scipy.ndimage.correlate1d(..., mode="constant")`` along every spatial axis with
    :func:`gaussian_kernel1d`. ``sigma == 0`` returns the input unchanged.

    Args:
        x: ``[B, *S, C]`` with 2 or 3 spatial axes.
        sigma: standard deviation in voxels.

    Returns:
        float32 ``[B, *S, C]``.
    """
    x = check_image(x, "x")
    kernel = gaussian_kernel1d(sigma)
    if kernel.size == 1:
        return x
    return _filter(x, tf.constant(kernel))
