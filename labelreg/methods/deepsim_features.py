"""The DeepSim feature extractor (Czolbe et al., MIDL 2021) as a method of the shared engine.

A segmentation U-Net (:class:`labelreg.networks.deepsim.DeepSimUNet`) is trained with
cross-entropy on images and their one-hot labels (or, as an autoencoder, with mean squared error
on the images). Its encoder stage outputs are the features of the ``deepsim`` image similarity;
image-driven registration loads the trained network from this run's folder (``[Loss]
feature_extractor``) and keeps it frozen.

The data come from the pairwise data sources (:mod:`labelreg.methods.sources`), which say what
a segmentation sample is: for 2-D TIFF stacks both frames of a pair with their class labels; for
NIfTI pairs (e.g. MR and ultrasound) both images of a case with their label 0 (the gland) as
background / foreground, so one network learns to segment both modalities and its features
compare them. The network takes any image size (it pads to its down-sampling factor).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from labelreg import metrics
from labelreg._tf import tf
from labelreg.methods.base import Endpoint, Method
from labelreg.methods.sources import PairSource, source_for
from labelreg.networks.deepsim import DeepSimUNet

__all__ = ["DeepSimFeatures"]


class DeepSimFeatures(Method):
    """``[Method] name = deepsim_features``: trains the DeepSim feature extractor."""

    name = "deepsim_features"
    source: PairSource

    @property
    def autoencoder(self) -> bool:
        return bool(self.cfg["Network"]["autoencoder"])

    def prepare_data(self) -> None:
        self.source = source_for(self.cfg, self.log)
        self.source.prepare()

    def describe_data(self) -> str:
        return self.source.describe()

    def case_names(self, indices: Sequence[int]) -> list[str]:
        return self.source.case_names(indices)

    def build(self) -> dict[str, keras.Model]:
        net = self.cfg["Network"]
        shape = tuple(self.source.fixed_shape)
        model = DeepSimUNet(
            ndim=len(shape), in_channels=1, classes=self.source.segmentation_classes,
            channels=tuple(net["channels"]), batch_norm=net["batch_norm"],
            dropout=net["dropout"], skip_connections=not self.autoencoder,
            head="sigmoid" if self.autoencoder else "softmax")
        model(tf.zeros([1, *shape, 1]))
        return {"model": model}

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        return self.source.train_dataset(seed, start_step, total_steps, segmentation_labels=True)

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.source.preprocess(batch)

    def loss_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Every image of each pair is a training sample: ``[2B]`` per-sample terms. Images of
        one shape go through the network together (one set of batch statistics, as in the
        original); images of different shapes (MR and ultrasound grids) in one call each."""
        samples = self.source.segmentation_samples(batch)
        if len({tuple(image.shape[1:]) for image, _ in samples}) == 1:
            samples = [(tf.concat([image for image, _ in samples], axis=0),
                        tf.concat([label for _, label in samples], axis=0))]
        terms: dict[str, list[tf.Tensor]] = defaultdict(list)
        for images, labels in samples:
            for key, value in self._sample_terms(images, labels).items():
                terms[key].append(value)
        return {key: tf.concat(values, axis=0) for key, values in terms.items()}

    def _sample_terms(self, images: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self.models["model"](images, training=True)
        axes = list(range(1, images.shape.rank))
        if self.autoencoder:
            return {"loss": tf.reduce_mean(tf.square(out - images), axis=axes)}
        cross_entropy = -tf.reduce_mean(
            tf.reduce_sum(labels * tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)), axis=-1),
            axis=axes[:-1])
        hard = tf.one_hot(tf.argmax(out, axis=-1), tf.shape(out)[-1])
        return {"loss": cross_entropy,
                "dice": tf.reduce_mean(metrics.dice_per_class(labels, hard), axis=-1)}

    def validate(self) -> dict[str, float]:
        """Per-class Dice of the hard segmentation (``dice_class_k``, background is class 0),
        mean over the validation images, and per image role when there are several (NIfTI:
        ``moving_dice_class_k``, ``fixed_dice_class_k``); the autoencoder's ``mse``."""
        model = self.models["model"]
        scores: dict[str, list[np.ndarray]] = defaultdict(list)
        for role, image, label in self.source.segmentation_validation():
            out = model(image, training=False)
            if self.autoencoder:
                scores[role].append(np.array([float(tf.reduce_mean(tf.square(out - image)))]))
                continue
            hard = tf.one_hot(tf.argmax(out, axis=-1), tf.shape(out)[-1])
            scores[role].append(metrics.dice_per_class(tf.constant(label, tf.float32),
                                                       hard).numpy().mean(axis=0))
        if not scores:
            return {}
        if self.autoencoder:
            return {"mse": float(np.mean([v for values in scores.values() for v in values]))}
        values = {f"dice_class_{k}": float(v) for k, v in enumerate(
            np.mean([v for role_values in scores.values() for v in role_values], axis=0))}
        if len(scores) > 1:
            for role, role_values in scores.items():
                values.update({f"{role}_dice_class_{k}": float(v)
                               for k, v in enumerate(np.mean(role_values, axis=0))})
        return values

    def meta(self) -> dict[str, Any]:
        return {"image_shape": list(self.source.fixed_shape)}

    @classmethod
    def rebuild(cls, description: Mapping[str, Any]) -> dict[str, keras.Model]:
        models = super().rebuild(description)
        meta = description["meta"]
        # "frame_shape": the name in runs written before NIfTI data were supported.
        shape = meta.get("image_shape") or meta.get("frame_shape")
        if shape:
            models["model"](tf.zeros([1, *shape, 1]))
        return models

    def infer(self, overwrite: bool = False) -> list[str]:
        """Per-class Dice (or the autoencoder's error) on the validation data."""
        from labelreg.methods.runs import load_trained_run

        self.prepare_data()
        self.models = load_trained_run(self.cfg["Train"]["dir_run"]).models
        values = self.validate()
        if not values:
            return ["no validation data to evaluate on ([Data] valid_sequences for TIFF stacks, "
                    "valid_fraction or dir_valid_* for NIfTI)"]
        return ["validation: " + "  ".join(f"{k} {v:.4f}" for k, v in values.items())]

    @classmethod
    def serving_endpoints(cls, models: Mapping[str, keras.Model], meta: Mapping[str, Any],
                          **options: Any) -> dict[str, Endpoint]:
        """``serving_default``: ``image [B, *S, 1]`` (any sides) -> ``output`` (class
        probabilities, or the reconstruction)."""
        model = models["model"]
        spec = tf.TensorSpec([None] * (model.ndim + 1) + [1], tf.float32, name="image")
        return {"serving_default": (lambda image: {"output": model(image, training=False)},
                                    [spec], ["output"])}
