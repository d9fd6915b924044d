"""Running a registration network on a pair: the one forward + warp of the project.

Training, validation, the TensorBoard picture, inference and the serving signatures all call
:func:`register_pair`, so a DDF is always applied the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from labelreg import ops
from labelreg._tf import tf

__all__ = ["register_pair", "network_ddf", "inference_ddf"]

DDFFunction = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def network_ddf(model: Any, training: bool = False) -> DDFFunction:
    """``(moving, fixed) -> model([moving, fixed], training=training)``."""
    return lambda moving, fixed: model([moving, fixed], training=training)


def inference_ddf(model: Any, settings: Mapping[str, Any] | None = None) -> DDFFunction:
    """The DDF function of inference and evaluation: the network's own
    ``model.inference_ddf(settings)`` when it defines one (test-time work configured by the
    ``[Inference]`` options it declares, e.g. CentroidAlignNet's ``refine_steps``), else
    :func:`network_ddf`. ``settings`` is the ``[Inference]`` section (or ``None``)."""
    hook = getattr(model, "inference_ddf", None)
    return hook(settings or {}) if callable(hook) else network_ddf(model)


def register_pair(
    ddf_fn: DDFFunction,
    moving_image: Any,
    fixed_image: Any,
    moving_label: Any = None,
    label_interpolation: str = "linear",
    warp_image: bool = True,
) -> dict[str, tf.Tensor]:
    """The DDF of a pair and the moving image (and labels) carried onto the fixed grid.

    Args:
        ddf_fn: ``(moving, fixed) -> ddf [B, *S_fix, n]``, e.g. :func:`network_ddf`.
        moving_image: ``[B, *S_mov, C]``.
        fixed_image: ``[B, *S_fix, C]``.
        moving_label: optional ``[B, *S_mov, L]`` on the moving grid.
        label_interpolation: ``"linear"`` (soft labels) or ``"nearest"``.
        warp_image: also warp the moving image (training with a label loss only skips it).

    Returns:
        ``{"ddf", "warped_moving_image" (when warp_image), "warped_label" (with a label)}``,
        all on the fixed grid: ``warped(x) = moving(x + ddf(x))``.
    """
    ddf = ddf_fn(moving_image, fixed_image)
    out = {"ddf": ddf}
    if warp_image:
        out["warped_moving_image"] = ops.warp(moving_image, ddf)
    if moving_label is not None:
        out["warped_label"] = ops.warp(moving_label, ddf, interpolation=label_interpolation)
    return out
