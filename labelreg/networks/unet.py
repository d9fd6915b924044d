"""A plain U-Net (VoxelMorph / DeepSim style) as a backbone and as a registration network."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.networks.activations import leaky_relu
from labelreg.networks.layers import (
    RegistrationModel,
    as_float32,
    batch_norm,
    check_ndim,
    check_nonnegative_int,
    check_positive_int,
    conv_layer,
    known_channels,
    resize_like,
    with_channels,
)
from labelreg.networks.remat import checkpointed, remat_enabled

__all__ = ["UNetBackbone", "UNet"]

_LEAKY_SLOPE = 0.2


@keras.saving.register_keras_serializable(package="labelreg")
class LeakyConvBlock(keras.layers.Layer):
    """Two 3^n convolutions, each followed by [batch norm and] LeakyReLU(0.2).

    Args:
        ndim: 2 or 3.
        filters: output channels of both convolutions.
        use_batch_norm: conv (no bias) -> batch norm -> LeakyReLU instead of conv (bias) ->
            LeakyReLU.

    Call arguments:
        x: ``[B, *S, C_in]``.
        training: batch-norm mode (unused without batch norm).

    Returns:
        ``[B, *S, filters]``.
    """

    def __init__(
        self, ndim: int, filters: int, use_batch_norm: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        self.use_batch_norm = bool(use_batch_norm)
        self.convs = [
            conv_layer(
                self.ndim, self.filters, 3, use_bias=not self.use_batch_norm, name=f"conv{i}"
            )
            for i in range(2)
        ]
        self.norms = [batch_norm(f"norm{i}") for i in range(2)] if self.use_batch_norm else []

    def build(self, input_shape: Sequence[int | None]) -> None:
        known_channels(input_shape, self.name)
        shape = tuple(input_shape)
        for i, conv in enumerate(self.convs):
            conv.build(shape)
            shape = with_channels(shape, self.filters)
            if self.use_batch_norm:
                self.norms[i].build(shape)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.use_batch_norm:
                x = self.norms[i](x, training=training)
            x = leaky_relu(x, _LEAKY_SLOPE)
        return x

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "filters": self.filters,
            "use_batch_norm": self.use_batch_norm,
        }


@keras.saving.register_keras_serializable(package="labelreg")
class UNetBackbone(keras.Model):
    """A U-Net on one image: ``[B, *S, C] -> [B, *S, out_channels]``, with encoder features.

    Levels ``0 .. depth`` with ``c * 2**d`` channels at level ``d`` (``c`` =
    ``num_channel_initial``):

    - encoder: level 0 is a ``LeakyConvBlock`` (two 3^n convolutions with LeakyReLU(0.2)) at
      full resolution; each deeper level halves the grid ("SAME": ``ceil(s / 2)``), by max-pooling
      (``pooling=True``, as VoxelMorph) or by a stride-2 3^n convolution with LeakyReLU
      (``pooling=False``, like DeepSim's strided stages), then applies a ``LeakyConvBlock``;
    - decoder: from level ``depth - 1`` to 0, linear up-sampling onto the encoder's grid of that
      level (exact for odd sizes), concatenation with that encoder output, ``LeakyConvBlock``;
    - head: a 3^n convolution with bias to ``out_channels`` and ``out_activation``; with
      ``zero_init_output`` its kernel and bias start at zero (a registration network then starts
      at the identity).

    ``encode(image)`` returns the encoder outputs of every level (full resolution first), the
    multi-scale features a DeepSim-style similarity compares; call it with ``training=False`` for
    a frozen feature extractor.

    Args:
        ndim: 2 or 3 spatial axes.
        num_channel_initial: ``c``.
        depth: number of down-sampling steps (>= 1).
        out_channels: channels of the output.
        out_activation: Keras activation name for the output (e.g. ``"softmax"`` for a
            segmentation), or ``None`` for a linear output.
        zero_init_output: initialise the output convolution to zero.
        pooling: down-sample by max-pooling (``True``) or strided convolution (``False``).
        use_batch_norm: batch norm after every convolution (inference mode unless
            ``training=True``).
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        image: ``[B, *S, C]`` with a static ``S``.
        training: batch-norm mode.

    Returns:
        ``[B, *S, out_channels]``.
    """

    def __init__(
        self,
        ndim: int = 3,
        num_channel_initial: int = 16,
        depth: int = 4,
        out_channels: int = 1,
        out_activation: str | None = None,
        zero_init_output: bool = False,
        pooling: bool = True,
        use_batch_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.checkpointing = remat_enabled()  # see labelreg.networks.remat
        self.ndim = check_ndim(ndim)
        self.num_channel_initial = check_positive_int(num_channel_initial, "num_channel_initial")
        self.depth = check_positive_int(depth, "depth")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        if out_activation is not None and not isinstance(out_activation, str):
            raise ValueError(
                "out_activation must be a Keras activation name or None; received "
                f"out_activation={out_activation!r}."
            )
        try:
            keras.activations.get(out_activation)
        except ValueError as err:
            raise ValueError(
                f"out_activation must be a Keras activation name or None; received "
                f"out_activation={out_activation!r}."
            ) from err
        self.out_activation = out_activation
        self.zero_init_output = bool(zero_init_output)
        self.pooling = bool(pooling)
        self.use_batch_norm = bool(use_batch_norm)

        c, n = self.num_channel_initial, self.ndim
        self.encoder_blocks = [
            LeakyConvBlock(n, c * 2**d, self.use_batch_norm, name=f"enc_{d}")
            for d in range(self.depth + 1)
        ]
        if self.pooling:
            pool = keras.layers.MaxPooling2D if n == 2 else keras.layers.MaxPooling3D
            self.downsamplers = [
                pool(pool_size=2, strides=2, padding="same", name=f"pool_{d}")
                for d in range(1, self.depth + 1)
            ]
        else:
            self.downsamplers = [
                conv_layer(n, c * 2 ** (d - 1), 3, strides=2, use_bias=True, name=f"down_{d}")
                for d in range(1, self.depth + 1)
            ]
        self.decoder_blocks = [
            LeakyConvBlock(n, c * 2**d, self.use_batch_norm, name=f"dec_{d}")
            for d in range(self.depth - 1, -1, -1)
        ]
        init = "zeros" if self.zero_init_output else "glorot_uniform"
        self.head = conv_layer(
            n,
            self.out_channels,
            3,
            use_bias=True,
            kernel_initializer=init,
            bias_initializer="zeros",
            activation=out_activation,
            name="head",
        )

    def _check_rank(self, shape: Sequence[int | None]) -> None:
        if len(shape) != self.ndim + 2:
            raise ValueError(
                f"{type(self).__name__} is {self.ndim}-D: image must have rank {self.ndim + 2} "
                f"([batch, {self.ndim} spatial axes, channels]); received shape "
                f"{tuple(shape)}."
            )

    def build(self, input_shape: Sequence[int | None]) -> None:
        self._check_rank(tuple(input_shape))
        c = self.num_channel_initial
        unknown = (None,) * (self.ndim + 1)
        self.encoder_blocks[0].build(tuple(input_shape))
        for d in range(1, self.depth + 1):
            if not self.pooling:
                self.downsamplers[d - 1].build((*unknown, c * 2 ** (d - 1)))
            self.encoder_blocks[d].build((*unknown, c * 2 ** (d - 1)))
        for d, block in zip(range(self.depth - 1, -1, -1), self.decoder_blocks, strict=True):
            block.build((*unknown, c * 2 ** (d + 1) + c * 2**d))
        self.head.build((*unknown, c))

    def encode(self, image: Any, training: bool | None = False) -> list[tf.Tensor]:
        """Encoder outputs ``[B, *S_d, c * 2**d]`` for ``d = 0 .. depth`` (``S_0 = S``)."""
        x = tf.convert_to_tensor(image)
        if x.dtype != tf.float32:
            x = tf.cast(x, tf.float32)
        self._check_rank(tuple(x.shape))
        remat = self.checkpointing
        features = [checkpointed(self.encoder_blocks[0], remat, training=training)(x)]
        for down, block in zip(self.downsamplers, self.encoder_blocks[1:], strict=True):
            h = down(features[-1])
            if not self.pooling:
                h = leaky_relu(h, _LEAKY_SLOPE)
            features.append(checkpointed(block, remat, training=training)(h))
        return features

    def call(self, image: Any, training: bool | None = None) -> tf.Tensor:
        features = self.encode(image, training=training)
        x = features[-1]
        for level, block in zip(range(self.depth - 1, -1, -1), self.decoder_blocks, strict=True):
            skip = features[level]
            x = tf.concat([resize_like(x, skip), skip], axis=-1)
            x = checkpointed(block, self.checkpointing, training=training)(x)
        return self.head(x)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "num_channel_initial": self.num_channel_initial,
            "depth": self.depth,
            "out_channels": self.out_channels,
            "out_activation": self.out_activation,
            "zero_init_output": self.zero_init_output,
            "pooling": self.pooling,
            "use_batch_norm": self.use_batch_norm,
        }


@keras.saving.register_keras_serializable(package="labelreg")
class UNet(RegistrationModel):
    """A U-Net registration network: ``[moving, fixed] -> ddf`` (VoxelMorph-style, no integration).

    The moving image resized to the fixed shape and the fixed image are concatenated and passed
    through a :class:`UNetBackbone` whose head has ``out_channels`` outputs (default ``n``, a
    DDF in fixed-grid voxel units, applied as ``warp(moving_image, ddf)``), zero-initialised by
    default so the DDF starts exactly at zero. The backbone is ``model.backbone``.

    Args:
        ndim: 2 or 3 spatial axes.
        num_channel_initial: backbone width ``c``.
        depth: number of down-sampling steps.
        out_channels: output channels; ``None`` means ``ndim`` (a DDF, or a velocity field to
            integrate with ``labelreg.ops.integrate_svf``).
        out_activation: Keras activation name of the output, ``None`` for linear.
        zero_init_output: start the output convolution at zero.
        pooling: max-pooling (``True``) or strided-convolution (``False``) down-sampling.
        use_batch_norm: batch norm in the backbone's blocks.
        integration_steps: 0 for a plain DDF; otherwise the head predicts a stationary velocity
            field integrated by this many scaling-and-squaring steps
            (:func:`labelreg.ops.integrate_svf`), a diffeomorphic mode.
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        inputs: ``[moving_image [B, *S_mov, C_m], fixed_image [B, *S_fix, C_f]]`` (or a dict).
        training: batch-norm mode.

    Returns:
        ``[B, *S_fix, out_channels]`` float32 (under ``mixed_bfloat16`` the backbone computes in
        bfloat16 and its output is cast to float32 before any integration).

    Raises:
        ValueError: for bad arguments; at call for a wrong rank, mismatched batches or NaN/Inf
            in an eager input.
    """

    def __init__(
        self,
        ndim: int = 3,
        num_channel_initial: int = 16,
        depth: int = 4,
        out_channels: int | None = None,
        out_activation: str | None = None,
        zero_init_output: bool = True,
        pooling: bool = True,
        use_batch_norm: bool = False,
        integration_steps: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(ndim=ndim, **kwargs)
        self.integration_steps = check_nonnegative_int(integration_steps, "integration_steps")
        self.backbone = UNetBackbone(
            self.ndim,
            num_channel_initial=num_channel_initial,
            depth=depth,
            out_channels=self.ndim if out_channels is None else out_channels,
            out_activation=out_activation,
            zero_init_output=zero_init_output,
            pooling=pooling,
            use_batch_norm=use_batch_norm,
            name="backbone",
        )

    def build(self, input_shape: Any) -> None:
        self.backbone.build(self._input_shape(input_shape))

    def forward(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        """``{"ddf": [B, *S_fix, out_channels]}`` (and ``"velocity"`` in diffeomorphic mode)."""
        moving, fixed = self._pair(inputs)
        # float32 before any integration: scaling and squaring composes the field with itself
        # repeatedly, and bfloat16 roundings would compound over the steps.
        out = as_float32(self.backbone(self.network_input(moving, fixed), training=training))
        if not self.integration_steps:
            return {"ddf": out}
        return {"ddf": ops.integrate_svf(out, steps=self.integration_steps), "velocity": out}

    def get_config(self) -> dict[str, Any]:
        backbone = self.backbone.get_config()
        keys = (
            "num_channel_initial",
            "depth",
            "out_channels",
            "out_activation",
            "zero_init_output",
            "pooling",
            "use_batch_norm",
        )
        return {**super().get_config(), **{k: backbone[k] for k in keys},
                "integration_steps": self.integration_steps}
