"""The INI options of the networks with an affine stage (``network_type = global`` and
``composite``: :class:`labelreg.networks.GlobalNet`, :class:`labelreg.networks.CompositeNet`),
declared without TensorFlow."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Key

__all__ = ["OPTIONS", "AFFINE_TRANSFORMS"]

#: What an affine stage can predict (:class:`labelreg.networks.layers.AffineRegressor`).
AFFINE_TRANSFORMS = ("affine", "translation")

OPTIONS = ComponentOptions(
    docs="An affine stage (GlobalNet's regressor), alone or before a LocalNet.",
    keys={"Network": {
        "global_transform": Key("str", "affine", "What the affine stage predicts: a full "
                                "affine (label-reg's) or a translation only (no scaling or "
                                "shear for an image similarity to exploit).",
                                choices=AFFINE_TRANSFORMS),
    }},
    arguments={"global_transform": "transform"},
)
