"""The DeepSim feature extractor (Czolbe et al., MIDL 2021) as a method of the shared engine.

A segmentation U-Net (:class:`labelreg.networks.deepsim.DeepSimUNet`) is trained with
cross-entropy on the frames of TIFF stacks and their class labels (or, as an autoencoder, with
mean squared error on the frames). Its encoder stage outputs are the features of the
``deepsim`` image similarity; image-driven registration loads the trained network from this
run's folder (``[Loss] feature_extractor``) and keeps it frozen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from labelreg import metrics
from labelreg._tf import tf
from labelreg.data.stacks import configured_train_dataset, make_stack_eval_pairs, open_stacks
from labelreg.errors import DataError
from labelreg.methods.base import Endpoint, Method
from labelreg.networks.deepsim import DeepSimUNet

__all__ = ["DeepSimFeatures"]


class DeepSimFeatures(Method):
    """``[Method] name = deepsim_features``: trains the DeepSim feature extractor."""

    name = "deepsim_features"


    @property
    def autoencoder(self) -> bool:
        return bool(self.cfg["Network"]["autoencoder"])

    def prepare_data(self) -> None:
        self.stacks = open_stacks(self.cfg["Data"], "train_sequences")
        self.valid = open_stacks(self.cfg["Data"], "valid_sequences",
                                 num_classes=self.stacks.num_classes)
        batch_size = int(self.cfg["Train"]["minibatch_size"])
        if batch_size > len(self.stacks.pairs("consecutive")):
            raise DataError(f"[Train] minibatch_size = {batch_size} exceeds the frame pairs of "
                            f"{self.cfg['Data']['dir_stacks']}.")

    def describe_data(self) -> str:
        return f"frames of {', '.join(self.cfg['Data']['train_sequences'])}"

    def build(self) -> dict[str, keras.Model]:
        net = self.cfg["Network"]
        model = DeepSimUNet(
            ndim=2, in_channels=1, classes=self.stacks.num_classes,
            channels=tuple(net["channels"]), batch_norm=net["batch_norm"],
            dropout=net["dropout"], skip_connections=not self.autoencoder,
            head="sigmoid" if self.autoencoder else "softmax")
        model(tf.zeros([1, *self.stacks.shape, 1]))
        return {"model": model}

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        return configured_train_dataset(self.cfg["Data"], self.stacks,
                                        self.cfg["Train"]["minibatch_size"], seed, start_step)

    def loss_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Both frames of each pair are training samples: ``[2B]`` per-sample terms."""
        images = tf.concat([batch["moving_image"], batch["fixed_image"]], axis=0)
        labels = tf.concat([batch["moving_label"], batch["fixed_label"]], axis=0)
        out = self.models["model"](images, training=True)
        axes = list(range(1, images.shape.rank))
        if self.autoencoder:
            loss = tf.reduce_mean(tf.square(out - images), axis=axes)
            return {"loss": loss}
        cross_entropy = -tf.reduce_mean(
            tf.reduce_sum(labels * tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)), axis=-1),
            axis=axes[:-1])
        hard = tf.one_hot(tf.argmax(out, axis=-1), tf.shape(out)[-1])
        return {"loss": cross_entropy, "dice": tf.reduce_mean(metrics.dice_per_class(labels, hard), axis=-1)}

    def validate(self) -> dict[str, float]:
        if self.valid is None:
            return {}
        model = self.models["model"]
        scores = []
        for pair in make_stack_eval_pairs(self.valid):
            out = model(pair["fixed_image"], training=False)
            if self.autoencoder:
                scores.append([float(tf.reduce_mean(tf.square(out - pair["fixed_image"])))])
                continue
            hard = tf.one_hot(tf.argmax(out, axis=-1), tf.shape(out)[-1])
            scores.append(metrics.dice_per_class(tf.constant(pair["fixed_label"], tf.float32),
                                     hard).numpy().mean(axis=0))
        mean = np.mean(scores, axis=0)
        if self.autoencoder:
            return {"mse": float(mean[0])}
        return {f"dice_class_{k}": float(v) for k, v in enumerate(mean)}

    def meta(self) -> dict[str, Any]:
        return {"frame_shape": list(self.stacks.shape)}

    @classmethod
    def rebuild(cls, description: Mapping[str, Any]) -> dict[str, keras.Model]:
        models = super().rebuild(description)
        shape = description["meta"].get("frame_shape")
        if shape:
            models["model"](tf.zeros([1, *shape, 1]))
        return models

    def infer(self, overwrite: bool = False) -> list[str]:
        """Per-class Dice (or the autoencoder's error) on the validation stacks."""
        from labelreg.methods.runs import load_trained_run

        self.prepare_data()
        self.models = load_trained_run(self.cfg["Train"]["dir_run"]).models
        values = self.validate()
        if not values:
            return ["no [Data] valid_sequences to evaluate on"]
        return ["validation: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items())]

    @classmethod
    def serving_endpoints(cls, models: Mapping[str, keras.Model], meta: Mapping[str, Any],
                          **options: Any) -> dict[str, Endpoint]:
        """``serving_default``: ``image [B, H, W, 1]`` (sides multiples of 2**stages) ->
        ``output`` (class probabilities, or the reconstruction)."""
        model = models["model"]
        spec = tf.TensorSpec([None, None, None, 1], tf.float32, name="image")
        return {"serving_default": (lambda image: {"output": model(image, training=False)},
                                    [spec], ["output"])}
