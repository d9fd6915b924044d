"""The similarity-metric network of learnsim (Grzech et al., CVPR 2022), 2-D and 3-D.

"A variational Bayesian method for similarity learning in non-rigid image registration" learns
the image similarity of a registration. The metric maps each image to a one-channel feature map
with a small fully convolutional network, and the data term (SSD or local correlation, see
:mod:`labelreg.losses.learnsim`) compares the feature maps of the fixed and warped images.

Layout, as in the authors' code (called a "U-Net encoder" there, although it has no
down-sampling and no skip connections):

- :class:`DiracConv` blocks: replicate padding of one voxel, an unstrided 3^n convolution
  (bias) and LeakyReLU(0.2); the default channels are 1 -> 4 -> 8 -> 8;
- an aggregation: a 1^n convolution to one channel, without bias.

The initialisation makes the untrained network an identity for non-negative images. Every kernel
is noise of scale 1e-7 except its centre tap, which is positive and sums to one over the output
channels for each input channel (:class:`ScaledDirac`): the sum over channels of a block's output
equals that of its input, and LeakyReLU leaves non-negative values unchanged. The aggregation
weights are ones (plus noise of scale 1e-7), so it sums the channels back and
``encoder(image) ≈ image`` for images in [0, 1]: the learned SSD and LCC start as the plain SSD
and LCC, and training moves them away from there.

With the defaults the 3-D network has 112 + 872 + 1,736 + 8 = 2,728 parameters (the paper's
count) and the 2-D one 40 + 296 + 584 + 8 = 928.

Not a registration network (``[B, *S, C] -> [B, *S, 1]``), so it is not in the network registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from labelreg._tf import tf
from labelreg.networks.activations import leaky_relu
from labelreg.networks.layers import (
    as_float32,
    check_ndim,
    check_positive_int,
    known_channels,
)
from labelreg.ops.checks import check_number
from labelreg.ops.padding import replicate_pad

__all__ = ["replicate_pad", "ScaledDirac", "PerturbedOnes", "DiracConv", "SimilarityEncoder"]

# Seeds of the draws of one block: kernel noise, centre taps, bias; blocks are this far apart.
_SEED_STRIDE = 3


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None or a non-negative integer; received seed={seed!r}.")
    return int(seed)


def _offset(seed: int | None, k: int) -> int | None:
    """The ``k``-th seed derived from ``seed`` (``None`` stays ``None``: Keras's global seed)."""
    return None if seed is None else seed + k


@keras.saving.register_keras_serializable(package="labelreg")
class ScaledDirac(keras.initializers.Initializer):
    """Convolution kernel close to a channel-mixing Dirac delta.

    Every tap is ``scale`` times a standard normal draw, except the centre tap: a uniform draw in
    [0, 1) for each (input, output) channel pair, divided by its sum over the output channels.
    So for each input channel the centre weights are non-negative with an L1 norm of one over
    the output channels, and the sum over the output channels of the convolution of ``x`` is
    (up to the noise) the sum over the input channels of ``x``.

    Args:
        scale: standard deviation of the noise on the taps.
        seed: ``None`` (Keras's global seed) or an integer.

    Call arguments:
        shape: ``(*kernel, in_channels, out_channels)``, odd kernel sizes.
        dtype: the kernel dtype.

    Raises:
        ValueError: for a bad argument or an even kernel size.
    """

    def __init__(self, scale: float = 1e-7, seed: int | None = None) -> None:
        self.scale = check_number(scale, "scale", 0.0)
        self.seed = _check_seed(seed)

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> tf.Tensor:
        shape = tuple(int(s) for s in shape)
        if len(shape) < 3 or any(k % 2 == 0 for k in shape[:-2]):
            raise ValueError(
                f"ScaledDirac needs a kernel shape (*odd sizes, in_channels, out_channels); "
                f"received shape={shape}."
            )
        kernel, (c_in, c_out) = shape[:-2], shape[-2:]
        noise = self.scale * keras.random.normal(shape, seed=_offset(self.seed, 0))
        centre = keras.random.uniform((c_in, c_out), seed=_offset(self.seed, 1))
        centre = centre / tf.maximum(tf.reduce_sum(centre, axis=-1, keepdims=True), 1e-12)
        tap = np.zeros((*kernel, 1, 1), np.float32)
        tap[tuple(k // 2 for k in kernel)] = 1.0
        value = noise * (1.0 - tap) + centre * tap
        return tf.cast(value, dtype or keras.config.floatx())

    def get_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "seed": self.seed}


@keras.saving.register_keras_serializable(package="labelreg")
class PerturbedOnes(keras.initializers.Initializer):
    """Ones plus ``scale`` times a standard normal draw (learnsim's aggregation weights).

    Args:
        scale: standard deviation of the noise.
        seed: ``None`` (Keras's global seed) or an integer.
    """

    def __init__(self, scale: float = 1e-7, seed: int | None = None) -> None:
        self.scale = check_number(scale, "scale", 0.0)
        self.seed = _check_seed(seed)

    def __call__(self, shape: Sequence[int], dtype: Any = None) -> tf.Tensor:
        value = 1.0 + self.scale * keras.random.normal(tuple(shape), seed=self.seed)
        return tf.cast(value, dtype or keras.config.floatx())

    def get_config(self) -> dict[str, Any]:
        return {"scale": self.scale, "seed": self.seed}


@keras.saving.register_keras_serializable(package="labelreg")
class DiracConv(keras.layers.Layer):
    """Replicate padding, an unstrided convolution with bias, LeakyReLU; Dirac-initialised.

    The input is padded by ``kernel_size // 2`` voxels with its edge values and convolved with
    "VALID" padding, so the output has the input's spatial shape and a border voxel sees copies
    of the border rather than zeros (learnsim's ``padding_mode="replicate"``). The kernel starts
    as :class:`ScaledDirac` and the bias as ``N(0, init_scale²)``.

    Args:
        ndim: 2 or 3.
        filters: output channels.
        kernel_size: odd side of the kernel.
        slope: negative slope of the LeakyReLU.
        init_scale: scale of the noise of the initial kernel and bias.
        seed: ``None`` (Keras's global seed) or an integer for the initial weights.

    Call arguments:
        x: ``[B, *S, C_in]``.

    Returns:
        ``[B, *S, filters]``.

    Raises:
        ValueError: for a bad argument.
    """

    def __init__(
        self,
        ndim: int,
        filters: int,
        kernel_size: int = 3,
        slope: float = 0.2,
        init_scale: float = 1e-7,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd; received kernel_size={kernel_size!r}.")
        self.slope = check_number(slope, "slope", 0.0)
        self.init_scale = check_number(init_scale, "init_scale", 0.0)
        self.seed = _check_seed(seed)

    def build(self, input_shape: Sequence[int | None]) -> None:
        c_in = known_channels(input_shape, self.name)
        self.kernel = self.add_weight(
            shape=(*(self.kernel_size,) * self.ndim, c_in, self.filters),
            initializer=ScaledDirac(self.init_scale, self.seed),
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.filters,),
            initializer=keras.initializers.RandomNormal(
                stddev=self.init_scale, seed=_offset(self.seed, 2)
            ),
            name="bias",
        )

    def call(self, x: tf.Tensor) -> tf.Tensor:
        padded = replicate_pad(x, self.kernel_size // 2)
        y = tf.nn.convolution(padded, self.kernel, padding="VALID") + self.bias
        return leaky_relu(y, self.slope)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "slope": self.slope,
            "init_scale": self.init_scale,
            "seed": self.seed,
        }


def _check_features(features: Any) -> tuple[int, ...]:
    message = (
        "features must be a non-empty sequence of positive integers; received "
        f"features={features!r}."
    )
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence) or not features:
        raise ValueError(message)
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1 for c in features):
        raise ValueError(message)
    return tuple(int(c) for c in features)


@keras.saving.register_keras_serializable(package="labelreg")
class SimilarityEncoder(keras.Model):
    """learnsim's similarity-metric network: ``[B, *S, C] -> [B, *S, 1]``.

    A stack of :class:`DiracConv` blocks (one per entry of ``features``; replicate padding,
    3^n kernels, LeakyReLU) followed by a bias-free 1^n aggregation to one channel, initialised
    to ones. At initialisation the network is, to about 1e-6, the sum over the input channels
    (the identity for a one-channel image) for non-negative inputs, which learnsim's intensities
    in [0, 1] are.

    Args:
        ndim: 2 or 3 spatial axes.
        features: output channels of the convolution blocks.
        slope: negative slope of the LeakyReLUs.
        init_scale: scale of the noise on the initial weights (learnsim: 1e-7).
        seed: ``None`` (Keras's global seed, see ``keras.utils.set_random_seed``) or an integer
            making the initial weights reproducible.
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        image: ``[B, *S, C]``, any channel count (learnsim: 1).

    Returns:
        float32 ``[B, *S, 1]``, the aggregated feature map compared by the data terms.

    Raises:
        ValueError: for a bad argument; at build or call for a wrong rank.
    """

    def __init__(
        self,
        ndim: int = 3,
        features: Sequence[int] = (4, 8, 8),
        slope: float = 0.2,
        init_scale: float = 1e-7,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.features = _check_features(features)
        self.slope = check_number(slope, "slope", 0.0)
        self.init_scale = check_number(init_scale, "init_scale", 0.0)
        self.seed = _check_seed(seed)
        self.blocks = [
            DiracConv(
                self.ndim,
                c,
                kernel_size=3,
                slope=self.slope,
                init_scale=self.init_scale,
                seed=_offset(self.seed, _SEED_STRIDE * i),
                name=f"conv_{i}",
            )
            for i, c in enumerate(self.features)
        ]

    def _check_shape(self, shape: Sequence[int | None]) -> None:
        shape = tuple(shape)
        if len(shape) != self.ndim + 2:
            raise ValueError(
                f"SimilarityEncoder is {self.ndim}-D: image must have rank {self.ndim + 2} "
                f"([batch, {self.ndim} spatial axes, channels]); received shape {shape}."
            )

    def build(self, input_shape: Sequence[int | None]) -> None:
        self._check_shape(input_shape)
        prev = known_channels(input_shape, self.name)
        unknown = (None,) * (self.ndim + 1)
        for block, c in zip(self.blocks, self.features, strict=True):
            block.build((*unknown, prev))
            prev = c
        self.aggregation = self.add_weight(
            shape=(self.features[-1], 1),
            initializer=PerturbedOnes(
                self.init_scale, _offset(self.seed, _SEED_STRIDE * len(self.features))
            ),
            name="aggregation",
        )

    def _encode(self, image: tf.Tensor) -> tf.Tensor:
        self._check_shape(image.shape)
        h = image
        for block in self.blocks:
            h = block(h)
        return h

    def encode(self, image: Any) -> tf.Tensor:
        """The features before aggregation, ``[B, *S, features[-1]]`` float32."""
        x = as_float32(image)
        if not self.built:
            self(x)  # builds through __call__, so that the build shape is saved with the model
        return self._encode(x)

    def call(self, image: Any) -> tf.Tensor:
        h = self._encode(as_float32(image))
        # A 1^n convolution without bias is a matrix product over the channel axis.
        return tf.tensordot(h, self.aggregation, axes=[[-1], [0]])

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], 1)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "features": list(self.features),
            "slope": self.slope,
            "init_scale": self.init_scale,
            "seed": self.seed,
        }
