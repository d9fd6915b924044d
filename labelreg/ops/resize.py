"""Linear resizing of 2-D images and 3-D volumes."""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.ops.checks import check_image

__all__ = ["resize"]


def _interpolation_matrix(in_size: tf.Tensor, out_size: int) -> tf.Tensor:
    """``[out, in]`` weights of 1-D linear interpolation with half-pixel centres.

    Output sample ``o`` sits at input coordinate ``(o + 0.5) * in / out - 0.5``, clamped to the
    first and last input samples (edge replication), as ``tf.image.resize(method="bilinear")``
    and ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`` place it.
    """
    in_f = tf.cast(in_size, tf.float32)
    source = (tf.range(out_size, dtype=tf.float32) + 0.5) * (in_f / float(out_size)) - 0.5
    source = tf.clip_by_value(source, 0.0, in_f - 1.0)
    lower = tf.floor(source)
    frac = source - lower
    upper = tf.minimum(lower + 1.0, in_f - 1.0)
    return (
        tf.one_hot(tf.cast(lower, tf.int32), in_size) * (1.0 - frac)[:, None]
        + tf.one_hot(tf.cast(upper, tf.int32), in_size) * frac[:, None]
    )


@functools.lru_cache(maxsize=256)
def _static_interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """:func:`_interpolation_matrix` for an input size known when the graph is built, computed
    once in NumPy: a network resizes between the same few sizes at every level and every
    trace, and one constant costs one graph operation where the TensorFlow form costs about
    fifteen (their building took an eighth of a small training's first step)."""
    source = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    source = np.clip(source, 0.0, in_size - 1.0)
    lower = np.floor(source)
    frac = source - lower
    upper = np.minimum(lower + 1.0, in_size - 1.0)
    matrix = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower.astype(int)), 1.0 - frac)
    np.add.at(matrix, (rows, upper.astype(int)), frac)
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False  # shared by every caller through the cache
    return matrix


def resize(image: Any, shape: Sequence[int]) -> tf.Tensor:
    """Resize ``[B, *S, C]`` to ``[B, *shape, C]`` by separable (bi/tri)linear interpolation.

    Each spatial axis is resampled by a small interpolation matrix (two non-zeros a row), so the
    operation is exact N-linear interpolation with half-pixel centres and edge replication, works
    for input shapes only known at run time, and is differentiable. There is no anti-aliasing
    when shrinking, as in label-reg and ``tf.image.resize``.

    Args:
        image: ``[B, *S, C]`` with 2 or 3 spatial axes.
        shape: target spatial shape (``len(S)`` positive ints).

    Returns:
        float32 ``[B, *shape, C]``.
    """
    image = check_image(image, "image")
    n = image.shape.rank - 2
    shape = [int(s) for s in shape]
    if len(shape) != n or min(shape) < 1:
        raise ValueError(
            f"shape must list {n} positive sizes for an image of shape {tuple(image.shape)}; "
            f"received shape={shape}."
        )
    letters = string.ascii_lowercase[: n]
    out = image
    for d in range(n):
        static_in = image.shape[1 + d]
        if static_in == shape[d]:
            continue
        if static_in is None:
            matrix = _interpolation_matrix(tf.shape(image)[1 + d], shape[d])
        else:
            matrix = tf.constant(_static_interpolation_matrix(static_in, shape[d]))
        source = "z" + letters + "y"
        target = source.replace(letters[d], "o")
        out = tf.einsum(f"o{letters[d]},{source}->{target}", matrix, out)
    return out
