"""Composition of displacement fields and integration of stationary velocity fields."""

from __future__ import annotations

from typing import Any

from labelreg._tf import tf
from labelreg.ops.checks import check_ddf
from labelreg.ops.warp import warp

__all__ = ["compose", "integrate_svf"]


def compose(ddf_a: Any, ddf_b: Any) -> tf.Tensor:
    """Compose two displacement fields: ``ddf_b(x) + ddf_a(x + ddf_b(x))``.

    A point ``x`` of the output grid is first displaced by ``ddf_b`` and then by ``ddf_a``, so
    ``warp(warp(image, ddf_a), ddf_b) == warp(image, compose(ddf_a, ddf_b))`` up to interpolation.
    ``ddf_a`` is sampled with border replication (``fill_mode="nearest"``) so the field does not
    collapse towards zero outside its grid.

    Args:
        ddf_a: ``[B, *S_a, n]``, the field applied second (to the displaced points).
        ddf_b: ``[B, *S, n]``, the field applied first; it defines the output grid.

    Returns:
        float32 ``[B, *S, n]``.
    """
    ddf_a = check_ddf(ddf_a, "ddf_a")
    ddf_b = check_ddf(ddf_b, "ddf_b")
    return ddf_b + warp(ddf_a, ddf_b, fill_mode="nearest")


def integrate_svf(velocity: Any, steps: int = 7) -> tf.Tensor:
    """Scaling and squaring: the displacement of the flow of a stationary velocity field.

    ``ddf = velocity / 2**steps``, then ``steps`` times ``ddf = compose(ddf, ddf)``.

    Args:
        velocity: ``[B, *S, n]`` in voxel units.
        steps: number of squarings (``>= 0``).

    Returns:
        float32 ``[B, *S, n]``.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer; received steps={steps}.")
    ddf = check_ddf(velocity, "velocity") / float(2**steps)
    for _ in range(int(steps)):
        ddf = ddf + warp(ddf, ddf, fill_mode="nearest")
    return ddf
