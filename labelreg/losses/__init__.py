"""Losses: label similarity, image dissimilarity and DDF regularisers.

Every loss accepts NumPy arrays or tensors, channels-last with 2 or 3 spatial axes, and returns
one float32 value per sample ``[B]``; the training step reduces over the batch.
"""

from labelreg.losses.deform import bending_energy, gradient_norm, spatial_gradient
from labelreg.losses.image import lncc, mind_ssc, nmi, ssd
from labelreg.losses.label import (
    DEFAULT_SCALES,
    cross_entropy_loss,
    dice_loss,
    jaccard_loss,
    mean_squared_loss,
    multi_scale_dice_loss,
    multi_scale_loss,
)
from labelreg.losses.registry import (
    IMAGE_LOSSES,
    LABEL_LOSSES,
    REGULARISERS,
    get_image_loss,
    get_label_loss,
    get_regulariser,
)

__all__ = [
    "dice_loss",
    "jaccard_loss",
    "cross_entropy_loss",
    "mean_squared_loss",
    "multi_scale_loss",
    "multi_scale_dice_loss",
    "DEFAULT_SCALES",
    "bending_energy",
    "gradient_norm",
    "spatial_gradient",
    "ssd",
    "lncc",
    "nmi",
    "mind_ssc",
    "LABEL_LOSSES",
    "REGULARISERS",
    "IMAGE_LOSSES",
    "get_label_loss",
    "get_regulariser",
    "get_image_loss",
]
