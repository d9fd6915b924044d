"""Affine transforms on voxel-index grids, and label-reg's random affine augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.ops.checks import check_image
from labelreg.ops.grid import reference_grid
from labelreg.ops.warp import warp

__all__ = ["affine_to_ddf", "resample_affine", "random_affine", "identity_affine"]


def _check_theta(theta: Any, ndim: int | None = None) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta)
    if theta.dtype != tf.float32:
        theta = tf.cast(theta, tf.float32)
    shape = theta.shape
    ok = shape.rank == 3 and shape[1] in (2, 3) and shape[2] == (shape[1] or 0) + 1
    if ok and ndim is not None:
        ok = shape[1] == ndim
    if not ok:
        n = ndim if ndim is not None else "n"
        raise ValueError(
            f"theta must have shape [batch, {n}, {n}+1] (an affine matrix [A | t] per sample, "
            f"n = 2 or 3); received theta shape {tuple(shape)}."
        )
    return theta


def affine_to_ddf(theta: Any, shape: Sequence[int]) -> tf.Tensor:
    """The dense displacement field of an affine map on a voxel grid.

    ``theta`` maps output voxel indices ``x`` (homogeneous, origin at voxel 0) to input voxel
    indices ``A x + t``, so the displacement is ``A x + t - x``.

    Args:
        theta: ``[B, n, n+1]``, row-major ``[A | t]``.
        shape: the output spatial shape ``S`` (``n`` entries).

    Returns:
        float32 ``[B, *S, n]``.
    """
    shape = [int(s) for s in shape]
    theta = _check_theta(theta, len(shape))
    grid = reference_grid(shape)  # [*S, n]
    matrix, translation = theta[:, :, :-1], theta[:, :, -1]
    mapped = tf.einsum("bij,...j->b...i", matrix, grid)
    translation = tf.reshape(translation, [-1] + [1] * len(shape) + [len(shape)])
    return mapped + translation - grid[None]


def resample_affine(
    image: Any,
    theta: Any,
    output_shape: Sequence[int] | None = None,
    interpolation: str = "linear",
    fill_mode: str = "constant",
    fill_value: float = 0.0,
) -> tf.Tensor:
    """Resample an image through an affine map of voxel indices.

    Args:
        image: ``[B, *S_in, C]``.
        theta: ``[B, n, n+1]`` mapping output voxel indices to input voxel indices.
        output_shape: output spatial shape; defaults to the input's (which must then be static).
        interpolation, fill_mode, fill_value: as for :func:`labelreg.ops.warp`.

    Returns:
        float32 ``[B, *output_shape, C]``.
    """
    image = check_image(image, "image")
    if output_shape is None:
        output_shape = image.shape[1:-1]
        if any(s is None for s in output_shape):
            raise ValueError(
                "resample_affine needs output_shape when the image's spatial shape is not static; "
                f"received image shape {tuple(image.shape)}."
            )
    ddf = affine_to_ddf(theta, output_shape)
    return warp(image, ddf, interpolation=interpolation, fill_mode=fill_mode, fill_value=fill_value)


def identity_affine(batch: int, ndim: int = 3) -> tf.Tensor:
    """``[batch, ndim, ndim+1]`` identity transforms ``[I | 0]``."""
    eye = np.concatenate([np.eye(ndim), np.zeros((ndim, 1))], axis=1).astype(np.float32)
    return tf.constant(np.broadcast_to(eye, (batch, ndim, ndim + 1)).copy())


def random_affine(
    batch: int | tf.Tensor, ndim: int = 3, scale: float = 0.1, seed: Any = None
) -> tf.Tensor:
    """Random affine transforms drawn as label-reg's augmentation draws them.

    The ``n + 1`` corners ``(-1, ..., -1)`` and ``(-1, ..., +1, ..., -1)`` of the cube
    ``[-1, 1]^n`` are each moved inward (towards the centre) by ``U(0, scale)`` per coordinate,
    and the exact affine mapping the original corners to the moved ones is solved for. With the
    default ``scale=0.1`` the diagonal lies in [0.90, 1.00], the off-diagonal within +-0.05 and the
    translation within about +-0.1. Like label-reg, the matrix is applied to voxel indices with the
    origin at voxel 0, so its effect is a zoom/shear of up to ~10 % anchored at that corner.

    Written with TF ops, so it runs inside a ``tf.function`` (e.g. a train step) as well.

    Args:
        batch: number of transforms (an int or a scalar tensor).
        ndim: 2 or 3.
        scale: the largest inward move of a corner coordinate, in [0, 1).
        seed: ``None`` for TensorFlow's global random stream, or an int / ``[2]`` int tensor for a
            stateless draw that depends only on the seed (so a resumed run repeats it).

    Returns:
        float32 ``[batch, ndim, ndim+1]``.
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3; received ndim={ndim}.")
    if not 0.0 <= float(scale) < 1.0:
        raise ValueError(f"scale must be in [0, 1); received scale={scale}.")
    corners = -np.ones((ndim + 1, ndim))
    for d in range(ndim):
        corners[d + 1, ndim - 1 - d] = 1.0  # (-1,-1,-1), (-1,-1,1), (-1,1,-1), (1,-1,-1)
    inward = -np.sign(corners)  # towards the centre of the cube
    source = np.concatenate([corners, np.ones((ndim + 1, 1))], axis=1)  # [n+1, n+1]
    shape = tf.stack([tf.cast(batch, tf.int32), ndim + 1, ndim])
    if seed is None:
        moves = tf.random.uniform(shape, 0.0, scale, dtype=tf.float64)
    else:
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        if seed.shape.rank == 0:
            seed = tf.stack([seed, tf.constant(0, tf.int64)])
        moves = tf.random.stateless_uniform(shape, seed, 0.0, scale, dtype=tf.float64)
    moved = corners + inward * moves  # [B, n+1, n]
    # source @ X = moved has an exact solution: the n+1 corners are affinely independent.
    system = tf.broadcast_to(tf.constant(source), tf.concat([shape[:1], [ndim + 1, ndim + 1]], 0))
    solution = tf.linalg.solve(system, moved)  # [B, n+1, n]
    return tf.cast(tf.transpose(solution, [0, 2, 1]), tf.float32)
