"""Voxel-index grids."""

from __future__ import annotations

from collections.abc import Sequence

from labelreg._tf import tf

__all__ = ["reference_grid"]


def reference_grid(shape: Sequence[int] | tf.Tensor) -> tf.Tensor:
    """Voxel indices of a grid, ``ij`` order.

    Args:
        shape: spatial shape ``S`` (2 or 3 entries); may be a dynamic shape tensor.

    Returns:
        float32 ``[*S, n]`` with ``grid[i, j, k] == (i, j, k)``.
    """
    if tf.is_tensor(shape):
        sizes = tf.unstack(shape, num=shape.shape[0])
    else:
        sizes = [int(s) for s in shape]
    axes = [tf.range(s, dtype=tf.float32) for s in sizes]
    return tf.stack(tf.meshgrid(*axes, indexing="ij"), axis=-1)
