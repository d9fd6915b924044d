"""The INI options of ``network_type = gradirn`` (:class:`labelreg.networks.gradirn.GraDIRN`, the
unrolled multi-resolution gradient descent), declared without TensorFlow."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Key
from labelreg.losses.registry import LOSSES, available_losses

__all__ = ["OPTIONS", "CORRECTION_INITS", "inner_similarities"]

#: How the last convolution of each step's CNN starts (``GradientStep(correction_init=...)``).
CORRECTION_INITS = ("reference", "zero")


def inner_similarities() -> tuple[str, ...]:
    """The energies a GraDIRN descent step can follow: its ``ssd`` and ``ncc``, then every image
    loss of the registry that is a plain function of two images (not a factory that needs a
    trained network, as ``deepsim`` and ``learnsim`` do), registered ones included. Declared
    here, without TensorFlow, for the INI choices and :mod:`labelreg.networks.gradirn` alike."""
    plain = [name for name in available_losses("image")
             if not LOSSES.info(name).get("factory") and name not in ("ssd", "none")]
    return ("ssd", "ncc", *plain)


OPTIONS = ComponentOptions(
    docs="Unrolled gradient-descent layers on an image energy, coarse to fine.",
    keys={"Network": {
        "num_levels": Key("int", 3, "Resolution levels of the unrolled descent.", min=1, max=6),
        "num_repeat": Key("int", 3, "Unrolled steps per level.", min=1, max=20),
        "inner_similarity": Key("str", "ssd", "The energy whose gradient each unrolled step "
                                "follows: ssd, GraDIRN's ncc (negative squared global NCC), or an "
                                "image loss that needs no network; mind (MIND-SSC) and nmi work "
                                "across modalities.", choices=inner_similarities()),
        "correction_init": Key("str", "reference", "How each level's correcting CNN starts: "
                               "reference (the paper's PyTorch initialisation, whose random "
                               "corrections outweigh the gradient steps at first) or zero (its "
                               "last convolution at zero: the untrained network is the plain "
                               "descent on its energy, and training starts from there).",
                               choices=CORRECTION_INITS),
    }},
    arguments={"inner_similarity": "similarity"},
)
