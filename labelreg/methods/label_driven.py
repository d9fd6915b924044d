"""Weakly-supervised label-driven registration (Hu et al., MedIA 2018; ``YipengHu/label-reg``).

The network sees only the image pair; training warps the moving *label* of the sampled label
index and minimises

    multi-scale label loss(fixed label, warped moving label)
        + regulariser_weight * regulariser(ddf)
        [+ image_loss_weight * image loss(fixed image, warped moving image)]

with the losses taken from the loss registry by their ``[Loss]`` names. Everything else (data,
augmentation, validation, inference, export) is the shared pairwise base.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from labelreg import config, metrics
from labelreg._tf import tf
from labelreg.config import Config
from labelreg.losses.registry import get_image_loss, get_label_loss, get_regulariser
from labelreg.methods.pairwise import PairwiseMethod
from labelreg.networks.apply import register_pair

__all__ = ["LabelDriven"]


class LabelDriven(PairwiseMethod):
    """label-reg's method: ``[Method] name = labelreg`` (the default of any INI file)."""

    name = "labelreg"

    @classmethod
    def load_config(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
        return config.load(path, overrides)

    def build(self):
        models = super().build()
        loss = self.cfg["Loss"]
        self.label_loss = get_label_loss(loss["similarity_type"],
                                         scales=tuple(loss["similarity_scales"]))
        # An affine field has no bending energy, so label-reg adds no regulariser to GlobalNet.
        affine_only = getattr(models["model"], "affine_only", False)
        self.regulariser_weight = 0.0 if affine_only else float(loss["regulariser_weight"])
        self.regulariser = get_regulariser(loss["regulariser_type"])
        self.image_weight = float(loss["image_loss_weight"])
        self.image_loss = (get_image_loss(loss["image_loss_type"])
                           if loss["image_loss_type"] != "none" else None)
        return models

    def loss_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The loss and monitoring terms of one batch, per sample ``[B]``."""
        out = register_pair(self.ddf_function(training=True), batch["moving_image"],
                            batch["fixed_image"], batch.get("moving_label"),
                            warp_image=self.image_loss is not None)
        ddf = out["ddf"]
        terms: dict[str, tf.Tensor] = {}
        total = tf.zeros(tf.shape(ddf)[:1])
        if "warped_label" in out:
            warped_label = out["warped_label"]
            label = self.label_loss(batch["fixed_label"], warped_label)
            terms["label_loss"] = label
            total += label
            terms["dice"] = metrics.dice(batch["fixed_label"], warped_label)
            terms["centroid_distance_mm"] = metrics.centroid_distance(
                batch["fixed_label"], warped_label, spacing=batch["spacing"])
        if self.regulariser_weight > 0:
            reg = self.regulariser(ddf)
            terms["regulariser"] = reg
            total += self.regulariser_weight * reg
        if self.image_loss is not None:
            image = self.image_loss(batch["fixed_image"], out["warped_moving_image"])
            terms["image_loss"] = image
            total += self.image_weight * image
        terms["loss"] = total
        return terms
