"""Guidance helpers: carry volumes, labels and points between the frames of a registration.

Every DDF here follows :func:`labelreg.warp`: ``ddf [B, *S_fix, n]`` maps the fixed-image voxel
``x`` (array-index order, ``ij``) to the moving-image voxel ``x + ddf(x)``, in voxels of the
moving image. So

- volumes and labels go from the moving frame to the fixed frame by warping
  (:func:`warp_volumes_by_ddf`): a pre-operative MR label shown on the live US volume;
- points go from the fixed frame to the moving frame directly, ``p + ddf(p)``
  (:func:`transport_points_fixed_to_moving`): a target picked on the US located in the MR;
- points go from the moving frame to the fixed frame through the inverse transform, found by
  fixed-point iteration (:func:`transport_points_moving_to_fixed`): a biopsy target planned on the
  MR carried into the US. :func:`invert_ddf` inverts a whole field the same way.

Displacements between grid voxels are interpolated linearly with the border value replicated
outside the grid, so points slightly outside the field of view still move with the nearest
displacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import shape_text

__all__ = [
    "warp_volumes_by_ddf",
    "transport_points_fixed_to_moving",
    "transport_points_moving_to_fixed",
    "PointTransport",
    "invert_ddf",
    "InverseDDF",
    "compose_affine",
]

_ORDERS = ("ddf_then_affine", "affine_then_ddf")



def warp_volumes_by_ddf(
    volumes: Any,
    ddf: Any,
    interpolation: str = "linear",
    fill_mode: str = "constant",
    fill_value: float = 0.0,
) -> tf.Tensor:
    """Warp moving-frame volumes (images or labels) onto the fixed grid by a DDF.

    label-reg's ``warp_volumes_by_ddf``, for 2-D and 3-D, with or without a channel axis.

    Args:
        volumes: ``[B, *S_mov]`` or ``[B, *S_mov, C]`` (e.g. ``C`` labels of one case).
        ddf: ``[B, *S_fix, n]`` in moving voxels.
        interpolation: ``"linear"`` (soft labels for masks: threshold at 0.5) or ``"nearest"``
            (keeps label values exactly).
        fill_mode, fill_value: outside the moving grid, as for :func:`labelreg.warp`.

    Returns:
        float32 ``[B, *S_fix]`` or ``[B, *S_fix, C]``, matching ``volumes``.

    Raises:
        ValueError: when ``volumes`` has neither ``n + 1`` nor ``n + 2`` axes, or for what
            :func:`labelreg.warp` rejects.
    """
    ddf = ops.check_ddf(ddf, "ddf")
    volumes = tf.convert_to_tensor(volumes)
    n = ddf.shape.rank - 2
    rank = volumes.shape.rank
    if rank not in (n + 1, n + 2):
        raise ValueError(
            f"volumes must have shape [batch, {n} spatial axes] or [batch, {n} spatial axes, "
            f"channels] to match the {n}-D ddf of shape {shape_text(ddf.shape)}; received "
            f"volumes shape {shape_text(volumes.shape)}."
        )
    no_channels = rank == n + 1
    image = volumes[..., None] if no_channels else volumes
    out = ops.warp(image, ddf, interpolation=interpolation, fill_mode=fill_mode,
                   fill_value=fill_value)
    return out[..., 0] if no_channels else out


def _check_points(points: Any, ddf: tf.Tensor, name: str) -> tf.Tensor:
    """``points`` as float32 ``[B, P, n]``; ``[P, n]`` is used for every item of the batch."""
    n = ddf.shape.rank - 2
    p = tf.convert_to_tensor(points)
    p = p if p.dtype == tf.float32 else tf.cast(p, tf.float32)
    if p.shape.rank == 2:
        p = tf.broadcast_to(p[None], tf.concat([tf.shape(ddf)[:1], tf.shape(p)], axis=0))
    if p.shape.rank != 3 or p.shape[-1] != n:
        raise ValueError(
            f"{name} must have shape [batch, points, {n}] or [points, {n}] (voxel coordinates "
            f"in array-index order) for a {n}-D ddf of shape {shape_text(ddf.shape)}; received "
            f"shape {shape_text(p.shape)}."
        )
    b_p, b_d = p.shape[0], ddf.shape[0]
    if b_p is not None and b_d is not None and b_p != b_d:
        raise ValueError(
            f"{name} and ddf must have the same batch size; received {name} shape "
            f"{shape_text(p.shape)} and ddf shape {shape_text(ddf.shape)}."
        )
    return p


def _displacement_at(ddf: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
    """The DDF interpolated linearly at ``points [B, P, n]`` (border replicated): ``[B, P, n]``."""
    n = ddf.shape.rank - 2
    # ops.sample takes a grid of coordinates [B, *S_out, n]: make the points a P x 1 (x 1) grid.
    coords = tf.reshape(points, tf.concat([tf.shape(points)[:2], [1] * (n - 1), [n]], axis=0))
    values = ops.sample(ddf, coords, interpolation="linear", fill_mode="nearest")
    return tf.reshape(values, tf.shape(points))


def transport_points_fixed_to_moving(points: Any, ddf: Any) -> tf.Tensor:
    """Carry points from the fixed frame to the moving frame: ``p + ddf(p)``.

    Args:
        points: ``[B, P, n]`` (or ``[P, n]`` for every pair of the batch) fixed-image voxel
            coordinates, array-index order, not necessarily integers.
        ddf: ``[B, *S_fix, n]``.

    Returns:
        float32 ``[B, P, n]`` moving-image voxel coordinates. Differentiable in both arguments.

    Raises:
        ValueError: for shapes that do not match.
    """
    ddf = ops.check_ddf(ddf, "ddf")
    p = _check_points(points, ddf, "points")
    return p + _displacement_at(ddf, p)


@dataclass(frozen=True)
class PointTransport:
    """Points carried from the moving to the fixed frame, with how well they solve the inverse.

    Attributes:
        points: ``[B, P, n]`` fixed-image voxel coordinates ``x``.
        residual: ``[B, P]`` the error ``|x + ddf(x) - q|`` in moving voxels (Euclidean) for each
            moving point ``q``; small when the inverse was found.
        converged: ``[B, P]`` bool, ``residual <= tolerance``.
        iterations: the number of fixed-point iterations run.
    """

    points: tf.Tensor
    residual: tf.Tensor
    converged: tf.Tensor
    iterations: int


def transport_points_moving_to_fixed(
    points: Any, ddf: Any, max_iterations: int = 100, tolerance: float = 1e-3
) -> PointTransport:
    """Carry points from the moving frame to the fixed frame through the inverse of the DDF.

    For each moving point ``q`` it solves ``x + ddf(x) = q`` by the fixed-point iteration
    ``x <- q - ddf(x)`` from ``x = q - ddf(q)``. The iteration converges when the displacement
    changes by less than one voxel per voxel (spatial gradient norm below 1; the case for smooth,
    non-folding fields), and stops once every residual is below ``tolerance`` or after
    ``max_iterations``. Check ``result.converged`` or ``result.residual``: in folded regions
    there is no unique inverse and the residual stays large.

    Args:
        points: ``[B, P, n]`` (or ``[P, n]``) moving-image voxel coordinates.
        ddf: ``[B, *S_fix, n]``.
        max_iterations: at most this many updates.
        tolerance: target residual, in moving voxels.

    Returns:
        A :class:`PointTransport`.

    Raises:
        ValueError: for shapes that do not match or a non-positive ``max_iterations``.
    """
    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be >= 1; received max_iterations={max_iterations}.")
    ddf = ops.check_ddf(ddf, "ddf")
    q = _check_points(points, ddf, "points")
    x = q - _displacement_at(ddf, q)
    iterations = 1
    while True:
        displacement = _displacement_at(ddf, x)
        residual = tf.norm(x + displacement - q, axis=-1)
        if iterations >= int(max_iterations) or float(tf.reduce_max(residual)) <= tolerance:
            break
        x = q - displacement
        iterations += 1
    return PointTransport(points=x, residual=residual, converged=residual <= tolerance,
                          iterations=iterations)


@dataclass(frozen=True)
class InverseDDF:
    """The inverse of a DDF, on the moving grid.

    Attributes:
        ddf: ``[B, *S_mov, n]``: moving voxel ``y`` maps to fixed voxel ``y + ddf(y)``, in fixed
            voxels; use it as ``labelreg.warp(fixed_image, ddf)`` to bring fixed-frame images
            into the moving frame.
        residual: ``[B, *S_mov]``: ``|v(y) + u(y + v(y))|`` in moving voxels, zero for an exact
            inverse.
        iterations: the number of fixed-point iterations run.
    """

    ddf: tf.Tensor
    residual: tf.Tensor
    iterations: int


def invert_ddf(
    ddf: Any,
    moving_shape: Sequence[int] | None = None,
    max_iterations: int = 50,
    tolerance: float = 1e-3,
) -> InverseDDF:
    """Invert a DDF by fixed-point iteration, on the moving grid.

    Finds ``v`` with ``y + v(y) = x`` wherever ``x + u(x) = y``, from ``v <- -u(y + v)``
    (``u`` read with linear interpolation and border replication), stopping once the largest
    residual is below ``tolerance`` or after ``max_iterations``.

    Args:
        ddf: ``u [B, *S_fix, n]``.
        moving_shape: the moving grid ``S_mov`` on which to express the inverse; defaults to
            ``S_fix``.
        max_iterations: at most this many updates.
        tolerance: target residual in voxels.

    Returns:
        An :class:`InverseDDF`.

    Raises:
        ValueError: for a bad ``moving_shape`` or ``max_iterations``.
    """
    u = ops.check_ddf(ddf, "ddf")
    n = u.shape.rank - 2
    shape = list(u.shape[1:-1]) if moving_shape is None else [int(s) for s in moving_shape]
    if len(shape) != n or any(s is None or s < 1 for s in shape):
        raise ValueError(
            f"moving_shape must list {n} positive sizes for the {n}-D ddf of shape "
            f"{shape_text(u.shape)}; received moving_shape={moving_shape!r}."
        )
    if int(max_iterations) < 1:
        raise ValueError(f"max_iterations must be >= 1; received max_iterations={max_iterations}.")
    v = tf.zeros(tf.concat([tf.shape(u)[:1], shape, [n]], axis=0), tf.float32)
    iterations = 0
    while True:
        # u read at y + v(y): warp treats u as an image in the fixed grid's index space.
        u_at = ops.warp(u, v, fill_mode="nearest")
        residual = tf.norm(v + u_at, axis=-1)
        if iterations >= int(max_iterations) or float(tf.reduce_max(residual)) <= tolerance:
            break
        v = -u_at
        iterations += 1
    return InverseDDF(ddf=v, residual=residual, iterations=iterations)


def compose_affine(
    ddf: Any,
    theta: Any,
    order: str = "ddf_then_affine",
    output_shape: Sequence[int] | None = None,
) -> tf.Tensor:
    """Compose a DDF with an affine map of voxel indices, as one DDF.

    ``theta [B, n, n+1]`` maps voxel indices ``z`` (homogeneous, origin at voxel 0) to
    ``A z + t``, as in :func:`labelreg.resample_affine`. Following points from the output grid:

    - ``"ddf_then_affine"``: ``x -> A (x + u(x)) + t``. Use it when the moving image was first
      resampled by ``theta`` (an affine pre-alignment) and ``u`` registered the resampled image:
      the result maps straight to the ORIGINAL moving image, ``warp(moving, result) ==
      warp(resample_affine(moving, theta), u)``. Exact (no interpolation); on ``u``'s grid.
    - ``"affine_then_ddf"``: ``x -> z + u(z)`` with ``z = A x + t``. Use it when the fixed frame
      moved by a known affine (e.g. a tracked probe) since ``u`` was computed: ``result`` is the
      DDF of the new frame, ``warp(moving, result) == resample_affine(warp(moving, u), theta)``.
      ``u`` is interpolated at ``z`` (border replicated); on a grid of ``output_shape``
      (default ``u``'s).

    Args:
        ddf: ``u [B, *S, n]``.
        theta: ``[B, n, n+1]``, row-major ``[A | t]``.
        order: ``"ddf_then_affine"`` or ``"affine_then_ddf"``.
        output_shape: the output grid for ``"affine_then_ddf"``.

    Returns:
        float32 ``[B, *S_out, n]``.

    Raises:
        ValueError: for an unknown ``order``, ``output_shape`` with ``"ddf_then_affine"`` or
            mismatched dimensions.
    """
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}; received order={order!r}.")
    u = ops.check_ddf(ddf, "ddf")
    n = u.shape.rank - 2
    theta = tf.convert_to_tensor(theta, tf.float32)
    if theta.shape.rank != 3 or tuple(theta.shape[1:]) != (n, n + 1):
        raise ValueError(
            f"theta must have shape [batch, {n}, {n + 1}] for the {n}-D ddf of shape "
            f"{shape_text(u.shape)}; received theta shape {shape_text(theta.shape)}."
        )
    if order == "ddf_then_affine":
        if output_shape is not None:
            raise ValueError(
                "output_shape applies to order='affine_then_ddf' only; 'ddf_then_affine' keeps "
                f"the ddf's grid. Received output_shape={output_shape!r}."
            )
        grid = ops.reference_grid(tf.shape(u)[1:-1])[None]
        moved = grid + u
        matrix, translation = theta[:, :, :n], theta[:, :, n]
        mapped = tf.einsum("bij,b...j->b...i", matrix, moved)
        translation = tf.reshape(translation, [-1] + [1] * n + [n])
        return mapped + translation - grid
    shape = list(u.shape[1:-1]) if output_shape is None else [int(s) for s in output_shape]
    if len(shape) != n or any(s is None for s in shape):
        raise ValueError(
            f"output_shape must list {n} sizes (needed when the ddf's spatial shape is not "
            f"static); received output_shape={output_shape!r} for ddf shape {shape_text(u.shape)}."
        )
    return ops.compose(u, ops.affine_to_ddf(theta, shape))
