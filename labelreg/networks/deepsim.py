"""DeepSim's U-Net (Czolbe, Krause & Feragen, MIDL 2021 / MedIA 2023), 2-D and 3-D.

The network is trained for segmentation (softmax head, cross-entropy) or as an auto-encoder
(no skip connections, sigmoid head, mean squared error); its encoder stages are then frozen and
their outputs compared by :class:`labelreg.losses.deepsim.DeepSimLoss`.

It is an ordinary single-image network, ``[B, *S, C] -> [B, *S, K]``, not a registration network,
so it is not in the ``[moving, fixed] -> ddf`` network registry.

Layout, as in the authors' code (``src/models/backbone.py``):

- a :class:`Stage` is [batch norm ->] conv (4^n kernel if stride 2, else 3^n) -> LeakyReLU(0.2)
  -> conv 3^n -> LeakyReLU(0.2) [-> channel dropout];
- encoder: one stride-2 stage per entry of ``channels``, each halving the grid;
- decoder: for each entry of ``reversed(channels)``, a stride-1 stage (never batch norm), x2
  linear up-sampling (half-pixel centres, as PyTorch's ``align_corners=False``), then
  concatenation with the encoder output of that resolution (the input image for the last);
- head: conv 3^n -> LeakyReLU -> conv 3^n -> LeakyReLU, both as wide as the last decoder
  activation, then a 1^n conv to the outputs and softmax (or sigmoid).

Differences from the PyTorch original, none of which changes the architecture: Keras's "same"
padding stands for PyTorch's explicit padding of 1 (identical for the 4^n stride-2 kernel on even
sizes and for every 3^n kernel); the kernels start from PyTorch's default distribution
(uniform in ``±1/sqrt(fan_in)``) but the biases start at zero; batch norm keeps PyTorch's
epsilon (1e-5) and momentum (0.1, Keras's 0.9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from labelreg import ops
from labelreg._tf import tf
from labelreg.networks.activations import leaky_relu
from labelreg.networks.layers import (
    as_float32,
    check_ndim,
    check_positive_int,
    conv_layer,
    known_channels,
    static_spatial_shape,
    with_channels,
)

__all__ = ["Stage", "DeepSimUNet", "HEADS"]

_LEAKY_SLOPE = 0.2
# PyTorch's BatchNorm defaults (its momentum 0.1 weighs the new batch; Keras's weighs the old).
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
#: Output activations of :class:`DeepSimUNet`: segmentation and auto-encoder.
HEADS = ("softmax", "sigmoid")


def _torch_kernel_init() -> keras.initializers.Initializer:
    """PyTorch's default convolution kernel: uniform in ``±1/sqrt(fan_in)``."""
    return keras.initializers.VarianceScaling(
        scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
    )


def _conv(
    ndim: int, filters: int, kernel_size: int, strides: int = 1, name: str = "conv"
) -> keras.layers.Layer:
    return conv_layer(ndim, filters, kernel_size, strides=strides, use_bias=True,
                      kernel_initializer=_torch_kernel_init(), name=name)


def _check_rate(value: Any, name: str) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1); received {name}={value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="labelreg")
class Stage(keras.layers.Layer):
    """One DeepSim U-Net stage.

    [batch norm ->] conv (kernel 4 if ``strides == 2`` else 3, bias) -> LeakyReLU(0.2) -> conv 3
    (bias) -> LeakyReLU(0.2) [-> channel dropout]. Padding is "same", so a stride-2 stage maps an
    even size ``s`` to exactly ``s / 2`` (the 4^n kernel is padded by one voxel on each side, as
    in the original).

    Args:
        ndim: 2 or 3.
        filters: output channels of both convolutions.
        strides: 1 or 2 (the first convolution's stride).
        batch_norm: batch-normalise the stage's input (DeepSim: encoder stages only).
        dropout: rate of the channel dropout (``SpatialDropout2D``/``3D``) after the stage; 0
            disables it. The original's default is 0.5.

    Call arguments:
        x: ``[B, *S, C_in]``.
        training: batch statistics and dropout when true; moving averages and no dropout
            otherwise.

    Returns:
        ``[B, *S / strides, filters]``.

    Raises:
        ValueError: for a bad argument.
    """

    def __init__(
        self,
        ndim: int,
        filters: int,
        strides: int = 1,
        batch_norm: bool = False,
        dropout: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        if isinstance(strides, bool) or strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2; received strides={strides!r}.")
        self.strides = int(strides)
        self.batch_norm = bool(batch_norm)
        self.dropout = _check_rate(dropout, "dropout")
        n = self.ndim
        self.norm = (
            keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name="norm")
            if self.batch_norm
            else None
        )
        self.conv0 = _conv(n, self.filters, 4 if self.strides == 2 else 3, self.strides, "conv0")
        self.conv1 = _conv(n, self.filters, 3, 1, "conv1")
        if self.dropout > 0:
            cls = keras.layers.SpatialDropout2D if n == 2 else keras.layers.SpatialDropout3D
            self.drop = cls(self.dropout, name="dropout")
        else:
            self.drop = None

    def build(self, input_shape: Sequence[int | None]) -> None:
        known_channels(input_shape, self.name)
        shape = tuple(input_shape)
        if self.norm is not None:
            self.norm.build(shape)
        self.conv0.build(shape)
        self.conv1.build(with_channels(shape, self.filters))

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        if self.norm is not None:
            x = self.norm(x, training=training)
        x = leaky_relu(self.conv0(x), _LEAKY_SLOPE)
        x = leaky_relu(self.conv1(x), _LEAKY_SLOPE)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return x

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "filters": self.filters,
            "strides": self.strides,
            "batch_norm": self.batch_norm,
            "dropout": self.dropout,
        }


@keras.saving.register_keras_serializable(package="labelreg")
class DeepSimUNet(keras.Model):
    """DeepSim's U-Net: a segmentation network (or auto-encoder) whose encoder gives features.

    ``[B, *S, in_channels] -> [B, *S, K]``: class probabilities (``head="softmax"``,
    ``K = classes``) or a reconstruction in (0, 1) (``head="sigmoid"``, ``K = in_channels``).
    The auto-encoder variant of the paper is ``skip_connections=False, head="sigmoid"``.

    With ``L = len(channels)`` stride-2 stages, an image whose sides are not multiples of
    ``2**L`` is zero-padded at the far end of each axis up to the next multiple, and what the
    padding adds is cropped off again: the output has the input's shape and :meth:`features`
    returns the encoder stage outputs, DeepSim's feature maps, of shape
    ``[B, ceil(S / 2**(i+1)), channels[i]]`` for ``i = 0 .. L-1`` (the same as ``S / 2**(i+1)``
    for multiples). So one network serves images of any size, e.g. the MR and ultrasound grids
    of a prostate pair.

    The paper uses ``channels=(64, 128, 256)`` for the 2-D microscopy data (PhC-U373,
    Platelet-EM) and ``(32, 64, 128)`` for the 3-D brain MRI; DeepSim's 2-D runs use batch norm
    and dropout (the original's dropout rate is 0.5).

    Args:
        ndim: 2 or 3 spatial axes.
        in_channels: channels of the input image.
        classes: output channels of the softmax head (ignored by the sigmoid head, whose output
            has ``in_channels`` channels).
        channels: encoder channels, one stride-2 stage each (the decoder uses them reversed).
        batch_norm: batch norm at the input of every encoder stage.
        dropout: channel-dropout rate after every encoder and decoder stage (0: none).
        skip_connections: concatenate the encoder outputs (and the input) in the decoder.
        head: ``"softmax"`` (segmentation) or ``"sigmoid"`` (auto-encoder).
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        image: ``[B, *S, in_channels]`` with a static ``S`` (any positive sizes).
        training: batch statistics and dropout when true.

    Returns:
        ``[B, *S, K]`` float32.

    Raises:
        ValueError: for a bad argument; at build or call for a wrong rank, channel count or
            spatial size.
    """

    def __init__(
        self,
        ndim: int = 2,
        in_channels: int = 1,
        classes: int = 2,
        channels: Sequence[int] = (64, 128, 256),
        batch_norm: bool = True,
        dropout: float = 0.0,
        skip_connections: bool = True,
        head: str = "softmax",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.classes = check_positive_int(classes, "classes")
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
            raise ValueError(
                "channels must be a non-empty sequence of positive integers; received "
                f"channels={channels!r}."
            )
        for c in channels:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
                raise ValueError(
                    "channels must be a non-empty sequence of positive integers; received "
                    f"channels={channels!r}."
                )
        self.channels = tuple(int(c) for c in channels)
        self.batch_norm = bool(batch_norm)
        self.dropout = _check_rate(dropout, "dropout")
        self.skip_connections = bool(skip_connections)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; received head={head!r}.")
        self.head = head
        self.out_channels = self.classes if head == "softmax" else self.in_channels

        n = self.ndim
        self.encoder = [
            Stage(
                n, c, strides=2, batch_norm=self.batch_norm, dropout=self.dropout, name=f"enc_{i}"
            )
            for i, c in enumerate(self.channels)
        ]
        self.decoder = [
            Stage(n, c, strides=1, batch_norm=False, dropout=self.dropout, name=f"dec_{i}")
            for i, c in enumerate(reversed(self.channels))
        ]
        width = self._head_width()
        self.head_convs = [_conv(n, width, 3, name=f"head_{i}") for i in range(2)]
        self.head_out = _conv(n, self.out_channels, 1, name="head_out")

    @property
    def factor(self) -> int:
        """Total down-sampling, ``2**len(channels)``: inputs are padded to multiples of it."""
        return 2 ** len(self.channels)

    def _skip_channels(self) -> list[int]:
        """Channels concatenated after each decoder stage (coarse to fine)."""
        return [*reversed(self.channels[:-1]), self.in_channels]

    def _head_width(self) -> int:
        if self.skip_connections:
            return self.channels[0] + self.in_channels
        return self.channels[0]

    def _check_shape(self, shape: Sequence[int | None]) -> None:
        shape = tuple(shape)
        name = type(self).__name__
        if len(shape) != self.ndim + 2:
            raise ValueError(
                f"{name} is {self.ndim}-D: image must have rank {self.ndim + 2} ([batch, "
                f"{self.ndim} spatial axes, channels]); received shape {shape}."
            )
        if shape[-1] is not None and shape[-1] != self.in_channels:
            raise ValueError(
                f"{name} expects {self.in_channels} input channel(s); received shape {shape}."
            )

    def build(self, input_shape: Sequence[int | None]) -> None:
        self._check_shape(input_shape)
        unknown = (None,) * (self.ndim + 1)
        prev = self.in_channels
        for stage, c in zip(self.encoder, self.channels, strict=True):
            stage.build((*unknown, prev))
            prev = c
        for stage, c, skip in zip(
            self.decoder, reversed(self.channels), self._skip_channels(), strict=True
        ):
            stage.build((*unknown, prev))
            prev = c + skip if self.skip_connections else c
        for conv in self.head_convs:
            conv.build((*unknown, prev))
            prev = self._head_width()
        self.head_out.build((*unknown, prev))

    def _encode(self, image: Any, training: bool | None
                ) -> tuple[tf.Tensor, list[tf.Tensor], tuple[int, ...]]:
        """``(padded input, encoder outputs of the padded input, input spatial shape)``."""
        x = as_float32(image)
        self._check_shape(x.shape)
        shape = tuple(static_spatial_shape(x, "image"))
        # Zero padding at the far end only, so every level's valid region starts at index 0
        # and cropping is a slice; zeros are what "same" convolutions see beyond a border.
        extra = [(-s) % self.factor for s in shape]
        if any(extra):
            x = tf.pad(x, [[0, 0], *[[0, e] for e in extra], [0, 0]])
        features = []
        h = x
        for stage in self.encoder:
            h = stage(h, training=training)
            features.append(h)
        return x, features, shape

    @staticmethod
    def _crop(x: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
        """``x[:, :shape[0], :shape[1], ..., :]`` (a no-op when ``x`` already has ``shape``)."""
        if tuple(x.shape[1:-1]) == tuple(shape):
            return x
        return x[(slice(None), *[slice(0, s) for s in shape], slice(None))]

    def features(self, image: Any) -> list[tf.Tensor]:
        """DeepSim's feature maps: the encoder stage outputs, in inference mode.

        Batch norm uses its moving averages and dropout is off (``training=False``), whatever
        the surrounding code does.

        Args:
            image: ``[B, *S, in_channels]``.

        Returns:
            ``[B, ceil(S / 2**(i+1)), channels[i]]`` for ``i = 0 .. len(channels) - 1``: the
            part of each level that covers the unpadded image.
        """
        _, features, shape = self._encode(image, training=False)
        return [self._crop(f, [-(-s // 2 ** (i + 1)) for s in shape])
                for i, f in enumerate(features)]

    def call(self, image: Any, training: bool | None = None) -> tf.Tensor:
        x, features, shape = self._encode(image, training)
        skips = [*reversed(features[:-1]), x]
        h = features[-1]
        for stage, skip in zip(self.decoder, skips, strict=True):
            h = stage(h, training=training)
            h = ops.resize(h, [2 * s for s in static_spatial_shape(h, "decoder activation")])
            if self.skip_connections:
                h = tf.concat([h, skip], axis=-1)
        for conv in self.head_convs:
            h = leaky_relu(conv(h), _LEAKY_SLOPE)
        logits = self._crop(self.head_out(h), shape)
        if self.head == "softmax":
            return tf.nn.softmax(logits, axis=-1)
        return tf.sigmoid(logits)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "in_channels": self.in_channels,
            "classes": self.classes,
            "channels": list(self.channels),
            "batch_norm": self.batch_norm,
            "dropout": self.dropout,
            "skip_connections": self.skip_connections,
            "head": self.head,
        }
