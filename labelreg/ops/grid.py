"""Voxel-index grids."""

from __future__ import annotations

from collections.abc import Sequence

from labelreg._tf import tf

__all__ = ["reference_grid", "soft_centroid"]


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


def soft_centroid(probability: tf.Tensor, prior_mass: float = 1.0) -> tf.Tensor:
    """The probability-weighted mean voxel index of each sample, differentiable.

    ``c = (sum_x p(x) x + m0 centre) / (sum_x p(x) + m0)``: the centroid of ``p`` with a prior
    mass ``m0`` at the grid's centre ``(S - 1) / 2``, so a map with (almost) no mass gives the
    centre instead of 0/0, and a map of mass ``M >> m0`` its plain centroid to ``m0 / M``.

    Args:
        probability: ``[B, *S, 1]``, values in [0, 1] (e.g. a sigmoid segmentation).
        prior_mass: ``m0``, in voxels of probability 1 (>= 0; 0 gives the plain centroid).

    Returns:
        ``[B, n]`` in voxel indices of the grid ``S`` (``ij`` order); float32, or float64 for
        a float64 input.
    """
    p = tf.convert_to_tensor(probability)
    if p.dtype != tf.float64:
        p = tf.cast(p, tf.float32)
    if p.shape.rank not in (4, 5) or p.shape[-1] != 1:
        raise ValueError(f"soft_centroid expects [B, *S, 1] with 2 or 3 spatial axes; received "
                         f"shape {tuple(p.shape)}.")
    if prior_mass < 0:
        raise ValueError(f"prior_mass must be >= 0; received {prior_mass}.")
    shape = tf.shape(p)[1:-1]
    grid = tf.cast(reference_grid(shape), p.dtype)  # [*S, n]
    axes = list(range(1, p.shape.rank - 1))
    centre = (tf.cast(shape, p.dtype) - 1.0) / 2.0  # [n]
    moment = tf.reduce_sum(p * grid, axes)  # [B, n]
    mass = tf.reduce_sum(p, axes)  # [B, 1]
    return (moment + prior_mass * centre) / (mass + prior_mass)
