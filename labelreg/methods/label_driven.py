"""Weakly-supervised label-driven registration (Hu et al., MedIA 2018; ``YipengHu/label-reg``).

The network sees only the image pair; training warps the moving *label* of the sampled label
index and minimises

    multi-scale label loss(fixed label, warped moving label)
        + regulariser_weight * regulariser(ddf)
        [+ image_loss_weight * image loss(fixed image, warped moving image)]
        [+ the network's own terms, e.g. ``centroid_align``'s segmentation Dice and phases]

with the losses taken from the loss registry by their ``[Loss]`` names. Everything else (data,
augmentation, the objective's arithmetic, validation, inference, export) is the shared pairwise
base.
"""

from __future__ import annotations

from labelreg.losses.registry import get_image_loss, get_label_loss, get_regulariser
from labelreg.methods.pairwise import PairwiseMethod

__all__ = ["LabelDriven"]


class LabelDriven(PairwiseMethod):
    """label-reg's method: ``[Method] name = labelreg`` (the default of any INI file)."""

    name = "labelreg"


    def build(self):
        models = super().build()
        loss = self.cfg["Loss"]
        self.label_loss = get_label_loss(loss["similarity_type"],
                                         scales=tuple(loss["similarity_scales"]))
        self.label_weight = 1.0
        self.centroid_weight = float(loss["centroid_weight"])
        # An affine field has no bending energy, so label-reg adds no regulariser to GlobalNet.
        affine_only = getattr(models["model"], "affine_only", False)
        self.regulariser_weight = 0.0 if affine_only else float(loss["regulariser_weight"])
        self.regulariser = get_regulariser(loss["regulariser_type"])
        self.image_weight = float(loss["image_loss_weight"])
        self.image_loss = (get_image_loss(loss["image_loss_type"])
                           if loss["image_loss_type"] != "none" else None)
        return models
