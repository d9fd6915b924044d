"""The loss names used in INI files, and factories that build a loss from its options.

Every entry has a *kind*: ``label`` (``fn(y_true, y_pred) -> [B]``), ``regulariser``
(``fn(ddf) -> [B]``) or ``image`` (``fn(fixed, warped) -> [B]``). An entry is either a plain
function, whose keyword options (``window`` of ``lncc``, ``bins`` of ``nmi``...) are bound by
:func:`build_loss`, or a *factory* (``factory=True``) called with the options to make the loss:
that is where a loss owning a network lives (a frozen feature extractor, a trainable encoder),
e.g. ``register_loss("learned", kind="image", factory=True)(LearnedSimilarity)``.

The built-in entries are import strings, so their names are known (and an INI validated)
without importing TensorFlow.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from labelreg.errors import ConfigError
from labelreg.registry import Registry

__all__ = [
    "LOSSES",
    "KINDS",
    "LABEL_LOSSES",  # noqa: F822 - computed by the module __getattr__
    "REGULARISERS",  # noqa: F822
    "IMAGE_LOSSES",  # noqa: F822
    "register_loss",
    "available_losses",
    "build_loss",
    "get_label_loss",
    "get_regulariser",
    "get_image_loss",
]

KINDS = ("label", "regulariser", "image")
_WHAT = {"label": "label loss", "regulariser": "regulariser", "image": "image loss"}
# Arguments a loss receives per call; everything else is an option.
_CALL_ARGUMENTS = {"label": ("y_true", "y_pred"), "regulariser": ("ddf",),
                   "image": ("fixed", "warped")}

LOSSES = Registry("loss")


def register_loss(name: str, kind: str, factory: bool = False, **options: Any
                  ) -> Callable[[Any], Any]:
    """Decorator adding a loss function (or, with ``factory=True``, a class or function that
    returns one) under ``name``; ``options`` are bound by default.

    Raises:
        ValueError: for an unknown kind or a name already taken.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; received kind={kind!r}.")
    return LOSSES.register(name, kind=kind, factory=factory, bound=options)


for _name, _target, _kind, _options in (
    ("dice", "labelreg.losses.label:dice_loss", "label", {}),
    ("cross-entropy", "labelreg.losses.label:cross_entropy_loss", "label", {}),
    ("mean-squared", "labelreg.losses.label:mean_squared_loss", "label", {}),
    ("jaccard", "labelreg.losses.label:jaccard_loss", "label", {}),
    ("bending", "labelreg.losses.deform:bending_energy", "regulariser", {}),
    ("gradient-l2", "labelreg.losses.deform:gradient_norm", "regulariser", {"norm": "l2"}),
    ("gradient-l1", "labelreg.losses.deform:gradient_norm", "regulariser", {"norm": "l1"}),
    ("ssd", "labelreg.losses.image:ssd", "image", {}),
    ("lncc", "labelreg.losses.image:lncc", "image", {}),
    ("gncc", "labelreg.losses.image:gncc", "image", {}),
    ("nmi", "labelreg.losses.image:nmi", "image", {}),
    ("mind", "labelreg.losses.image:mind_ssc", "image", {}),
):
    LOSSES.add(_name, _target, kind=_kind, factory=False, bound=_options)
# A factory: built with its frozen feature network, build_loss("deepsim", "image",
# feature_extractor=net).
LOSSES.add("deepsim", "labelreg.losses.deepsim:DeepSimLoss", kind="image", factory=True,
           bound={}, options="labelreg.losses.learned_options:DEEPSIM_OPTIONS")
# A factory: a learned similarity metric (learnsim), build_loss("learnsim", "image",
# encoder=net, term="ssd" | "lcc").
LOSSES.add("learnsim", "labelreg.losses.learnsim:LearnedSimilarity", kind="image",
           factory=True, bound={}, options="labelreg.losses.learned_options:LEARNSIM_OPTIONS")


def available_losses(kind: str) -> tuple[str, ...]:
    """The registered names of one kind, in registration order."""
    return LOSSES.names(kind=kind)


def __getattr__(name: str) -> Any:
    kinds = {"LABEL_LOSSES": "label", "REGULARISERS": "regulariser", "IMAGE_LOSSES": "image"}
    if name in kinds:
        return available_losses(kinds[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_loss(name: str, kind: str, **options: Any) -> Callable[..., Any]:
    """The loss registered as ``name``, built with ``options``.

    Args:
        name: a registered name of this kind (case-insensitive).
        kind: ``label``, ``regulariser`` or ``image``.
        **options: keyword options of the loss (e.g. ``window=7`` for ``lncc``), or the
            arguments of a factory (e.g. ``feature_network=...``).

    Returns:
        The loss, ``fn(...) -> [B]``.

    Raises:
        ConfigError: (a ``ValueError``) for an unknown name, naming the known ones, or an
            option the loss does not take, naming the ones it does.
    """
    known = available_losses(kind)
    if LOSSES.key(name) not in known:
        raise ConfigError(
            f"Unknown {_WHAT[kind]} {name!r}; known names are: {', '.join(known)}."
        )
    info = LOSSES.info(name)
    target = LOSSES.get(name)
    bound = {**info["bound"], **options}
    if info["factory"]:
        return target(**bound)
    if not bound:
        return target
    params = inspect.signature(target).parameters
    accepted = [p for p in params if p not in _CALL_ARGUMENTS[kind]]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"{_WHAT[kind].capitalize()} {name!r} does not take option(s) {unknown}; it accepts "
            f"{accepted}."
        )
    return functools.partial(target, **bound)


def get_label_loss(name: str, scales: Sequence[float] | None = None) -> Callable[..., Any]:
    """The label similarity loss called ``name`` in the INI files.

    Args:
        name: a label loss (``dice``, ``cross-entropy``, ``mean-squared``, ``jaccard``...).
        scales: Gaussian sigmas (voxels) for the multi-scale version; ``None`` gives the
            single-scale loss.

    Returns:
        ``fn(y_true, y_pred) -> [B]``.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or invalid scales.
    """
    single_scale = build_loss(name, "label")
    if scales is None:
        return single_scale
    from labelreg.losses import label

    label.check_scales(scales)  # fail now, at configuration time, not at the first step
    return functools.partial(label.multi_scale_of, single_scale, scales=tuple(scales))


def get_regulariser(name: str, **options: Any) -> Callable[..., Any]:
    """The DDF regulariser called ``name`` (``bending``, ``gradient-l2``, ``gradient-l1``...).

    Returns:
        ``fn(ddf) -> [B]``.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    return build_loss(name, "regulariser", **options)


def get_image_loss(name: str, **options: Any) -> Callable[..., Any]:
    """The image dissimilarity called ``name`` (``ssd``, ``lncc``, ``nmi``, ``mind``...).

    Args:
        name: a registered image loss.
        **options: keyword arguments bound to the loss, e.g. ``window=7`` for ``lncc``,
            ``bins=32`` for ``nmi``, ``radius=1, dilation=1`` for ``mind``.

    Returns:
        ``fn(fixed, warped) -> [B]``.

    Raises:
        ValueError: for an unknown name or an option the loss does not take.
    """
    return build_loss(name, "image", **options)
