"""The INI options of ``network_type = gradirn`` (:class:`labelreg.networks.gradirn.GraDIRN`, the
unrolled multi-resolution gradient descent), declared without TensorFlow."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Key
from labelreg.losses.registry import LOSSES, available_losses

__all__ = ["OPTIONS"]

# The built-in energies of labelreg.networks.gradirn.inner_similarities, named here without
# importing TensorFlow: ssd, ncc, then the image losses that need no trained network.
_CHOICES = ("ssd", "ncc", *[name for name in available_losses("image")
                            if not LOSSES.info(name).get("factory") and name not in ("ssd", "none")])

OPTIONS = ComponentOptions(
    docs="Unrolled gradient-descent layers on an image energy, coarse to fine.",
    keys={"Network": {
        "num_levels": Key("int", 3, "Resolution levels of the unrolled descent.", min=1, max=6),
        "num_repeat": Key("int", 3, "Unrolled steps per level.", min=1, max=20),
        "inner_similarity": Key("str", "ssd", "The energy whose gradient each unrolled step "
                                "follows: ssd, GraDIRN's ncc (negative squared global NCC), or an "
                                "image loss that needs no network; mind (MIND-SSC) and nmi work "
                                "across modalities.", choices=_CHOICES),
    }},
    arguments={"inner_similarity": "similarity"},
)
