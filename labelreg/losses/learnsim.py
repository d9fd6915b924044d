"""learnsim's data terms: SSD and local correlation of learned feature maps.

Grzech et al., "A variational Bayesian method for similarity learning in non-rigid image
registration", CVPR 2022. The fixed and the warped moving image go through the same network
``f`` (:class:`labelreg.networks.learnsim.SimilarityEncoder`, one output channel), and a classic
data term compares ``f(fixed)`` with ``f(warped)``:

- SSD: ``0.5 Σ (f(F) - f(W))²``;
- LCC: ``-Σ cross² / (var_F var_W + 1e-5)`` over local ``window``^n boxes (below).

With ``encoder=None`` (learnsim's baselines) ``f`` is the identity. The encoder is initialised
so that ``f(I) ≈ I`` for images in [0, 1], so the learned terms start as the baselines.

Unlike :mod:`labelreg.losses.image`, whose losses are means scaled to be comparable across image
sizes, these are **sums** over the voxels (inside the fixed-image mask), as in the reference
code: their scale grows with the image size, so weights of a regulariser tuned for one image
size do not carry over to another.

Local correlation, as learnsim computes it. With ``box`` the sum over the ``window``^n box
centred on each voxel, taken over the edge-padded map (replicate padding), ``N = window^n``:
``u = box(x) / N`` is the local mean at every voxel; ``d = x - u``; ``cross = box(d_F d_W)``,
``var_F = box(d_F²)``, ``var_W = box(d_W²)``. Each voxel's own mean is subtracted before the box
sum, so this is not exactly the textbook windowed covariance (which centres the whole window on
the mean of its centre voxel); it agrees with it inside regions where the local mean is flat.
The 1e-5 is absolute: a window whose two variances have a product well below 1e-5 (flat
regions) contributes about nothing rather than a 0/0.

This module does not build networks: the losses receive their encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.losses.frozen import image_gradient_only
from labelreg.losses.label import check_pair
from labelreg.ops.checks import check_integer
from labelreg.ops.padding import replicate_pad

__all__ = ["learned_ssd", "learned_lcc", "LearnedSimilarity", "TERMS"]

_NAMES = ("fixed", "warped")
#: The data terms of :class:`LearnedSimilarity`.
TERMS = ("ssd", "lcc")
_LCC_EPS = 1e-5


def _check_window(window: Any) -> int:
    return check_integer(window, "window", 1, odd=True)


def _check_mask(mask: Any, like: tf.Tensor) -> tf.Tensor | None:
    """``mask`` as float32 ``[B or 1, *S, 1]``, checked against the image ``like``."""
    if mask is None:
        return None
    m = tf.convert_to_tensor(mask)
    m = m if m.dtype == tf.float32 else tf.cast(m, tf.float32)
    shape, image = tuple(m.shape), tuple(like.shape)
    ok = (
        len(shape) == len(image)
        and shape[-1] in (1, None)
        and all(
            a is None or b is None or a == b for a, b in zip(shape[1:-1], image[1:-1], strict=True)
        )
        and (shape[0] in (1, None) or image[0] is None or shape[0] == image[0])
    )
    if not ok:
        raise ValueError(
            f"mask must have shape [batch, *spatial, 1] matching the images; received mask "
            f"shape {shape} and image shape {image}."
        )
    return m


def _sum(x: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    """Per-sample sum over all non-batch axes, restricted to (weighted by) ``mask``."""
    if mask is not None:
        x = x * mask
    return tf.reduce_sum(x, axis=list(range(1, x.shape.rank)))


def _box_mean(x: tf.Tensor, window: int) -> tf.Tensor:
    """Mean of each channel over a centred ``window``^n box, the image edge-padded."""
    n = x.shape.rank - 2
    padded = replicate_pad(x, window // 2)
    return tf.nn.pool(padded, [window] * n, pooling_type="AVG", padding="VALID")


def _ssd_term(a: tf.Tensor, b: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
    return 0.5 * _sum(tf.square(a - b), mask)


def _lcc_term(a: tf.Tensor, b: tf.Tensor, mask: tf.Tensor | None, window: int) -> tf.Tensor:
    size = float(window ** (a.shape.rank - 2))
    # One pooling pass per stage, the maps stacked on the batch axis.
    mean_a, mean_b = tf.split(_box_mean(tf.concat([a, b], axis=0), window), 2, axis=0)
    da, db = a - mean_a, b - mean_b
    sums = size * _box_mean(tf.concat([da * db, da * da, db * db], axis=0), window)
    cross, var_a, var_b = tf.split(sums, 3, axis=0)
    return -_sum(tf.square(cross) / (var_a * var_b + _LCC_EPS), mask)


def _feature_map(encoder: Any, training: bool | None = None) -> Callable[[tf.Tensor], tf.Tensor]:
    """``image -> f(image)`` as float32; the identity for ``encoder=None``."""
    if encoder is None:
        return lambda image: image
    if isinstance(encoder, keras.layers.Layer):
        return lambda image: tf.cast(encoder(image, training=training), tf.float32)
    if callable(encoder):
        return lambda image: tf.cast(encoder(image), tf.float32)
    raise TypeError(
        "encoder must be None, a Keras model (e.g. SimilarityEncoder) or a callable "
        f"image -> feature map; received {type(encoder).__name__}."
    )


def _check_features(a: tf.Tensor, image: tf.Tensor) -> None:
    """The feature map must be on the image's grid (any channel count)."""
    if a.shape.rank != image.shape.rank or tuple(a.shape[:-1]) != tuple(image.shape[:-1]):
        raise ValueError(
            f"the encoder must keep the image's batch and spatial shape; received image shape "
            f"{tuple(image.shape)} and feature shape {tuple(a.shape)}."
        )


def learned_ssd(encoder: Any, fixed: Any, warped: Any, mask: Any = None) -> tf.Tensor:
    """learnsim's SSD of feature maps: ``0.5 Σ (f(fixed) - f(warped))²`` per sample.

    Args:
        encoder: the feature network ``f`` (e.g. a
            :class:`~labelreg.networks.learnsim.SimilarityEncoder`, ``[B, *S, C] -> [B, *S, 1]``)
            or ``None`` for the plain SSD of the images.
        fixed, warped: ``[B, *S, C]``.
        mask: optional fixed-image mask ``[B, *S, 1]`` (1 inside): only voxels inside are summed.

    Returns:
        float32 ``[B]``, a sum over voxels (and channels), not a mean.

    Raises:
        ValueError: for mismatched shapes or a bad mask.
    """
    f, w = check_pair(fixed, warped, _NAMES)
    m = _check_mask(mask, f)
    features = _feature_map(encoder)
    a, b = features(f), features(w)
    _check_features(a, f)
    return _ssd_term(a, b, m)


def learned_lcc(
    encoder: Any, fixed: Any, warped: Any, mask: Any = None, window: int = 3
) -> tf.Tensor:
    """learnsim's local correlation of feature maps: ``-Σ cross² / (var_F var_W + 1e-5)``.

    The local sums are over a ``window``^n box around every voxel, with replicate padding at the
    border; see the module docstring for the exact definition. Lower is better: a perfect
    local match of non-flat maps scores about ``-1`` per voxel.

    Args:
        encoder: the feature network ``f`` or ``None`` for the plain LCC of the images.
        fixed, warped: ``[B, *S, C]``.
        mask: optional fixed-image mask ``[B, *S, 1]`` (1 inside): only voxels inside are summed
            (the local sums themselves still see the whole image, as in learnsim).
        window: odd side of the box (learnsim: 3, i.e. ``s = 1``).

    Returns:
        float32 ``[B]``, a sum over voxels (and channels).

    Raises:
        ValueError: for mismatched shapes, a bad mask or a bad window.
    """
    window = _check_window(window)
    f, w = check_pair(fixed, warped, _NAMES)
    m = _check_mask(mask, f)
    features = _feature_map(encoder)
    a, b = features(f), features(w)
    _check_features(a, f)
    return _lcc_term(a, b, m, window)


class LearnedSimilarity:
    """A learnsim data term as an image loss ``loss(fixed, warped) -> [B]``.

    ``term="ssd"`` is :func:`learned_ssd`, ``term="lcc"`` :func:`learned_lcc`, both on
    ``f = encoder``. Used frozen, it is the image loss of a registration network trained with a
    learned metric ("VXM + learnt"); used unfrozen, it is the data term through which the metric
    itself is trained.

    Frozen (the default): the loss passes no gradient to the encoder's weights, even inside a
    ``tf.GradientTape`` that watches them (a tape watches every variable a computation reads): a
    custom gradient returns ``None`` for them, so an optimizer never moves them. Gradients flow
    to ``warped`` only; ``fixed`` and the mask are treated as data. The encoder runs in inference
    mode, and its ``trainable`` flag is left alone, so the same encoder can be trained elsewhere
    (through an unfrozen loss) between uses.

    Not frozen: an ordinary differentiable function of the encoder's weights and both images.

    Args:
        encoder: the feature network (e.g.
            :class:`~labelreg.networks.learnsim.SimilarityEncoder`) or ``None`` (plain SSD/LCC).
        term: ``"ssd"`` or ``"lcc"``. (Not called ``kind``: :func:`build_loss` takes ``kind``
            itself, so ``build_loss("learnsim", "image", encoder=net, term="lcc")``.)
        mask: default fixed-image mask ``[B or 1, *S, 1]``, used when a call passes none.
        window: odd box side of the LCC (ignored by SSD).
        frozen: whether to keep gradients off the encoder's weights.

    Call arguments:
        fixed: ``[B, *S, C]``.
        warped: ``[B, *S, C]``, the warped moving image.
        mask: optional ``[B, *S, 1]`` mask for this call, replacing the default one.

    Returns:
        float32 ``[B]``.

    Raises:
        TypeError: for an encoder that is not callable.
        ValueError: for a bad option; at call for mismatched shapes or a bad mask.
    """

    def __init__(
        self,
        encoder: Any = None,
        term: str = "ssd",
        mask: Any = None,
        window: int = 3,
        frozen: bool = True,
        feature_extractor: Any = None,
    ) -> None:
        # ``feature_extractor`` is the name every learned similarity of the loss registry takes
        # its network by (image-driven registration passes it so); ``encoder`` is learnsim's.
        encoder = encoder if encoder is not None else feature_extractor
        if term not in TERMS:
            raise ValueError(f"term must be one of {TERMS}; received term={term!r}.")
        self.encoder = encoder
        self.term = term
        self.window = _check_window(window)
        self.mask = None if mask is None else tf.cast(tf.convert_to_tensor(mask), tf.float32)
        self.frozen = bool(frozen)
        self._features = _feature_map(encoder, training=False if self.frozen else None)

    def _value(self, a: tf.Tensor, b: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
        if self.term == "ssd":
            return _ssd_term(a, b, mask)
        return _lcc_term(a, b, mask, self.window)

    def __call__(self, fixed: Any, warped: Any, mask: Any = None) -> tf.Tensor:
        fixed, warped = check_pair(fixed, warped, _NAMES)
        mask = _check_mask(self.mask if mask is None else mask, fixed)
        if not self.frozen:
            a, b = self._features(fixed), self._features(warped)
            _check_features(a, fixed)
            return self._value(a, b, mask)

        target = tf.stop_gradient(self._features(tf.stop_gradient(fixed)))
        _check_features(target, fixed)
        if mask is not None:
            mask = tf.stop_gradient(mask)

        return image_gradient_only(
            lambda moving: self._value(target, self._features(moving), mask), warped)

    def __repr__(self) -> str:
        encoder = None if self.encoder is None else type(self.encoder).__name__
        return (
            f"LearnedSimilarity(encoder={encoder}, term={self.term!r}, window={self.window}, "
            f"frozen={self.frozen}, mask={'set' if self.mask is not None else None})"
        )
