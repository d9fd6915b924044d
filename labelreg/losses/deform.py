"""Smoothness regularisers of a dense displacement field (DDF), label-reg's formulas.

Derivatives are central differences ``(f[i+1] - f[i-1]) / 2`` in voxel units. Each application
crops one voxel from both ends of EVERY spatial axis (not only the differentiated one), so all the
partial derivatives of one order live on the same interior grid and can be summed voxel by voxel:
first derivatives on ``S - 2``, second derivatives on ``S - 4``. Applying the difference twice
gives the wide stencil ``(f[i+2] - 2 f[i] + f[i-2]) / 4``, which is exact for quadratics and zero
for any affine field. No voxel spacing is used, as in label-reg and DeepReg.
"""

from __future__ import annotations

from typing import Any

from labelreg._tf import tf
from labelreg.ops import check_ddf, check_finite
from labelreg.ops.jit import maybe_compiled

__all__ = ["bending_energy", "gradient_norm", "spatial_gradient", "GRADIENT_NORMS"]

GRADIENT_NORMS = ("l2", "l1")


def _difference(f: tf.Tensor, axis: int) -> tf.Tensor:
    """Central difference of ``f [B, *S, C]`` along spatial ``axis`` (0-based), every axis cropped."""
    n = f.shape.rank - 2
    ahead, behind, interior = [slice(None)], [slice(None)], slice(1, -1)
    for d in range(n):
        ahead.append(slice(2, None) if d == axis else interior)
        behind.append(slice(None, -2) if d == axis else interior)
    return (f[tuple(ahead)] - f[tuple(behind)]) / 2.0


def _check_sides(ddf: tf.Tensor, minimum: int, what: str) -> None:
    spatial = ddf.shape[1:-1]
    if any(s is not None and s < minimum for s in spatial):
        raise ValueError(
            f"ddf must have at least {minimum} voxels along every spatial axis for {what} "
            f"(each central difference crops one voxel from both ends of every axis); received "
            f"ddf shape {tuple(ddf.shape)}."
        )


def spatial_gradient(ddf: Any) -> list[tf.Tensor]:
    """Central-difference partial derivatives of a DDF.

    Args:
        ddf: ``[B, *S, n]`` displacement in voxels, ``n = len(S)`` in (2, 3), every side >= 3.

    Returns:
        ``n`` float32 tensors ``[B, *(S - 2), n]``: ``∂u / ∂x_d`` for ``d = 0 .. n-1``, all on
        the grid cropped by one voxel on every side.

    Raises:
        ValueError: when the last axis is not ``n``, a spatial side is shorter than 3, or an
            eager ``ddf`` holds NaN or Inf.
    """
    ddf = check_ddf(ddf, "ddf")
    _check_sides(ddf, 3, "a first derivative")
    check_finite(ddf, "ddf")
    return [_difference(ddf, d) for d in range(ddf.shape.rank - 2)]


def _per_sample_mean(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(x, axis=list(range(1, x.shape.rank)))


def bending_energy(ddf: Any) -> tf.Tensor:
    """Bending energy of a DDF, as label-reg computes it.

    ``mean(u_xx² + u_yy² + u_zz² + 2 u_xy² + 2 u_xz² + 2 u_yz²)`` over the grid cropped by two
    voxels on every side and over the ``n`` displacement components (2-D:
    ``u_xx² + u_yy² + 2 u_xy²``). Zero for any affine field.

    Args:
        ddf: ``[B, *S, n]`` displacement in voxels, ``n = len(S)`` in (2, 3), every side >= 5.

    Returns:
        float32 ``[B]`` in voxel⁻² (the displacement being in voxels).

    Raises:
        ValueError: when the last axis is not ``n``, a spatial side is shorter than 5, or an
            eager ``ddf`` holds NaN or Inf.
    """
    ddf = check_ddf(ddf, "ddf")
    _check_sides(ddf, 5, "the bending energy")
    check_finite(ddf, "ddf")
    # Compiled with XLA like the warp: TensorFlow's own gradient of the many crops (a
    # StridedSliceGrad per crop) is about 15 times slower on a CPU than the fused kernel, and
    # it is most of a test-time refinement step.
    return maybe_compiled(_bending_energy, ddf.shape.rank)(ddf)


def _bending_energy(ddf: tf.Tensor) -> tf.Tensor:
    n = ddf.shape.rank - 2
    first = [_difference(ddf, d) for d in range(n)]
    energy = 0.0
    for i in range(n):
        energy += tf.square(_difference(first[i], i))
        for j in range(i + 1, n):
            # The mixed derivatives appear twice in the Hessian (u_xy = u_yx).
            energy += 2.0 * tf.square(_difference(first[i], j))
    return _per_sample_mean(energy)


def gradient_norm(ddf: Any, norm: str = "l2") -> tf.Tensor:
    """Mean gradient magnitude of a DDF, label-reg's ``gradient-l2`` / ``gradient-l1``.

    ``l2``: ``mean(Σ_d (∂_d u)²)``; ``l1``: ``mean(Σ_d |∂_d u|)``; the mean runs over the grid
    cropped by one voxel on every side and over the ``n`` components.

    Args:
        ddf: ``[B, *S, n]`` displacement in voxels, every side >= 3.
        norm: ``"l2"`` or ``"l1"``.

    Returns:
        float32 ``[B]`` (dimensionless: voxels per voxel).

    Raises:
        ValueError: for an unknown ``norm``, a last axis other than ``n``, or a side shorter
            than 3.
    """
    if norm not in GRADIENT_NORMS:
        raise ValueError(f"norm must be one of {GRADIENT_NORMS}; received norm={norm!r}.")
    ddf = check_ddf(ddf, "ddf")
    _check_sides(ddf, 3, "a first derivative")
    check_finite(ddf, "ddf")
    # Compiled with XLA for the reason given in bending_energy.
    return maybe_compiled(_GRADIENT_NORMS[norm], ddf.shape.rank)(ddf)


def _gradient_l2(ddf: tf.Tensor) -> tf.Tensor:
    n = ddf.shape.rank - 2
    return _per_sample_mean(tf.add_n([tf.square(_difference(ddf, d)) for d in range(n)]))


def _gradient_l1(ddf: tf.Tensor) -> tf.Tensor:
    n = ddf.shape.rank - 2
    return _per_sample_mean(tf.add_n([tf.abs(_difference(ddf, d)) for d in range(n)]))


_GRADIENT_NORMS = {"l2": _gradient_l2, "l1": _gradient_l1}
