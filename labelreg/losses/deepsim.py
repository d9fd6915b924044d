"""DeepSim: a semantic image dissimilarity from a frozen feature extractor.

Czolbe, Krause & Feragen, "Semantic similarity metrics for (learned) image registration", MIDL
2021 / MedIA 2023. The fixed and the warped moving image go through the same pretrained network
(DeepSim: the encoder of :class:`labelreg.networks.deepsim.DeepSimUNet`, trained for
segmentation or as an auto-encoder); at each feature level the channels of every voxel form a
vector, and the loss is one minus the cosine similarity of the two vectors, averaged over space
and then over levels.

This module does not import the networks: the loss receives its extractor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from labelreg._tf import tf
from labelreg.losses.frozen import image_gradient_only
from labelreg.losses.label import check_pair

__all__ = ["DeepSimLoss", "cosine_similarity", "COMPARISONS"]

_NAMES = ("fixed", "warped")

#: What :class:`DeepSimLoss` compares: the encoder features (the paper's) or the extractor's
#: segmentation output.
COMPARISONS = ("features", "segmentation")


def cosine_similarity(a: tf.Tensor, b: tf.Tensor, eps: float = 1e-6) -> tf.Tensor:
    """Per-voxel cosine similarity over channels, with DeepSim's clamped norms.

    ``Σ_c a·b / (sqrt(max(Σ_c a², eps)) · sqrt(max(Σ_c b², eps)))``: a voxel whose feature vector
    is (nearly) zero has a similarity near 0 rather than a division by zero.

    Args:
        a, b: ``[B, *S, C]`` feature maps.
        eps: floor of the squared norms.

    Returns:
        ``[B, *S]``.
    """
    dot = tf.reduce_sum(a * b, axis=-1)
    norm_a = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(a), axis=-1), eps))
    norm_b = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(b), axis=-1), eps))
    return dot / (norm_a * norm_b)


def _output_function(extractor: Any) -> Callable[[tf.Tensor], tf.Tensor]:
    """``image -> class probabilities`` of a segmentation extractor, in inference mode."""
    if isinstance(extractor, keras.layers.Layer):
        return lambda image: extractor(image, training=False)
    if callable(extractor):
        return extractor
    raise TypeError("compare = segmentation needs a callable extractor returning class "
                    f"probabilities; received {type(extractor).__name__}.")


def _feature_function(extractor: Any) -> Callable[[tf.Tensor], Any]:
    """``image -> list of feature maps`` for an extractor, always in inference mode."""
    features = getattr(extractor, "features", None)
    if callable(features):
        return features
    if isinstance(extractor, keras.layers.Layer):
        return lambda image: extractor(image, training=False)
    if callable(extractor):
        return extractor
    raise TypeError(
        "feature_extractor must have a `features(image)` method (e.g. DeepSimUNet) or be a "
        "Keras model or callable returning a list of feature maps; received "
        f"{type(extractor).__name__}."
    )


class DeepSimLoss:
    """DeepSim dissimilarity ``loss(fixed, warped) -> [B]``: ``1 - mean cosine`` of deep features.

    For each selected level ``l`` of ``feature_extractor.features(image)``, the per-voxel cosine
    similarity over channels (:func:`cosine_similarity`) of the fixed and warped features is
    averaged over space; the levels are averaged with equal weight, and the loss is one minus
    that mean. It is 0 for identical images and at most 2.

    The extractor is frozen: it is marked ``trainable = False`` (so it has no trainable weights
    and adds none to a model holding it), it runs in inference mode (batch norm uses its moving
    averages, dropout is off, nothing is updated), and the loss passes no gradient to its
    weights even inside a ``tf.GradientTape`` that watches them (a tape watches every variable a
    computation reads, trainable or not): a custom gradient returns ``None`` for them. Hold the
    extractor outside the models you train, as DeepSim does: its weights then never reach an
    optimizer. Gradients flow to ``warped`` only; ``fixed`` is treated as data (a constant).

    Args:
        feature_extractor: an object with a ``features(image) -> list of [B, *S_l, C_l]`` method
            (e.g. :class:`labelreg.networks.deepsim.DeepSimUNet`; the method must itself run in
            inference mode), or a Keras model (called with ``training=False``) or callable
            returning such a list (or a single tensor, one level).
        levels: indices of the feature levels to compare (DeepSim's ``levels`` ablations);
            ``None`` compares all.
        eps: floor of the squared feature norms in the cosine.
        zero_mean: subtract each voxel's mean over channels from the features before the cosine
            (the ``zero_mean`` option of the original).
        compare: ``"features"`` (the paper's: the cosine of the encoder features above) or
            ``"segmentation"``: ``1 - soft Dice`` of the extractor's outputs (its class
            probabilities, ``[B, *S, K]`` with ``K >= 2``) over the foreground classes
            ``1 .. K-1``, ``1 - 2 Σ p_f p_w / (Σ p_f + Σ p_w + eps)`` summed over voxels and
            those classes. The encoder features of an extractor trained to segment also
            describe texture everywhere; its output answers "where is the structure" in both
            images alike (for MR and ultrasound, the gland), and its Dice is highest where the
            two structures overlap, not where large background regions do. In ``[0, 1]``; 0
            only for identical hard segmentations. ``levels`` and ``zero_mean`` do not apply.

    Call arguments:
        fixed: ``[B, *S, C]``.
        warped: ``[B, *S, C]``, the warped moving image.

    Returns:
        float32 ``[B]``.

    Raises:
        TypeError: for an extractor without features.
        ValueError: for bad options; at call for mismatched shapes or a level the extractor does
            not have.
    """

    def __init__(
        self,
        feature_extractor: Any,
        levels: Sequence[int] | None = None,
        eps: float = 1e-6,
        zero_mean: bool = False,
        compare: str = "features",
    ) -> None:
        if compare not in COMPARISONS:
            raise ValueError(f"compare must be one of {COMPARISONS}; received compare={compare!r}.")
        if compare == "segmentation" and (levels is not None or zero_mean):
            raise ValueError("levels and zero_mean select encoder features: they do not apply "
                             "to compare = segmentation.")
        self.compare = compare
        self.feature_extractor = feature_extractor
        # Each comparison reads one side of the extractor: its encoder features or its output.
        if compare == "segmentation":
            self._outputs = _output_function(feature_extractor)
        else:
            self._features = _feature_function(feature_extractor)
        if isinstance(feature_extractor, keras.layers.Layer):
            feature_extractor.trainable = False
        if levels is not None:
            if isinstance(levels, (int, np.integer)) and not isinstance(levels, bool):
                levels = [levels]
            ok = (
                isinstance(levels, Sequence)
                and len(levels) > 0
                and all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
                    for v in levels
                )
            )
            if not ok or len(set(levels)) != len(levels):
                raise ValueError(
                    "levels must be None or distinct non-negative integers; received "
                    f"levels={levels!r}."
                )
            levels = tuple(sorted(int(v) for v in levels))
        self.levels = levels
        ok = isinstance(eps, (int, float, np.integer, np.floating)) and not isinstance(eps, bool)
        if not ok or not eps > 0:
            raise ValueError(f"eps must be a positive number; received eps={eps!r}.")
        self.eps = float(eps)
        self.zero_mean = bool(zero_mean)

    def _extract(self, image: tf.Tensor) -> list[tf.Tensor]:
        out = self._features(image)
        feats = [out] if tf.is_tensor(out) else list(out)
        if self.levels is None:
            chosen = feats
        else:
            missing = [v for v in self.levels if v >= len(feats)]
            if missing:
                raise ValueError(
                    f"levels={list(self.levels)} but the feature extractor gives {len(feats)} "
                    f"level(s) (0 .. {len(feats) - 1})."
                )
            chosen = [feats[v] for v in self.levels]
        chosen = [tf.cast(f, tf.float32) for f in chosen]
        if self.zero_mean:
            chosen = [f - tf.reduce_mean(f, axis=-1, keepdims=True) for f in chosen]
        return chosen

    def _similarity(self, fixed_features: list[tf.Tensor], warped: tf.Tensor) -> tf.Tensor:
        """Mean over levels of the spatially averaged cosine, ``[B]``."""
        per_level = []
        for f, w in zip(fixed_features, self._extract(warped), strict=True):
            cos = cosine_similarity(f, w, self.eps)
            per_level.append(tf.reduce_mean(cos, axis=list(range(1, cos.shape.rank))))
        return tf.add_n(per_level) / float(len(per_level))

    def _foreground(self, image: tf.Tensor) -> tf.Tensor:
        """The extractor's foreground probabilities ``[B, *S, K-1]``."""
        probabilities = tf.cast(self._outputs(image), tf.float32)
        if probabilities.shape[-1] is not None and probabilities.shape[-1] < 2:
            raise ValueError("compare = segmentation needs an extractor with a segmentation "
                             "output (class probabilities, at least 2 classes); this one gives "
                             f"{probabilities.shape[-1]} channel(s) (an autoencoder?).")
        return probabilities[..., 1:]

    def _segmentation_loss(self, fixed: tf.Tensor, warped: tf.Tensor) -> tf.Tensor:
        target = tf.stop_gradient(self._foreground(tf.stop_gradient(fixed)))

        def dissimilarity(moving: tf.Tensor) -> tf.Tensor:
            predicted = self._foreground(moving)
            axes = list(range(1, predicted.shape.rank))
            overlap = tf.reduce_sum(target * predicted, axis=axes)
            total = tf.reduce_sum(target, axis=axes) + tf.reduce_sum(predicted, axis=axes)
            return 1.0 - 2.0 * overlap / (total + self.eps)

        return image_gradient_only(dissimilarity, warped)

    def __call__(self, fixed: Any, warped: Any) -> tf.Tensor:
        fixed, warped = check_pair(fixed, warped, _NAMES)
        if self.compare == "segmentation":
            return self._segmentation_loss(fixed, warped)
        fixed_features = [tf.stop_gradient(f) for f in self._extract(tf.stop_gradient(fixed))]

        return 1.0 - image_gradient_only(
            lambda moving: self._similarity(fixed_features, moving), warped)

    def __repr__(self) -> str:
        return (
            f"DeepSimLoss(feature_extractor={type(self.feature_extractor).__name__}, "
            f"levels={self.levels}, eps={self.eps}, zero_mean={self.zero_mean}, "
            f"compare={self.compare!r})"
        )
