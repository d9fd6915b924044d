"""Map the loss names used in INI files to the functions of this package.

The tuples of known names let the config module validate a choice before anything is built;
adding a loss is one function plus one line here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from labelreg._tf import tf
from labelreg.losses import deform, image, label

__all__ = [
    "LABEL_LOSSES",
    "REGULARISERS",
    "IMAGE_LOSSES",
    "get_label_loss",
    "get_regulariser",
    "get_image_loss",
]

LossFn = Callable[..., tf.Tensor]

_LABEL: dict[str, LossFn] = label.SINGLE_SCALE_LOSSES
_REGULARISERS: dict[str, LossFn] = {
    "bending": deform.bending_energy,
    "gradient-l2": functools.partial(deform.gradient_norm, norm="l2"),
    "gradient-l1": functools.partial(deform.gradient_norm, norm="l1"),
}
_IMAGE: dict[str, LossFn] = {
    "ssd": image.ssd,
    "lncc": image.lncc,
    "nmi": image.nmi,
    "mind": image.mind_ssc,
}

LABEL_LOSSES = tuple(_LABEL)
REGULARISERS = tuple(_REGULARISERS)
IMAGE_LOSSES = tuple(_IMAGE)


def _lookup(table: dict[str, LossFn], name: Any, what: str) -> LossFn:
    if name not in table:
        raise ValueError(f"Unknown {what} {name!r}; known names are: {', '.join(table)}.")
    return table[name]


def get_label_loss(name: str, scales: Sequence[float] | None = None) -> LossFn:
    """The label similarity loss called ``name`` in the INI files.

    Args:
        name: one of :data:`LABEL_LOSSES` (``dice``, ``cross-entropy``, ``mean-squared``,
            ``jaccard``).
        scales: Gaussian sigmas (voxels) for the multi-scale version; ``None`` gives the
            single-scale loss.

    Returns:
        ``fn(y_true, y_pred) -> [B]``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or invalid scales.
    """
    single_scale = _lookup(_LABEL, name, "label loss")
    if scales is None:
        return single_scale
    label.check_scales(scales)  # fail now, at configuration time, not at the first step
    return functools.partial(label.multi_scale_loss, kind=name, scales=tuple(scales))


def get_regulariser(name: str) -> LossFn:
    """The DDF regulariser called ``name``: ``bending``, ``gradient-l2`` or ``gradient-l1``.

    Returns:
        ``fn(ddf) -> [B]``.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    return _lookup(_REGULARISERS, name, "regulariser")


def get_image_loss(name: str, **options: Any) -> LossFn:
    """The image dissimilarity called ``name``: ``ssd``, ``lncc``, ``nmi`` or ``mind``.

    Args:
        name: one of :data:`IMAGE_LOSSES`.
        **options: keyword arguments bound to the loss, e.g. ``window=7`` for ``lncc``,
            ``bins=32`` for ``nmi``, ``radius=1, dilation=1`` for ``mind``.

    Returns:
        ``fn(fixed, warped) -> [B]``.

    Raises:
        ValueError: for an unknown name or an option the loss does not take.
    """
    fn = _lookup(_IMAGE, name, "image loss")
    if not options:
        return fn
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("fixed", "warped")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"Image loss {name!r} does not take option(s) {unknown}; it accepts {accepted}."
        )
    return functools.partial(fn, **options)
