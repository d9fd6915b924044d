"""Edge ("replicate") padding of the spatial axes, and the crop that undoes it."""

from __future__ import annotations

import numpy as np

from labelreg._tf import tf

__all__ = ["replicate_pad", "crop_border"]


def replicate_pad(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Pad every spatial axis of ``x`` by ``pad`` voxels on each side with its edge values.

    Equivalent to ``np.pad(x, mode="edge")`` on the spatial axes (PyTorch's "replicate"). The
    batch and channel axes are left alone.

    Args:
        x: ``[B, *S, C]``; the spatial sizes may be dynamic.
        pad: non-negative number of voxels.

    Returns:
        ``[B, *(S + 2 pad), C]``, same dtype.
    """
    if pad == 0:
        return x
    for axis in range(1, x.shape.rank - 1):
        size = x.shape[axis]
        if size is None:
            size = tf.shape(x)[axis]
            index = tf.clip_by_value(tf.range(-pad, size + pad), 0, size - 1)
        else:
            index = np.clip(np.arange(-pad, size + pad), 0, size - 1)
        x = tf.gather(x, index, axis=axis)
    return x


def crop_border(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Remove ``pad`` voxels from each side of every spatial axis of ``x`` (the shape change of
    :func:`replicate_pad` undone).

    Args:
        x: ``[B, *S, C]``.
        pad: non-negative number of voxels; each ``S`` must exceed ``2 pad``.

    Returns:
        ``[B, *(S - 2 pad), C]``, the centre of ``x``.
    """
    if pad == 0:
        return x
    return x[(slice(None),) + (slice(pad, -pad),) * (x.shape.rank - 2) + (slice(None),)]
