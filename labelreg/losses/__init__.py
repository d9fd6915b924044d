"""Losses: label similarity, image dissimilarity and DDF regularisers.

Every loss accepts NumPy arrays or tensors, channels-last with 2 or 3 spatial axes, and returns
one float32 value per sample ``[B]``; the training step reduces over the batch.
"""

from __future__ import annotations

from labelreg.losses.registry import (
    available_losses,
    build_loss,
    get_image_loss,
    get_label_loss,
    get_regulariser,
    register_loss,
)
from labelreg.registry import lazy_attributes

# The loss functions are imported on first access, so that the name registry (and with it
# config validation) does not load TensorFlow.
_FUNCTIONS = {
    "dice_loss": "label",
    "jaccard_loss": "label",
    "cross_entropy_loss": "label",
    "mean_squared_loss": "label",
    "multi_scale_loss": "label",
    "multi_scale_dice_loss": "label",
    "DEFAULT_SCALES": "label",
    "bending_energy": "deform",
    "gradient_norm": "deform",
    "spatial_gradient": "deform",
    "ssd": "image",
    "lncc": "image",
    "nmi": "image",
    "mind_ssc": "image",
    "gncc": "image",
    "DeepSimLoss": "deepsim",
    "LearnedSimilarity": "learnsim",
    "learned_ssd": "learnsim",
    "learned_lcc": "learnsim",
    "LABEL_LOSSES": "registry",
    "REGULARISERS": "registry",
    "IMAGE_LOSSES": "registry",
}

__all__ = [
    *_FUNCTIONS,
    "get_label_loss",
    "get_regulariser",
    "get_image_loss",
    "build_loss",
    "register_loss",
    "available_losses",
]


__getattr__ = lazy_attributes("labelreg.losses", _FUNCTIONS)
