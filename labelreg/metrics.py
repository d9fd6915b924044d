"""Evaluation metrics: overlap, centroid and surface distances, Jacobian determinants.

Masks and DDFs are channels-last with a batch axis, ``[B, *S, C]``, 2-D or 3-D. Every metric
returns a float32 ``tf.Tensor``, one value per sample unless stated. Mask values are binarised
with ``>= threshold`` (0.5 by default, as label-reg). Distances are in voxels, or in mm when a
``spacing`` is given: a tuple of ``n`` voxel sizes shared by the batch, or an array ``[B, n]``.

The surface distances (:func:`hausdorff95`, :func:`average_surface_distance`) use SciPy's exact
Euclidean distance transform on NumPy copies, so they run eagerly (wrap them in
``tf.py_function`` inside a graph).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from labelreg._tf import tf
from labelreg.losses.deform import spatial_gradient
from labelreg.losses.label import check_pair
from labelreg.ops import reference_grid

__all__ = [
    "dice",
    "dice_per_class",
    "centroid_distance",
    "jacobian_determinant",
    "folding_ratio",
    "jacobian_statistics",
    "hausdorff95",
    "average_surface_distance",
]

_NAMES = ("a", "b")


def _check_masks(a: Any, b: Any, single_channel: bool) -> tuple[tf.Tensor, tf.Tensor]:
    a, b = check_pair(a, b, _NAMES)
    if single_channel and a.shape[-1] not in (None, 1):
        raise ValueError(
            "a and b must be single-channel masks [batch, *spatial, 1]; received shape "
            f"{tuple(a.shape)}. Pass one label at a time, e.g. a[..., i:i + 1]."
        )
    return a, b


def dice(a: Any, b: Any, threshold: float = 0.5) -> tf.Tensor:
    """Binary Dice ``2 |A ∩ B| / (|A| + |B|)`` over all non-batch axes.

    Args:
        a, b: ``[B, *S, C]`` masks or probabilities; a voxel is in the mask where ``>= threshold``.
        threshold: binarisation level.

    Returns:
        float32 ``[B]`` in [0, 1]; two empty masks give 1 (they agree), never NaN.
    """
    a, b = _check_masks(a, b, single_channel=False)
    axes = list(range(1, a.shape.rank))
    a = tf.cast(a >= threshold, tf.float32)
    b = tf.cast(b >= threshold, tf.float32)
    total = tf.reduce_sum(a, axes) + tf.reduce_sum(b, axes)
    overlap = tf.reduce_sum(a * b, axes)
    return tf.where(total > 0, 2.0 * overlap / tf.maximum(total, 1.0), 1.0)


def dice_per_class(a: Any, b: Any, threshold: float = 0.5) -> tf.Tensor:
    """Binary Dice of each channel (class) separately: :func:`dice` of ``a[..., k]`` and
    ``b[..., k]``.

    Args:
        a, b: ``[B, *S, K]`` one-hot labels or probabilities.
        threshold: binarisation level.

    Returns:
        float32 ``[B, K]`` in [0, 1]; a class empty in both gives 1.
    """
    a, b = _check_masks(a, b, single_channel=False)
    axes = list(range(1, a.shape.rank - 1))
    a = tf.cast(a >= threshold, tf.float32)
    b = tf.cast(b >= threshold, tf.float32)
    total = tf.reduce_sum(a, axes) + tf.reduce_sum(b, axes)
    overlap = tf.reduce_sum(a * b, axes)
    return tf.where(total > 0, 2.0 * overlap / tf.maximum(total, 1.0), 1.0)


def _spacing(spacing: Any, batch: int | None, n: int) -> np.ndarray:
    """Voxel sizes as float32 ``[1, n]`` (shared) or ``[B, n]``; ones when ``spacing`` is None."""
    if spacing is None:
        return np.ones((1, n), np.float32)
    try:
        values = np.asarray(spacing, dtype=np.float64)
    except (TypeError, ValueError):
        values = np.full((0,), np.nan)  # reported below like any other malformed spacing
    shared = values.shape == (n,)
    per_sample = values.ndim == 2 and values.shape[1] == n and batch in (None, values.shape[0])
    if not (shared or per_sample) or not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(
            f"spacing must be {n} positive voxel sizes (mm) or an array [batch={batch}, {n}]; "
            f"received spacing={spacing!r} with shape {values.shape}."
        )
    return values.reshape(-1, n).astype(np.float32)


def centroid_distance(a: Any, b: Any, spacing: Any = None, threshold: float = 0.5) -> tf.Tensor:
    """Euclidean distance between the centroids of two masks.

    The centroid is the mean voxel index of the voxels ``>= threshold`` (label-reg's
    monitoring metric); the index difference is scaled by ``spacing`` before the norm.

    Args:
        a, b: ``[B, *S, 1]`` masks.
        spacing: ``None`` (distance in voxels), ``n`` voxel sizes in mm, or ``[B, n]``.
        threshold: binarisation level.

    Returns:
        float32 ``[B]``, in mm with ``spacing`` else in voxels. A sample where either mask is
        empty has no centroid and gives NaN (the other samples are unaffected).

    Raises:
        ValueError: for mismatched shapes, more than one channel, or an invalid ``spacing``.
    """
    a, b = _check_masks(a, b, single_channel=True)
    n = a.shape.rank - 2
    if tf.is_tensor(spacing) and not tf.executing_eagerly():
        # Inside a compiled step (e.g. per-case spacings gathered in the train step): shapes
        # are checked statically, values cannot be.
        sizes = tf.reshape(tf.cast(spacing, tf.float32), [-1, n])
    else:
        sizes = tf.constant(_spacing(spacing, a.shape[0], n))
    grid = reference_grid(tf.shape(a)[1:-1])  # [*S, n]
    axes = list(range(1, n + 1))

    def centroid(mask: tf.Tensor) -> tf.Tensor:  # [B, n]; 0/0 = NaN for an empty mask
        inside = tf.cast(mask >= threshold, tf.float32)  # [B, *S, 1]
        return tf.reduce_sum(inside * grid, axes) / tf.reduce_sum(inside, axes)

    return tf.norm((centroid(a) - centroid(b)) * sizes, axis=-1)


def jacobian_determinant(ddf: Any) -> tf.Tensor:
    """Determinant of the Jacobian of the map ``x -> x + u(x)``.

    ``J = I + ∇u`` with ``∇u`` from central differences ``(u[i+1] - u[i-1]) / 2`` (voxel
    units), the same as the regularisers, which crop one voxel from both ends of every spatial
    axis: the output grid is ``S' = S - 2``.

    Args:
        ddf: ``[B, *S, n]`` displacement in voxels, every side >= 3.

    Returns:
        float32 ``[B, *(S - 2)]``: 1 where the map preserves volume, <= 0 where it folds.

    Raises:
        ValueError: when the last axis is not ``n`` or a side is shorter than 3.
    """
    gradients = spatial_gradient(ddf)  # n x [B, *S', n], entry d holds ∂u_c/∂x_d
    jacobian = tf.stack(gradients, axis=-1)  # [B, *S', n (component c), n (axis d)]
    n = len(gradients)
    return tf.linalg.det(jacobian + tf.eye(n, dtype=jacobian.dtype))


def folding_ratio(ddf: Any) -> tf.Tensor:
    """Fraction of the voxels of :func:`jacobian_determinant`'s grid where ``det J <= 0``.

    Args:
        ddf: ``[B, *S, n]`` displacement in voxels.

    Returns:
        float32 ``[B]`` in [0, 1].
    """
    det = jacobian_determinant(ddf)
    return tf.reduce_mean(tf.cast(det <= 0.0, tf.float32), axis=list(range(1, det.shape.rank)))


def jacobian_statistics(ddf: Any) -> dict[str, tf.Tensor]:
    """Summary of the Jacobian determinant of each DDF: the folding ratio (fraction of voxels
    with ``det J <= 0``), the mean and standard deviation of ``det J``, and the variance of
    ``log |det J|`` (0 for a volume-preserving field).

    Args:
        ddf: ``[B, *S, n]`` displacement in voxels.

    Returns:
        ``{"folding_ratio", "jacobian_mean", "jacobian_std", "log_jacobian_var"}``, each float32
        ``[B]``.
    """
    det = jacobian_determinant(ddf)
    axes = list(range(1, det.shape.rank))
    log_det = tf.math.log(tf.maximum(tf.abs(det), 1e-9))
    return {"folding_ratio": tf.reduce_mean(tf.cast(det <= 0.0, tf.float32), axis=axes),
            "jacobian_mean": tf.reduce_mean(det, axis=axes),
            "jacobian_std": tf.math.reduce_std(det, axis=axes),
            "log_jacobian_var": tf.math.reduce_variance(log_det, axis=axes)}


def _surface_distances(a: Any, b: Any, spacing: Any, threshold: float) -> list[tuple]:
    """Per sample, the distances from A's surface to B's and from B's to A's (NumPy, mm).

    A surface voxel is a mask voxel with at least one face neighbour outside the mask (the
    image border counts as outside). ``None`` replaces the pair when either mask is empty.
    """
    a, b = _check_masks(a, b, single_channel=True)
    a = a.numpy()[..., 0] >= threshold
    b = b.numpy()[..., 0] >= threshold
    n = a.ndim - 1
    sizes = np.broadcast_to(_spacing(spacing, a.shape[0], n), (a.shape[0], n))
    structure = ndimage.generate_binary_structure(n, 1)
    result = []
    for i in range(a.shape[0]):
        if not a[i].any() or not b[i].any():
            result.append(None)
            continue
        sampling = sizes[i].astype(np.float64)
        surface_a = a[i] & ~ndimage.binary_erosion(a[i], structure, border_value=0)
        surface_b = b[i] & ~ndimage.binary_erosion(b[i], structure, border_value=0)
        # The transform gives, at every voxel, the distance to the nearest zero: the surface.
        to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)
        to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)
        result.append((to_b[surface_a], to_a[surface_b]))
    return result


def hausdorff95(a: Any, b: Any, spacing: Any = None, threshold: float = 0.5) -> tf.Tensor:
    """Symmetric 95th-percentile Hausdorff distance between the surfaces of two masks.

    ``max(P95(d(∂A -> ∂B)), P95(d(∂B -> ∂A)))``, each directed distance taken from every surface
    voxel of one mask to the nearest surface voxel of the other (NumPy's linear percentile).

    Args:
        a, b: ``[B, *S, 1]`` masks (eager values).
        spacing: ``None`` (voxels), ``n`` voxel sizes in mm, or ``[B, n]``.
        threshold: binarisation level.

    Returns:
        float32 ``[B]``; NaN for a sample where either mask is empty.
    """
    values = [
        np.nan if d is None else max(np.percentile(d[0], 95), np.percentile(d[1], 95))
        for d in _surface_distances(a, b, spacing, threshold)
    ]
    return tf.constant(values, tf.float32)


def average_surface_distance(
    a: Any, b: Any, spacing: Any = None, threshold: float = 0.5
) -> tf.Tensor:
    """Average symmetric surface distance between two masks.

    The mean of the distances from every surface voxel of either mask to the other mask's
    surface, pooled over both directions: ``(Σ d(∂A -> ∂B) + Σ d(∂B -> ∂A)) / (|∂A| + |∂B|)``.

    Args:
        a, b: ``[B, *S, 1]`` masks (eager values).
        spacing: ``None`` (voxels), ``n`` voxel sizes in mm, or ``[B, n]``.
        threshold: binarisation level.

    Returns:
        float32 ``[B]``; NaN for a sample where either mask is empty.
    """
    values = [
        np.nan if d is None else np.concatenate(d).mean()
        for d in _surface_distances(a, b, spacing, threshold)
    ]
    return tf.constant(values, tf.float32)
