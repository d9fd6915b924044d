"""LocalNet: label-reg's dense displacement network (Hu et al., MedIA 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from labelreg._tf import tf
from labelreg.networks.layers import (
    Encoder,
    RegistrationModel,
    UpResBlock,
    as_float32,
    check_positive_int,
    conv_layer,
    resize_like,
)
from labelreg.networks.remat import checkpointed, remat_enabled

__all__ = ["LocalNet"]

_NUM_LEVELS = 5  # levels 0 (full resolution) .. 4 (bottom, 1/16)


def _check_ddf_levels(ddf_levels: Any) -> tuple[int, ...]:
    try:
        levels = tuple(ddf_levels)
    except TypeError:
        levels = None
    ok = (
        levels is not None
        and len(levels) > 0
        and all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in levels)
        and all(0 <= k < _NUM_LEVELS for k in levels)
        and len(set(levels)) == len(levels)
    )
    if not ok:
        raise ValueError(
            f"ddf_levels must be a non-empty list of distinct integers in 0..{_NUM_LEVELS - 1} "
            f"(0 = full resolution, 4 = bottom); received ddf_levels={ddf_levels!r}."
        )
    return tuple(sorted(int(k) for k in levels))


@keras.saving.register_keras_serializable(package="labelreg")
class LocalNet(RegistrationModel):
    """label-reg's LocalNet: an encoder-decoder predicting a dense displacement field.

    Architecture (label-reg's ``LocalNet``, in 2-D or 3-D), with ``nc = [c, 2c, 4c, 8c, 16c]``:

    - input: the moving image resized (linear) to the fixed shape, concatenated with the fixed
      image (2 channels for single-channel images);
    - encoder: four ``DownResBlock`` s (first kernel 7^n, then 3^n; the skip is each block's first
      convolution output) and a bottom ``ConvBlock`` with ``16c`` channels;
    - decoder: ``UpResBlock`` s (transposed convolution onto the skip's grid plus additive
      up-sampling, residual with the skip) from level 3 down to ``min(ddf_levels)``;
    - output: at each level ``k`` in ``ddf_levels`` a 3^n convolution with bias and ``n``
      outputs, kernel and bias initialised to ZERO (so the DDF is exactly zero at
      initialisation), resized (linear) to the fixed shape; the levels are SUMMED, as label-reg
      does (DeepReg averages them). The coarse fields are not rescaled when resized: each head
      learns its displacement directly in fixed-grid voxel units.

    Convolutions have no bias and Glorot-uniform kernels; batch norm has an offset but no scale.
    At ``c = 32`` in 3-D the network has 18,906,351 trainable parameters (label-reg: about
    18.9 M).

    Deviations from label-reg:

    - batch norm runs in inference mode (moving averages) when ``training`` is false or
      ``None``; label-reg always used batch statistics, so a pair's DDF depended on the other
      pairs of its batch (issue #22). Pass ``training=True`` in a custom training step;
    - resizing uses half-pixel centres (TF2 ``tf.image.resize``) instead of TF1's legacy
      corner alignment;
    - 2-D networks, multi-channel images and moving/fixed images of different shapes at run
      time (only the fixed shape must be static when traced).

    Args:
        ndim: 2 or 3 spatial axes.
        num_channel_initial: ``c``, the channels of the first level.
        ddf_levels: the levels (0 = full resolution .. 4 = bottom) whose heads are summed.
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        inputs: ``[moving_image [B, *S_mov, C_m], fixed_image [B, *S_fix, C_f]]`` (or a dict
            with those keys).
        training: batch-norm mode (see above).

    Returns:
        ``ddf [B, *S_fix, n]`` float32, in voxel units; apply it with
        ``model.warp(moving_image, ddf)``. Built under the ``mixed_bfloat16`` policy, the
        encoder, decoder and heads compute in bfloat16 and the heads' outputs are cast to
        float32 before they are resized and summed.

    Raises:
        ValueError: at construction for a bad ``ndim``, ``num_channel_initial`` or
            ``ddf_levels``; at call when a rank is not ``ndim + 2``, the batch sizes differ or an
            eager input holds NaN/Inf.
    """

    def __init__(
        self,
        ndim: int = 3,
        num_channel_initial: int = 32,
        ddf_levels: Sequence[int] = (0, 1, 2, 3, 4),
        **kwargs: Any,
    ) -> None:
        super().__init__(ndim=ndim, **kwargs)
        self.num_channel_initial = check_positive_int(num_channel_initial, "num_channel_initial")
        self.ddf_levels = _check_ddf_levels(ddf_levels)
        c = self.num_channel_initial
        self.encoder = Encoder(self.ndim, c, first_kernel_size=7, name="encoder")
        # Up blocks from level 3 to the finest requested level, coarse to fine.
        self.up_levels = tuple(range(_NUM_LEVELS - 2, min(self.ddf_levels) - 1, -1))
        self.up_blocks = [UpResBlock(self.ndim, c * 2**k, name=f"up_{k}") for k in self.up_levels]
        self.checkpointing = remat_enabled()  # see labelreg.networks.remat
        self.ddf_heads = [
            conv_layer(
                self.ndim,
                self.ndim,
                3,
                use_bias=True,
                kernel_initializer="zeros",
                bias_initializer="zeros",
                name=f"ddf_{k}",
            )
            for k in self.ddf_levels
        ]

    def build(self, input_shape: Any) -> None:
        self.encoder.build(self._input_shape(input_shape))
        c, unknown = self.num_channel_initial, (None,) * (self.ndim + 1)
        for level, block in zip(self.up_levels, self.up_blocks, strict=True):
            block.build((*unknown, 2 * c * 2**level))
        for level, head in zip(self.ddf_levels, self.ddf_heads, strict=True):
            head.build((*unknown, c * 2**level))

    def forward(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        """The DDF as ``{"ddf": [B, *S_fix, n]}``."""
        moving, fixed = self._pair(inputs)
        bottom, skips = self.encoder(self.network_input(moving, fixed), training=training)
        features = {_NUM_LEVELS - 1: bottom}
        x = bottom
        for level, block in zip(self.up_levels, self.up_blocks, strict=True):
            x = checkpointed(block, self.checkpointing, training=training)(x, skips[level])
            features[level] = x
        # Each head's output is cast to float32 before it is resized and summed: under mixed
        # precision the heads compute in bfloat16 (8 significant bits), and summing up to five
        # levels of displacements in bfloat16 would add one rounding of ~0.4% per level.
        summands = [
            resize_like(as_float32(head(features[level])), fixed)
            for level, head in zip(self.ddf_levels, self.ddf_heads, strict=True)
        ]
        return {"ddf": tf.add_n(summands)}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_channel_initial": self.num_channel_initial,
            "ddf_levels": list(self.ddf_levels),
        }
