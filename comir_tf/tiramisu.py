"""FC-DenseNet ("Tiramisu") used by CoMIR to map one modality to its representation.

The layout follows Jégou et al. (2017) as configured by CoMIR (Pielawski, Wetzer et al., 2020):

- dense layer: BatchNorm -> ReLU -> 3x3 conv (``growth_rate`` channels, with bias) -> dropout;
  each layer sees the concatenation of the block input and every earlier layer of the block;
- transition down: BatchNorm -> ReLU -> 1x1 conv to ``int(channels * compression)`` ->
  spatial dropout -> 2x2 max-pool;
- transition up: nearest x2 up-sampling -> 3x3 conv -> ReLU, centre-cropped to the skip
  tensor and concatenated as ``[skip, up]``;
- the bottleneck and all up blocks but the last return only their new feature maps (so the
  up path does not grow quadratically); down blocks and the last up block return everything;
- a 3x3 stem convolution in front and a 1x1 convolution without bias to ``out_channels``
  behind, with no output activation (a CoMIR is an unbounded real-valued map).

Convolution kernels use the fan-in uniform initialisation that PyTorch's ``Conv2d`` uses by
default (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), and BatchNorm uses PyTorch's momentum and
epsilon, so training behaves like the reference implementation; biases start at zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from labelreg._tf import tf

__all__ = ["Tiramisu", "tiramisu_parameter_count", "tiramisu_channels"]

_PACKAGE = "comir_tf"


def _kernel_init() -> keras.initializers.Initializer:
    # VarianceScaling(scale=1/3, fan_in, uniform) has limit sqrt(3 * (1/3) / fan_in), i.e.
    # PyTorch's default kaiming_uniform(a=sqrt(5)) for convolutions.
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    # PyTorch's running-average momentum 0.1 is Keras' 0.9; its epsilon is 1e-5.
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _check_blocks(name: str, value: Sequence[int]) -> tuple[int, ...]:
    blocks = tuple(int(v) for v in value)
    if len(blocks) == 0 or any(v < 1 for v in blocks):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive layer counts. Received: {name}={value!r}"
        )
    return blocks


def tiramisu_channels(
    in_channels: int,
    init_filters: int = 32,
    down_blocks: Sequence[int] = (4,) * 6,
    up_blocks: Sequence[int] = (4,) * 6,
    bottleneck_layers: int = 4,
    growth_rate: int = 12,
    compression: float = 0.75,
) -> dict[str, Any]:
    """Channel bookkeeping of a Tiramisu, without building it.

    Returns:
        A dict with ``skips`` (channels of each skip tensor, top to bottom), ``bottleneck_in``,
        ``up_in`` (channels entering each up block) and ``out`` (channels of the last up block,
        which the 1x1 head maps to the latent channels).
    """
    ch = init_filters
    skips = []
    for layers in down_blocks:
        ch += growth_rate * layers
        skips.append(ch)
        ch = int(ch * compression)
    bottleneck_in = ch
    prev = growth_rate * bottleneck_layers
    up_in = []
    out = prev
    for i, layers in enumerate(up_blocks):
        ch = skips[-1 - i] + prev
        up_in.append(ch)
        prev = growth_rate * layers
        out = ch + prev
    return {"skips": skips, "bottleneck_in": bottleneck_in, "up_in": up_in, "out": out}


def tiramisu_parameter_count(
    in_channels: int,
    out_channels: int = 1,
    init_filters: int = 32,
    down_blocks: Sequence[int] = (4,) * 6,
    up_blocks: Sequence[int] = (4,) * 6,
    bottleneck_layers: int = 4,
    growth_rate: int = 12,
    compression: float = 0.75,
) -> int:
    """Trainable parameters of a Tiramisu, counted from the architecture by hand.

    BatchNorm contributes its scale and offset (2 per channel); the moving statistics are not
    trainable. This is what PyTorch reports for the reference model (1,053,596 for the
    biomedical configuration with 1 input and 1 latent channel).
    """

    def conv(cin: int, cout: int, k: int, bias: bool = True) -> int:
        return k * k * cin * cout + (cout if bias else 0)

    def block(cin: int, layers: int) -> int:
        return sum(2 * (cin + i * growth_rate) + conv(cin + i * growth_rate, growth_rate, 3)
                   for i in range(layers))

    total = conv(in_channels, init_filters, 3)
    ch = init_filters
    for layers in down_blocks:
        total += block(ch, layers)
        ch += growth_rate * layers
        total += 2 * ch + conv(ch, int(ch * compression), 1)
        ch = int(ch * compression)
    total += block(ch, bottleneck_layers)
    info = tiramisu_channels(in_channels, init_filters, down_blocks, up_blocks,
                             bottleneck_layers, growth_rate, compression)
    prev = growth_rate * bottleneck_layers
    for layers, cin in zip(up_blocks, info["up_in"], strict=True):
        total += conv(prev, prev, 3)  # transition up
        total += block(cin, layers)
        prev = growth_rate * layers
    return total + conv(info["out"], out_channels, 1, bias=False)


def _attach(owner: keras.layers.Layer, name: str, layer: keras.layers.Layer | None) -> str:
    # Sub-layers are stored as attributes, not in Python lists: tf.train.Checkpoint follows
    # attributes, and a layer kept only in a list would silently be left out of checkpoints.
    setattr(owner, name, layer)
    return name


class _DenseBlock(keras.layers.Layer):
    """``layers`` dense layers; returns everything or only the new feature maps."""

    def __init__(self, layers: int, growth_rate: int, dropout: float, new_only: bool,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.new_only = new_only
        self.units = []
        for i in range(layers):
            norm = _attach(self, f"bn{i}", _batch_norm(f"bn{i}"))
            conv = _attach(self, f"conv{i}", keras.layers.Conv2D(
                growth_rate, 3, padding="same", kernel_initializer=_kernel_init(), name=f"conv{i}"))
            drop = _attach(self, f"drop{i}", keras.layers.Dropout(dropout, name=f"drop{i}")
                           if dropout > 0 else None)
            self.units.append((norm, conv, drop))

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        features = [x]
        for norm, conv, drop in self.units:
            inputs = features[0] if len(features) == 1 else tf.concat(features, axis=-1)
            h = getattr(self, conv)(tf.nn.relu(getattr(self, norm)(inputs, training=training)))
            if getattr(self, drop) is not None:
                h = getattr(self, drop)(h, training=training)
            features.append(h)
        kept = features[1:] if self.new_only else features
        return kept[0] if len(kept) == 1 else tf.concat(kept, axis=-1)


class _TransitionDown(keras.layers.Layer):
    def __init__(self, filters: int, dropout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm = _batch_norm("bn")
        self.conv = keras.layers.Conv2D(filters, 1, kernel_initializer=_kernel_init(), name="conv")
        self.drop = keras.layers.SpatialDropout2D(dropout, name="drop") if dropout > 0 else None

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        h = self.conv(tf.nn.relu(self.norm(x, training=training)))
        if self.drop is not None:
            h = self.drop(h, training=training)
        return tf.nn.max_pool2d(h, 2, 2, "VALID")


class _TransitionUp(keras.layers.Layer):
    def __init__(self, filters: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(filters, 3, padding="same",
                                        kernel_initializer=_kernel_init(), name="conv")

    def call(self, x: tf.Tensor, skip: tf.Tensor) -> tf.Tensor:
        up = tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)  # nearest x2
        up = tf.nn.relu(self.conv(up))
        # Centre-crop to the skip (a no-op when the input side is a multiple of the pooling).
        dh = (tf.shape(up)[1] - tf.shape(skip)[1]) // 2
        dw = (tf.shape(up)[2] - tf.shape(skip)[2]) // 2
        up = up[:, dh:dh + tf.shape(skip)[1], dw:dw + tf.shape(skip)[2], :]
        return tf.concat([skip, up], axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Tiramisu(keras.Model):
    """FC-DenseNet mapping a 2-D image to a CoMIR.

    The default is the configuration of the CoMIR paper's biomedical experiments (SHG / BF):
    32 stem filters, six down and six up blocks of 4 layers, a 4-layer bottleneck, growth rate
    12, compression 0.75, dropout 0.2. The Zurich configuration is ``init_filters=16,
    down_blocks=(2, 2, 2), up_blocks=(2, 2, 2), bottleneck_layers=3, compression=1.0,
    dropout=0.0, out_channels=3``.

    Args:
        in_channels: channels of the input modality (e.g. 1 for SHG, 3 for RGB brightfield).
        out_channels: channels of the CoMIR ("latent channels").
        init_filters: filters of the 3x3 stem convolution.
        down_blocks: dense layers per down block; its length is the number of poolings.
        up_blocks: dense layers per up block; same length as ``down_blocks``.
        bottleneck_layers: dense layers of the bottleneck block.
        growth_rate: channels added by each dense layer.
        compression: channel factor of each transition down, in (0, 1].
        dropout: dropout rate after each dense layer, and of the spatial dropout in each
            transition down (both absent when 0).

    Call arguments:
        x: ``[B, H, W, in_channels]`` float32, ``H`` and ``W`` multiples of
            ``2 ** len(down_blocks)`` (64 for the default).
        training: whether BatchNorm uses batch statistics and dropout is active.

    Returns:
        ``[B, H, W, out_channels]`` float32, no activation.

    Raises:
        ValueError: on invalid hyper-parameters, or an input whose channels or sides do not fit.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        init_filters: int = 32,
        down_blocks: Sequence[int] = (4,) * 6,
        up_blocks: Sequence[int] = (4,) * 6,
        bottleneck_layers: int = 4,
        growth_rate: int = 12,
        compression: float = 0.75,
        dropout: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("init_filters", init_filters), ("bottleneck_layers", bottleneck_layers),
                            ("growth_rate", growth_rate)):
            if int(value) != value or value < 1:
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        down = _check_blocks("down_blocks", down_blocks)
        up = _check_blocks("up_blocks", up_blocks)
        if len(down) != len(up):
            raise ValueError(
                "`down_blocks` and `up_blocks` must have the same length (one up block per skip). "
                f"Received: down_blocks={tuple(down_blocks)!r}, up_blocks={tuple(up_blocks)!r}"
            )
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"`compression` must be in (0, 1]. Received: compression={compression!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.init_filters = int(init_filters)
        self.down_blocks = down
        self.up_blocks = up
        self.bottleneck_layers = int(bottleneck_layers)
        self.growth_rate = int(growth_rate)
        self.compression = float(compression)
        self.dropout = float(dropout)
        self.multiple = 2 ** len(down)

        self.stem = keras.layers.Conv2D(self.init_filters, 3, padding="same",
                                        kernel_initializer=_kernel_init(), name="stem")
        self._down_path = []  # (dense block, transition down) attribute names, top to bottom
        ch = self.init_filters
        for i, layers in enumerate(down):
            block = _attach(self, f"down{i}", _DenseBlock(layers, growth_rate, dropout,
                                                          new_only=False, name=f"down{i}"))
            ch += growth_rate * layers
            ch = int(ch * compression)
            trans = _attach(self, f"trans_down{i}", _TransitionDown(ch, dropout,
                                                                     name=f"trans_down{i}"))
            self._down_path.append((block, trans))
        self.bottleneck = _DenseBlock(self.bottleneck_layers, growth_rate, dropout, new_only=True,
                                      name="bottleneck")
        self._up_path = []  # (transition up, dense block) attribute names, bottom to top
        prev = growth_rate * self.bottleneck_layers
        for i, layers in enumerate(up):
            trans = _attach(self, f"trans_up{i}", _TransitionUp(prev, name=f"trans_up{i}"))
            block = _attach(self, f"up{i}", _DenseBlock(layers, growth_rate, dropout,
                                                        new_only=i < len(up) - 1, name=f"up{i}"))
            self._up_path.append((trans, block))
            prev = growth_rate * layers
        self.head = keras.layers.Conv2D(self.out_channels, 1, use_bias=False,
                                        kernel_initializer=_kernel_init(), name="head")

    def _check_input(self, x: tf.Tensor) -> None:
        shape = x.shape
        if shape.rank != 4:
            raise ValueError(
                f"Tiramisu expects an input of shape [B, H, W, {self.in_channels}]. "
                f"Received: shape={tuple(shape)}"
            )
        if shape[-1] is not None and shape[-1] != self.in_channels:
            raise ValueError(
                f"Tiramisu was built for {self.in_channels} input channels. "
                f"Received: input with shape={tuple(shape)}"
            )
        for side in shape[1:3]:
            if side is not None and side % self.multiple != 0:
                raise ValueError(
                    f"Tiramisu input sides must be multiples of 2**len(down_blocks) = "
                    f"{self.multiple} (one halving per down block). Received: input with "
                    f"shape={tuple(shape)}; reflect-pad it (comir_tf.generate does) first."
                )

    def build(self, input_shape: Any) -> None:
        # Create every weight by tracing one call on a symbolic input of a valid size, so that
        # weights exist (and can be restored) before the first real batch.
        if not self.built:
            side = self.multiple
            self.call(tf.zeros((1, side, side, self.in_channels)), training=False)
        super().build(input_shape)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        x = tf.convert_to_tensor(x, tf.float32)
        self._check_input(x)
        h = self.stem(x)
        skips = []
        for block, trans in self._down_path:
            h = getattr(self, block)(h, training=training)
            skips.append(h)
            h = getattr(self, trans)(h, training=training)
        h = self.bottleneck(h, training=training)
        for (trans, block), skip in zip(self._up_path, reversed(skips), strict=True):
            h = getattr(self, block)(getattr(self, trans)(h, skip), training=training)
        return self.head(h)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*tuple(input_shape)[:-1], self.out_channels)

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        return {
            **base,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "init_filters": self.init_filters,
            "down_blocks": list(self.down_blocks),
            "up_blocks": list(self.up_blocks),
            "bottleneck_layers": self.bottleneck_layers,
            "growth_rate": self.growth_rate,
            "compression": self.compression,
            "dropout": self.dropout,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Tiramisu:
        return cls(**config)
