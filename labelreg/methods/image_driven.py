"""Image-driven (unsupervised) registration, with any image similarity, DeepSim included
(Czolbe, Krause, Feragen, MIDL 2021).

The network sees the image pair; the loss compares the fixed image with the warped moving image
(``[Loss] image_loss_type``, a loss-registry name with ``image_loss_options``), plus
``regulariser_weight`` (DeepSim's lambda) times the regulariser and an optional supervised label
term; labels otherwise only evaluate. A factory similarity that needs a feature network
(``deepsim``) receives the frozen network of ``[Loss] feature_extractor``: it is held outside the
trained models, so its weights never change and are not part of this run's checkpoints.

Data are NIfTI pairs (the shared pairwise base) or 2-D TIFF stacks, DeepSim's microscopy
sequences: training pairs are random frames within ``max_offset`` of each other, validation and
test pairs consecutive frames.
"""

from __future__ import annotations

import keras

from labelreg.errors import ConfigError
from labelreg.losses.registry import LOSSES, build_loss, get_label_loss, get_regulariser
from labelreg.methods import image_driven_config
from labelreg.methods.pairwise import PairwiseMethod
from labelreg.methods.runs import load_trained_run
from labelreg.methods.sources import STACK_METRIC_COLUMNS, jacobian_statistics

__all__ = ["ImageDriven", "STACK_METRIC_COLUMNS", "jacobian_statistics"]


class ImageDriven(PairwiseMethod):
    """``[Method] name = image_driven``: unsupervised registration by image similarity."""

    name = "image_driven"

    # -- model and objective --------------------------------------------------------------------

    def build(self) -> dict[str, keras.Model]:
        models = super().build()
        loss = self.cfg["Loss"]
        options = image_driven_config.parse_options(self.cfg, "Loss", "image_loss_options")
        # A factory similarity (deepsim) owns a feature network; plain functions take none.
        if loss.get("feature_extractor") is not None and LOSSES.info(
                loss["image_loss_type"])["factory"]:
            run = load_trained_run(loss["feature_extractor"])
            self.extractor = run.models[run.method.feature_network_key]
            self.extractor.trainable = False  # frozen: not trained, not in this run's checkpoint
            options["feature_extractor"] = self.extractor
        try:
            self.image_loss = build_loss(loss["image_loss_type"], "image", **options)
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{self.cfg.path}: [Loss] image_loss_options: {err}") from err
        self.image_weight = float(loss["image_loss_weight"])
        self.regulariser = get_regulariser(loss["regulariser_type"])
        self.regulariser_weight = float(loss["regulariser_weight"])
        if loss["label_loss_weight"] > 0:
            self.label_loss = get_label_loss(loss["label_loss_type"],
                                             scales=tuple(loss["similarity_scales"]))
            self.label_weight = float(loss["label_loss_weight"])
        return models
