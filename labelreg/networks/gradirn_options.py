"""The INI options of ``network_type = gradirn`` (:class:`labelreg.networks.gradirn.GraDIRN`, the
unrolled multi-resolution gradient descent), declared without TensorFlow."""

from __future__ import annotations

from labelreg.config import ComponentOptions, Key

__all__ = ["OPTIONS"]

OPTIONS = ComponentOptions(
    docs="Unrolled gradient-descent layers on an image energy, coarse to fine.",
    keys={"Network": {
        "num_levels": Key("int", 3, "Resolution levels of the unrolled descent.", min=1, max=6),
        "num_repeat": Key("int", 3, "Unrolled steps per level.", min=1, max=20),
        "inner_similarity": Key("str", "ssd", "The energy whose gradient each unrolled step "
                                "follows.", choices=("ssd", "ncc")),
    }},
    arguments={"inner_similarity": "similarity"},
)
