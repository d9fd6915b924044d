"""Label similarity losses, label-reg's exact formulas, single- and multi-scale.

Every loss compares a fixed label ``y_true`` with a warped moving label ``y_pred`` (soft values in
[0, 1], channels-last ``[B, *S, C]``, 2-D or 3-D) and returns one value per sample ``[B]``; the
training step reduces over the batch. Lower is better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.ops import check_finite, check_image, gaussian_filter, reference_grid

__all__ = [
    "dice_loss",
    "jaccard_loss",
    "cross_entropy_loss",
    "mean_squared_loss",
    "multi_scale_loss",
    "multi_scale_dice_loss",
    "centroid_distance_loss",
    "check_pair",
    "check_scales",
    "DEFAULT_SCALES",
    "SINGLE_SCALE_LOSSES",
]

DEFAULT_SCALES = (0, 1, 2, 4, 8, 16)
_EPS = 1e-6  # label-reg's epsilon in the Dice/Jaccard denominators and the cross-entropy clip.


def check_pair(
    a: Any, b: Any, names: tuple[str, str] = ("y_true", "y_pred")
) -> tuple[tf.Tensor, tf.Tensor]:
    """Convert two ``[B, *S, C]`` inputs to float32 and check that their shapes agree.

    Args:
        a, b: NumPy arrays or tensors with 2 or 3 spatial axes.
        names: the two argument names used in error messages.

    Returns:
        ``(a, b)`` as float32 tensors.

    Raises:
        ValueError: when an input is not real-valued, a rank is not 4 or 5, the (static) shapes
            differ, or an eager input holds NaN or Inf (inside a compiled graph the values are
            not read, and a non-finite input gives a non-finite result).
    """
    a, b = check_image(a, names[0]), check_image(b, names[1])
    if not a.shape.is_compatible_with(b.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape; received {names[0]} shape "
            f"{tuple(a.shape)} and {names[1]} shape {tuple(b.shape)}."
        )
    check_finite(a, names[0])
    check_finite(b, names[1])
    return a, b


def _sum(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x, axis=list(range(1, x.shape.rank)))


def _mean(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(x, axis=list(range(1, x.shape.rank)))


def dice_loss(y_true: Any, y_pred: Any) -> tf.Tensor:
    """Soft Dice loss ``1 - 2 Σ t p / (Σ t + Σ p + 1e-6)``, sums over all non-batch axes.

    Args:
        y_true, y_pred: ``[B, *S, C]`` labels in [0, 1].

    Returns:
        float32 ``[B]`` in [0, 1]; two empty labels give 1.
    """
    t, p = check_pair(y_true, y_pred)
    return 1.0 - 2.0 * _sum(t * p) / (_sum(t) + _sum(p) + _EPS)


def jaccard_loss(y_true: Any, y_pred: Any) -> tf.Tensor:
    """Soft Jaccard loss ``1 - Σ t p / (Σ t² + Σ p² - Σ t p + 1e-6)``.

    Args:
        y_true, y_pred: ``[B, *S, C]`` labels in [0, 1].

    Returns:
        float32 ``[B]``.
    """
    t, p = check_pair(y_true, y_pred)
    overlap = _sum(t * p)
    return 1.0 - overlap / (_sum(t * t) + _sum(p * p) - overlap + _EPS)


def cross_entropy_loss(y_true: Any, y_pred: Any) -> tf.Tensor:
    """Binary cross-entropy, mean over voxels (label-reg's weighted form, positive weight 1).

    ``-mean(t log p + (1 - t) log(1 - p))`` with ``p`` clipped to ``[1e-6, 1 - 1e-6]`` so the
    logarithms stay finite (the clip also stops the gradient where ``p`` is saturated).

    Args:
        y_true, y_pred: ``[B, *S, C]`` labels in [0, 1].

    Returns:
        float32 ``[B]`` in nats.
    """
    t, p = check_pair(y_true, y_pred)
    p = tf.clip_by_value(p, _EPS, 1.0 - _EPS)
    return -_mean(t * tf.math.log(p) + (1.0 - t) * tf.math.log(1.0 - p))


def mean_squared_loss(y_true: Any, y_pred: Any) -> tf.Tensor:
    """Mean squared difference ``mean((t - p)²)`` over all non-batch axes.

    Args:
        y_true, y_pred: ``[B, *S, C]``.

    Returns:
        float32 ``[B]``.
    """
    t, p = check_pair(y_true, y_pred)
    return _mean(tf.square(t - p))


def centroid_distance_loss(y_true: Any, y_pred: Any, spacing: Any = None) -> tf.Tensor:
    """Distance between the soft centroids of two labels, differentiable in both.

    The soft centroid of a label ``p`` is ``sum_x p(x) x / sum_x p(x)`` over the voxel indices
    ``x`` (no threshold, unlike :func:`labelreg.metrics.centroid_distance`, which it equals for
    binary masks); the index difference is scaled by ``spacing`` before the Euclidean norm.
    The landmark TRE of label-reg's evaluation is this distance for binarised labels, so the
    loss aims at it directly, and unlike an overlap score it keeps a gradient of constant size
    (one per unit of displacement) however far apart two small labels are.

    Args:
        y_true, y_pred: ``[B, *S, 1]`` labels in [0, 1].
        spacing: ``None`` (voxels), or ``[B, n]`` / ``n`` voxel sizes in mm.

    Returns:
        float32 ``[B]``, in mm with ``spacing`` else in voxels. A sample whose label is empty
        (e.g. a warped landmark moved out of the grid) gives 0 there and no gradient, rather
        than NaN.
    """
    t, p = check_pair(y_true, y_pred)
    if t.shape[-1] != 1:
        raise ValueError(f"centroid_distance_loss compares one label per sample; received "
                         f"{t.shape[-1]} channels.")
    n = t.shape.rank - 2
    grid = reference_grid(tf.shape(t)[1:-1])  # [*S, n]
    axes = list(range(1, n + 1))
    mass_t = tf.reduce_sum(t, axes)  # [B, 1]
    mass_p = tf.reduce_sum(p, axes)
    present = tf.logical_and(mass_t > _EPS, mass_p > _EPS)  # [B, 1]
    # Where a label is empty its centroid is replaced by 0 before dividing, so neither the
    # value nor the gradient is NaN.
    centre_t = tf.reduce_sum(t * grid, axes) / tf.where(present, mass_t, 1.0)
    centre_p = tf.reduce_sum(p * grid, axes) / tf.where(present, mass_p, 1.0)
    sizes = tf.ones([1, n]) if spacing is None else \
        tf.reshape(tf.cast(spacing, tf.float32), [-1, n])
    diff = tf.where(present, (centre_t - centre_p) * sizes, 0.0)
    # sqrt(x + 1e-12) - 1e-6: a finite gradient at a zero distance, and the exact distance
    # (to float32 precision) elsewhere.
    return tf.sqrt(tf.reduce_sum(tf.square(diff), -1) + 1e-12) - 1e-6


# The single-scale losses under their INI names (the registry and multi_scale_loss share it).
SINGLE_SCALE_LOSSES: dict[str, Callable[[Any, Any], tf.Tensor]] = {
    "dice": dice_loss,
    "cross-entropy": cross_entropy_loss,
    "mean-squared": mean_squared_loss,
    "jaccard": jaccard_loss,
}


def check_scales(scales: Any) -> tuple[float, ...]:
    """Validate multi-scale sigmas; returns them as floats or raises ValueError naming scales."""
    try:
        values = () if isinstance(scales, str | bytes) else tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(np.isfinite(s) and s >= 0 for s in values):
        raise ValueError(
            "scales must be a non-empty sequence of finite Gaussian sigmas >= 0 (voxels); "
            f"received scales={scales!r}."
        )
    return values


def multi_scale_loss(
    y_true: Any,
    y_pred: Any,
    kind: str = "dice",
    scales: Sequence[float] = DEFAULT_SCALES,
) -> tf.Tensor:
    """Mean over scales of a label loss on both labels smoothed by the same Gaussian.

    At scale ``s`` both labels are filtered with :func:`labelreg.ops.gaussian_filter` (sigma
    ``s`` voxels, half-width ``int(3 s)``, kernel summing to 1, zero padding; ``s = 0`` means
    no smoothing). Blurring lets labels that do not overlap yet still produce a gradient.

    Args:
        y_true, y_pred: ``[B, *S, C]`` labels in [0, 1].
        kind: ``"dice"``, ``"jaccard"``, ``"cross-entropy"`` or ``"mean-squared"``.
        scales: Gaussian sigmas in voxels, each >= 0.

    Returns:
        float32 ``[B]``.

    Raises:
        ValueError: for an unknown ``kind``, invalid ``scales`` or mismatched shapes.
    """
    if kind not in SINGLE_SCALE_LOSSES:
        raise ValueError(
            f"kind must be one of {tuple(SINGLE_SCALE_LOSSES)}; received kind={kind!r}."
        )
    return multi_scale_of(SINGLE_SCALE_LOSSES[kind], y_true, y_pred, scales=scales)


def multi_scale_of(
    single_scale: Callable[[Any, Any], tf.Tensor],
    y_true: Any,
    y_pred: Any,
    scales: Sequence[float] = DEFAULT_SCALES,
) -> tf.Tensor:
    """:func:`multi_scale_loss` around any single-scale label loss ``fn(y_true, y_pred) -> [B]``
    (the loss registry uses it for every label loss, registered ones included)."""
    sigmas = check_scales(scales)
    t, p = check_pair(y_true, y_pred)
    per_scale = [single_scale(gaussian_filter(t, s), gaussian_filter(p, s)) for s in sigmas]
    return tf.reduce_mean(tf.stack(per_scale, axis=0), axis=0)


def multi_scale_dice_loss(
    y_true: Any, y_pred: Any, scales: Sequence[float] = DEFAULT_SCALES
) -> tf.Tensor:
    """``multi_scale_loss(y_true, y_pred, kind="dice", scales=scales)``, label-reg's default."""
    return multi_scale_loss(y_true, y_pred, kind="dice", scales=scales)
