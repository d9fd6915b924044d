"""Building blocks shared by the registration networks.

What is here:

- argument checks (``check_ndim``, ``check_positive_int``) and the handling of a
  ``[moving_image, fixed_image]`` pair (``unpack_pair``, ``pair_input``);
- label-reg's blocks (paper: Hu et al., MedIA 2018; code: ``labelreg/layers.py``) as Keras 3
  layers: ``ConvBlock``, ``DownResBlock``, ``TransposedConv``, ``UpResBlock``, the shared
  ``Encoder`` and the ``AffineRegressor`` head of GlobalNet;
- ``RegistrationModel``, the base class of every ``[moving, fixed] -> ddf`` network.

Everything works in 2-D and 3-D (``ndim``), channels-last. Convolutions use "SAME" padding and
max-pooling uses "SAME" padding, so odd sizes work: a spatial size ``s`` becomes ``ceil(s / 2)``
at each level and the decoder returns exactly to the encoder's shapes.

Batch normalisation follows label-reg's choice of parameters (a learned offset ``beta``, no
learned scale ``gamma``, epsilon 1e-3) but runs in the standard Keras modes: batch statistics
with ``training=True`` and the moving averages with ``training=False`` (or ``None``). label-reg
never updated its moving averages and always used batch statistics, so a pair's result depended
on the other pairs in its batch (label-reg issue #22). The moving-average momentum is Keras's 0.99
rather than TF1's 0.999 (which never took effect in label-reg), so the averages settle within a
few hundred steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import shape_text
from labelreg.networks.affine_options import AFFINE_TRANSFORMS
from labelreg.networks.remat import checkpointed, remat_enabled

__all__ = [
    "check_ndim",
    "check_nonnegative_int",
    "check_positive_int",
    "check_spatial_shape",
    "static_spatial_shape",
    "resize_like",
    "additive_upsampling",
    "unpack_pair",
    "check_pair_shapes",
    "pair_shapes",
    "split_pair",
    "with_channels",
    "known_channels",
    "pair_input",
    "conv_layer",
    "batch_norm",
    "ConvBlock",
    "DownResBlock",
    "TransposedConv",
    "UpResBlock",
    "Encoder",
    "AffineRegressor",
    "RegistrationModel",
]

_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def check_ndim(ndim: Any) -> int:
    """Return ``ndim`` as an int after checking it is 2 or 3.

    Raises:
        ValueError: for anything other than 2 or 3.
    """
    if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3; received ndim={ndim!r}.")
    return int(ndim)


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int after checking it is a positive integer.

    Raises:
        ValueError: naming ``name`` when ``value`` is not an integer >= 1.
    """
    return ops.check_integer(value, name, 1, description="a positive integer")


def check_nonnegative_int(value: Any, name: str) -> int:
    """Return ``value`` as an int after checking it is an integer >= 0.

    Raises:
        ValueError: naming ``name`` when ``value`` is not an integer >= 0.
    """
    return ops.check_integer(value, name, 0)


def check_spatial_shape(shape: Any, ndim: int, name: str) -> tuple[int, ...]:
    """Return ``shape`` as a tuple of ``ndim`` positive ints.

    Raises:
        ValueError: naming ``name`` when ``shape`` is not ``ndim`` positive integers.
    """
    try:
        values = tuple(shape)
    except TypeError:
        values = None
    if (
        values is None
        or len(values) != ndim
        or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in values)
    ):
        raise ValueError(
            f"{name} must be {ndim} positive integers (the fixed image's spatial shape); "
            f"received {name}={shape!r}."
        )
    return tuple(int(s) for s in values)



def with_channels(shape: Sequence[int | None], channels: int) -> tuple[int | None, ...]:
    """``shape`` with its last entry replaced by ``channels``."""
    return (*tuple(shape)[:-1], channels)


def known_channels(shape: Sequence[int | None], name: str) -> int:
    """The last entry of ``shape``, which must be known to create weights."""
    channels = tuple(shape)[-1]
    if channels is None:
        raise ValueError(
            f"{name} needs a known channel count to create its weights; received shape "
            f"{shape_text(shape)}."
        )
    return int(channels)


def pair_shapes(input_shape: Any, network: str = "network") -> tuple[tuple, tuple]:
    """The (moving, fixed) shapes Keras passes to ``build`` for a pair input (list or dict)."""
    moving, fixed = split_pair(input_shape, network)
    return tuple(moving), tuple(fixed)


def split_pair(inputs: Any, network: str = "network") -> tuple[Any, Any]:
    """``(moving, fixed)`` from ``[moving, fixed]`` or ``{"moving_image": .., "fixed_image": ..}``.

    Raises:
        ValueError: for anything else; the message names the expected structure.
    """
    if isinstance(inputs, Mapping):
        missing = [k for k in ("moving_image", "fixed_image") if k not in inputs]
        if missing:
            raise ValueError(
                f"{network} expects the keys 'moving_image' and 'fixed_image'; the input has "
                f"keys {sorted(inputs)} (missing {missing})."
            )
        return inputs["moving_image"], inputs["fixed_image"]
    if isinstance(inputs, (list, tuple)) and len(inputs) == 2:
        return inputs[0], inputs[1]
    length = f" of length {len(inputs)}" if isinstance(inputs, (list, tuple)) else ""
    raise ValueError(
        f"{network} expects a pair [moving_image, fixed_image]; received "
        f"{type(inputs).__name__}{length}."
    )


# --------------------------------------------------------------------------------------------
# Shapes and resizing
# --------------------------------------------------------------------------------------------


def static_spatial_shape(x: tf.Tensor, name: str = "tensor") -> tuple[int, ...]:
    """The static spatial shape ``S`` of ``x [B, *S, C]``.

    ``labelreg.ops.resize`` needs a static target shape, and every target shape in the networks
    comes from the fixed image (directly or through its encoder), so the fixed image's spatial
    shape must be known when the network is traced (the batch may stay dynamic).

    Raises:
        ValueError: naming ``name`` when a spatial size is unknown.
    """
    spatial = tuple(x.shape[1:-1])
    if any(s is None for s in spatial):
        raise ValueError(
            f"{name} must have a static spatial shape (only the batch may be unknown); "
            f"received shape {shape_text(x.shape)}."
        )
    return tuple(int(s) for s in spatial)


def resize_like(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Resize ``x [B, *S_x, C]`` to the spatial shape of ``like [B, *S, C']`` (linear).

    A no-op when the static shapes already agree. The result has ``x``'s dtype: the
    interpolation itself runs in float32 (``labelreg.ops.resize`` computes in float32), and a
    bfloat16 ``x`` (a feature map under the ``mixed_bfloat16`` policy) is cast back, so that it
    can be added to or concatenated with the other bfloat16 features of its block.
    """
    target = static_spatial_shape(like, "the resize target")
    if tuple(x.shape[1:-1]) == target:
        return x
    out = ops.resize(x, target)
    return out if out.dtype == x.dtype else tf.cast(out, x.dtype)


def additive_upsampling(x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """label-reg's parameter-free up-sampling: resize, split the channels in two halves, sum.

    Args:
        x: ``[B, *S_in, 2C]``.
        like: a tensor whose spatial shape ``S`` is the target.

    Returns:
        ``[B, *S, C]``, in ``x``'s dtype (see :func:`resize_like`).
    """
    first, second = tf.split(resize_like(x, like), 2, axis=-1)
    return first + second


# --------------------------------------------------------------------------------------------
# The [moving, fixed] pair
# --------------------------------------------------------------------------------------------


def unpack_pair(inputs: Any, ndim: int, network: str = "network") -> tuple[tf.Tensor, tf.Tensor]:
    """Check and convert the ``[moving_image, fixed_image]`` input of a registration network.

    Args:
        inputs: a list/tuple ``[moving_image, fixed_image]`` or a mapping with the keys
            ``"moving_image"`` and ``"fixed_image"``; moving ``[B, *S_mov, C_m]``, fixed
            ``[B, *S_fix, C_f]``, NumPy arrays or tensors.
        ndim: the network's number of spatial axes.
        network: the network's name, for the messages.

    Returns:
        ``(moving, fixed)`` as float32 tensors.

    Raises:
        ValueError: when the input is not a pair, a rank is not ``ndim + 2`` or the batch sizes
            differ (the message names ``moving_image``/``fixed_image`` and shows both shapes),
            or when an eager input holds NaN or Inf.
    """
    moving, fixed = split_pair(inputs, network)
    moving = as_float32(moving)
    fixed = as_float32(fixed)
    check_pair_shapes(moving.shape, fixed.shape, ndim, network)
    ops.check_finite(moving, "moving_image")
    ops.check_finite(fixed, "fixed_image")
    return moving, fixed


def check_pair_shapes(moving_shape: Any, fixed_shape: Any, ndim: int, network: str) -> None:
    """Check the ranks (``ndim + 2``) and the batch sizes of a pair's shapes.

    Raises:
        ValueError: naming ``moving_image``/``fixed_image`` and showing both shapes.
    """
    moving_shape = tuple(moving_shape)
    fixed_shape = tuple(fixed_shape)
    shapes = (
        f"received moving_image shape {shape_text(moving_shape)} and fixed_image shape "
        f"{shape_text(fixed_shape)}"
    )
    for name, shape in (("moving_image", moving_shape), ("fixed_image", fixed_shape)):
        if len(shape) != ndim + 2:
            raise ValueError(
                f"{network} is {ndim}-D: {name} must have rank {ndim + 2} "
                f"([batch, {ndim} spatial axes, channels]) but has rank {len(shape)}; {shapes}."
            )
    b_mov, b_fix = moving_shape[0], fixed_shape[0]
    if b_mov is not None and b_fix is not None and b_mov != b_fix:
        raise ValueError(
            f"{network}: moving_image and fixed_image must have the same batch size; {shapes}."
        )


def as_float32(x: Any) -> tf.Tensor:
    """``x`` as a float32 tensor (cast only when needed)."""
    t = tf.convert_to_tensor(x)
    return t if t.dtype == tf.float32 else tf.cast(t, tf.float32)


#: How a moving image of another shape is brought onto the fixed grid for the network input.
MOVING_INPUTS = ("resize", "identity")


def identity_placed(moving: tf.Tensor, fixed: tf.Tensor) -> tf.Tensor:
    """The moving image where the identity transform puts it on the fixed grid.

    ``out[x] = moving[x]`` for every fixed-grid voxel ``x`` (zero beyond the moving grid): what
    ``labelreg.ops.warp(moving, zero DDF)`` gives, computed as a crop or zero pad at the far
    end of each axis.

    Args:
        moving: ``[B, *S_mov, C]``.
        fixed: ``[B, *S_fix, C']`` with a static ``S_fix``.

    Returns:
        ``[B, *S_fix, C]``.
    """
    target = static_spatial_shape(fixed, "the fixed image")
    source = static_spatial_shape(moving, "the moving image")
    if source == target:
        return moving
    crop = [slice(None)] + [slice(0, min(s, t)) for s, t in zip(source, target, strict=True)]
    out = moving[tuple(crop + [slice(None)])]
    pads = [[0, 0]] + [[0, max(t - s, 0)] for s, t in zip(source, target, strict=True)] + [[0, 0]]
    return tf.pad(out, pads) if any(p[1] for p in pads) else out


def check_moving_input(value: Any) -> str:
    """``value`` if it is one of :data:`MOVING_INPUTS`, else a ``ValueError``."""
    if value not in MOVING_INPUTS:
        raise ValueError(f"moving_input must be one of {MOVING_INPUTS}; received "
                         f"moving_input={value!r}.")
    return str(value)


def pair_input(moving: tf.Tensor, fixed: tf.Tensor, moving_input: str = "resize") -> tf.Tensor:
    """The network input: moving on the fixed grid, concatenated with fixed.

    Args:
        moving: ``[B, *S_mov, C_m]``.
        fixed: ``[B, *S_fix, C_f]`` with a static ``S_fix``.
        moving_input: ``"resize"`` (label-reg: the whole moving image stretched to ``S_fix``)
            or ``"identity"`` (:func:`identity_placed`: the moving image as the zero DDF warps
            it, so that an anatomical offset between the two channels is the displacement
            the network has to output, whatever the two shapes are).

    Returns:
        ``[B, *S_fix, C_m + C_f]``.
    """
    if check_moving_input(moving_input) == "identity":
        return tf.concat([identity_placed(moving, fixed), fixed], axis=-1)
    return tf.concat([resize_like(moving, fixed), fixed], axis=-1)


# --------------------------------------------------------------------------------------------
# Layer factories
# --------------------------------------------------------------------------------------------


def _grid_smaller_than_kernel(x: tf.Tensor, kernel_size: Sequence[int]) -> bool:
    """Whether a static spatial size of ``x [B, *S, C]`` is smaller than the kernel."""
    return any(s is not None and s < k for s, k in zip(x.shape[1:-1], kernel_size, strict=True))


class _BFloat16SafeConv:
    """``call`` of labelreg's convolutions: Keras's own, except under bfloat16 compute.

    Two TensorFlow 2.21 CPU kernels give wrong GRADIENTS for bfloat16 (the forward pass is
    right), and a mixed-precision training step meets both:

    - ``BiasAddGrad`` (the gradient of ``tf.nn.bias_add``, which Keras uses for a
      convolution's bias) sums in bfloat16: once the running sum reaches ~256 times the
      per-voxel term, further terms round away, e.g. 0.25 instead of 1.44 for a 9x11x13x2
      grid. The bias is added with ``tf.add`` instead, whose gradient is a ``Sum`` that
      accumulates in float32.
    - the oneDNN ``Conv3DBackpropFilterV2`` returns garbage (NaN, 1e28) and corrupts the heap
      when a spatial size of the input is smaller than the kernel (e.g. a 2-voxel axis under a
      3^3 kernel, a 4-voxel axis under 7^3; every grid tried whose sizes are all >= the kernel
      was right). Such a layer runs in float32: its grid is a few voxels across, so this costs
      nothing measurable.

    Under float32 compute this is Keras's ``call`` unchanged.
    """

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        if inputs.dtype != tf.bfloat16:
            return super().call(inputs)
        if self.rank == 3 and _grid_smaller_than_kernel(inputs, self.kernel_size):
            outputs = self.convolution_op(tf.cast(inputs, tf.float32),
                                          tf.cast(self.kernel, tf.float32))
            outputs = tf.cast(outputs, inputs.dtype)
        else:
            outputs = self.convolution_op(inputs, self.kernel)
        if self.use_bias:
            outputs = tf.add(outputs, tf.cast(self.bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


@keras.saving.register_keras_serializable(package="labelreg")
class Conv2D(_BFloat16SafeConv, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with correct bfloat16 gradients on CPU (see ``conv_layer``)."""


@keras.saving.register_keras_serializable(package="labelreg")
class Conv3D(_BFloat16SafeConv, keras.layers.Conv3D):
    """``keras.layers.Conv3D`` with correct bfloat16 gradients on CPU (see ``conv_layer``)."""


def conv_layer(
    ndim: int,
    filters: int,
    kernel_size: int = 3,
    *,
    strides: int = 1,
    use_bias: bool = False,
    kernel_initializer: Any = "glorot_uniform",
    bias_initializer: Any = "zeros",
    activation: Any = None,
    name: str | None = None,
) -> keras.layers.Layer:
    """A "SAME"-padded ``Conv2D``/``Conv3D`` (no bias by default, Glorot-uniform as label-reg).

    The layer is a ``keras.layers.Conv2D``/``Conv3D`` with the same variables; under bfloat16
    compute it works around two CPU kernels whose bfloat16 gradients are wrong (see
    ``_BFloat16SafeConv``), so mixed-precision training gets the float32 gradients to
    bfloat16 rounding.
    """
    cls = Conv2D if ndim == 2 else Conv3D
    return cls(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        activation=activation,
        name=name,
    )


def batch_norm(name: str | None = None) -> keras.layers.BatchNormalization:
    """label-reg's batch norm: offset ``beta`` only (``scale=False``), epsilon 1e-3.

    Built under a ``tf.distribute`` strategy with several replicas, its batch statistics are
    taken over the global batch (synchronised), so a step on R replicas normalises as one
    device would; on one device the usual two-pass moments are kept."""
    synchronized = tf.distribute.has_strategy() and \
        tf.distribute.get_strategy().num_replicas_in_sync > 1
    return keras.layers.BatchNormalization(
        center=True, scale=False, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name,
        synchronized=synchronized,
    )


def _max_pool(ndim: int) -> keras.layers.Layer:
    cls = keras.layers.MaxPooling2D if ndim == 2 else keras.layers.MaxPooling3D
    return cls(pool_size=2, strides=2, padding="same", name="pool")


# --------------------------------------------------------------------------------------------
# label-reg's blocks
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="labelreg")
class ConvBlock(keras.layers.Layer):
    """Convolution (no bias) -> batch norm (beta only) -> ReLU.

    Args:
        ndim: 2 or 3.
        filters: output channels.
        kernel_size: cubic kernel side (3, or 7 for the first block of the encoder).

    Call arguments:
        x: ``[B, *S, C_in]``.
        training: batch statistics when true, moving averages otherwise.

    Returns:
        ``[B, *S, filters]``.
    """

    def __init__(self, ndim: int, filters: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.conv = conv_layer(self.ndim, self.filters, self.kernel_size, name="conv")
        self.norm = batch_norm("norm")

    def build(self, input_shape: Sequence[int | None]) -> None:
        known_channels(input_shape, self.name)
        self.conv.build(tuple(input_shape))
        self.norm.build(with_channels(input_shape, self.filters))

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        return tf.nn.relu(self.norm(self.conv(x), training=training))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
        }


@keras.saving.register_keras_serializable(package="labelreg")
class DownResBlock(keras.layers.Layer):
    """label-reg's down-sampling residual block.

    ``h0 = ConvBlock_k(x)``, ``r1 = ConvBlock_3(h0)``, ``r2 = relu(BN(conv_3(r1)) + h0)``,
    ``out = maxpool_2(r2)`` ("SAME", so a size ``s`` becomes ``ceil(s / 2)``). The skip tensor
    handed to the decoder is ``h0``, the first convolution's output, as in label-reg (DeepReg
    passes the residual output instead).

    Args:
        ndim: 2 or 3.
        filters: output channels.
        kernel_size: side of the first convolution's kernel (label-reg: 7 in the first block).

    Call arguments:
        x: ``[B, *S, C_in]``.
        training: batch-norm mode.

    Returns:
        ``(out [B, *ceil(S/2), filters], skip [B, *S, filters])``.
    """

    def __init__(self, ndim: int, filters: int, kernel_size: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.conv0 = ConvBlock(self.ndim, self.filters, self.kernel_size, name="conv0")
        self.conv1 = ConvBlock(self.ndim, self.filters, 3, name="conv1")
        self.conv2 = conv_layer(self.ndim, self.filters, 3, name="conv2")
        self.norm2 = batch_norm("norm2")
        self.pool = _max_pool(self.ndim)

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.conv0.build(tuple(input_shape))
        inner = with_channels(input_shape, self.filters)
        self.conv1.build(inner)
        self.conv2.build(inner)
        self.norm2.build(inner)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        h0 = self.conv0(x, training=training)
        r1 = self.conv1(h0, training=training)
        r2 = tf.nn.relu(self.norm2(self.conv2(r1), training=training) + h0)
        return self.pool(r2), h0

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
        }


@keras.saving.register_keras_serializable(package="labelreg")
class TransposedConv(keras.layers.Layer):
    """Stride-2 transposed convolution whose output takes the spatial shape of a reference.

    This is label-reg's ``conv3d_transpose(..., output_shape=skip_shape, padding="SAME")``: the
    exact adjoint of a "SAME" stride-2 convolution from the reference's grid, so an input of
    size ``ceil(s / 2)`` maps onto size ``s`` for odd and even ``s`` alike (for odd ``s`` this is
    the ``2 * ceil(s/2)`` output of Keras's ``ConvTranspose`` with its first voxel cropped). No
    bias (batch norm follows). The kernel has shape ``[*k, filters, C_in]``, Glorot-uniform.

    Args:
        ndim: 2 or 3.
        filters: output channels.
        kernel_size: cubic kernel side.
        strides: up-sampling factor.

    Call arguments:
        x: ``[B, *S_in, C_in]``.
        like: ``[B, *S, any]``, whose spatial shape ``S`` (``ceil(S / strides) == S_in``) the
            output takes; may be dynamic.

    Returns:
        ``[B, *S, filters]``.
    """

    def __init__(
        self, ndim: int, filters: int, kernel_size: int = 3, strides: int = 2, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.strides = check_positive_int(strides, "strides")

    def build(self, input_shape: Sequence[int | None]) -> None:
        channels = known_channels(input_shape, self.name)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.kernel_size,) * self.ndim + (self.filters, int(channels)),
            initializer="glorot_uniform",
        )

    def call(self, x: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
        out_shape = tf.concat(
            [tf.shape(x)[:1], tf.shape(like)[1:-1], tf.constant([self.filters])], axis=0
        )
        y = tf.nn.conv_transpose(
            x, tf.cast(self.kernel, x.dtype), out_shape, strides=self.strides, padding="SAME"
        )
        # The output shape is a tensor, so restore the static shape that is known.
        return tf.ensure_shape(y, [x.shape[0], *like.shape[1:-1], self.filters])

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0],) + (None,) * self.ndim + (self.filters,)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
        }


@keras.saving.register_keras_serializable(package="labelreg")
class UpResBlock(keras.layers.Layer):
    """label-reg's up-sampling residual block (with additive up-sampling).

    ``h0 = relu(BN(deconv(x))) + additive_upsampling(x)`` (both onto the skip's grid),
    ``r1 = h0 + skip``, ``r2 = ConvBlock_3(h0)`` (from ``h0``, not ``r1``, as label-reg),
    ``out = relu(BN(conv_3(r2)) + r1)``.

    Args:
        ndim: 2 or 3.
        filters: output channels; the input must have ``2 * filters`` channels (the additive
            up-sampling halves the channels) and the skip ``filters``.

    Call arguments:
        x: ``[B, *S_in, 2 * filters]``.
        skip: ``[B, *S, filters]`` with ``ceil(S / 2) == S_in``.
        training: batch-norm mode.

    Returns:
        ``[B, *S, filters]``.
    """

    def __init__(self, ndim: int, filters: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.filters = check_positive_int(filters, "filters")
        self.deconv = TransposedConv(self.ndim, self.filters, name="deconv")
        self.norm0 = batch_norm("norm0")
        self.conv1 = ConvBlock(self.ndim, self.filters, 3, name="conv1")
        self.conv2 = conv_layer(self.ndim, self.filters, 3, name="conv2")
        self.norm2 = batch_norm("norm2")

    def build(self, input_shape: Sequence[int | None]) -> None:
        if known_channels(input_shape, self.name) != 2 * self.filters:
            raise ValueError(
                f"{self.name} has {self.filters} filters, so its input needs "
                f"{2 * self.filters} channels; received shape {shape_text(input_shape)}."
            )
        self.deconv.build(tuple(input_shape))
        # The output grid is the skip's, unknown here; only the channels matter for weights.
        inner = (input_shape[0],) + (None,) * self.ndim + (self.filters,)
        self.norm0.build(inner)
        self.conv1.build(inner)
        self.conv2.build(inner)
        self.norm2.build(inner)

    def call(self, x: tf.Tensor, skip: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        deconv = tf.nn.relu(self.norm0(self.deconv(x, skip), training=training))
        h0 = deconv + additive_upsampling(x, skip)
        r1 = h0 + skip
        r2 = self.conv1(h0, training=training)
        return tf.nn.relu(self.norm2(self.conv2(r2), training=training) + r1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ndim": self.ndim, "filters": self.filters}


@keras.saving.register_keras_serializable(package="labelreg")
class Encoder(keras.layers.Layer):
    """The encoder of LocalNet and GlobalNet.

    Four ``DownResBlock`` s with ``c, 2c, 4c, 8c`` channels (the first with a 7^n first kernel)
    and a bottom ``ConvBlock`` with ``16c`` channels at ``1/16`` of the input size (rounded up
    per level).

    Args:
        ndim: 2 or 3.
        num_channel_initial: ``c``.
        first_kernel_size: first convolution's kernel side (label-reg: 7).

    Call arguments:
        x: ``[B, *S, C_in]``.
        training: batch-norm mode.

    Returns:
        ``(bottom [B, *S_4, 16c], skips)`` with ``skips[k] [B, *S_k, c * 2**k]`` for
        ``k = 0..3``, ``S_0 = S`` and ``S_{k+1} = ceil(S_k / 2)``.
    """

    num_levels = 4

    def __init__(
        self, ndim: int, num_channel_initial: int, first_kernel_size: int = 7, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.num_channel_initial = check_positive_int(num_channel_initial, "num_channel_initial")
        self.first_kernel_size = check_positive_int(first_kernel_size, "first_kernel_size")
        c = self.num_channel_initial
        self.down_blocks = [
            DownResBlock(
                self.ndim, c * 2**k, self.first_kernel_size if k == 0 else 3, name=f"down_{k}"
            )
            for k in range(self.num_levels)
        ]
        self.bottom = ConvBlock(
            self.ndim, c * 2**self.num_levels, 3, name=f"deep_{self.num_levels}"
        )
        # Built inside remat_scope ([Train] gradient_checkpointing): each block's activations
        # are recomputed in the backward pass instead of kept.
        self.checkpointing = remat_enabled()

    def build(self, input_shape: Sequence[int | None]) -> None:
        shape = tuple(input_shape)
        for k, block in enumerate(self.down_blocks):
            block.build(shape)
            spatial = [None if s is None else math.ceil(s / 2) for s in shape[1:-1]]
            shape = (shape[0], *spatial, self.num_channel_initial * 2**k)
        self.bottom.build(shape)

    @staticmethod
    def bottom_shape(spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The bottom grid of an input grid: ``ceil(s / 16)`` per axis (four "SAME" pools)."""
        out = tuple(spatial_shape)
        for _ in range(Encoder.num_levels):
            out = tuple(math.ceil(s / 2) for s in out)
        return out

    def call(
        self, x: tf.Tensor, training: bool | None = None
    ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        skips = []
        for block in self.down_blocks:
            x, skip = checkpointed(block, self.checkpointing, training=training)(x)
            skips.append(skip)
        return checkpointed(self.bottom, self.checkpointing, training=training)(x), skips

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "num_channel_initial": self.num_channel_initial,
            "first_kernel_size": self.first_kernel_size,
        }


def _centred_frame(spatial_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``c = (S - 1) / 2`` and half extent ``h = S / 2`` (voxels) of a grid."""
    shape = np.asarray(spatial_shape, np.float64)
    return (shape - 1.0) / 2.0, shape / 2.0


@keras.saving.register_keras_serializable(package="labelreg")
class AffineRegressor(keras.layers.Layer):
    """GlobalNet's encoder and affine head: network input -> ``theta [B, n, n+1]``.

    The encoder's bottom features ``f`` (``F`` of them, flattened) go through a dense layer with
    a ZERO kernel and a zero bias, as label-reg's starts at the exact identity. Its ``n(n+1)``
    outputs ``r`` are read as an affine in *centred, normalised* coordinates
    ``u = (x - c) / h`` of the input grid ``S`` (``c = (S-1)/2``, ``h = S/2``)::

        [M | tau] = r / sqrt(F)          (row-major n x (n+1))
        u' = (I + M) u + tau
        theta = [A | t],  A = I + H M H^-1,  t = H tau - (A - I) c      (H = diag(h))

    so ``theta`` still maps voxel indices of the fixed grid (origin at voxel 0) to voxel
    indices of the moving image, as label-reg's.

    Why not label-reg's plain ``theta = W f + b``: every feature is a ReLU output (>= 0), so the
    gradients of all the weights of one output share a sign and one Adam step moves that output
    by about ``lr * sum(f)``, i.e. ``lr * F / 2`` (``F`` = 9216 for c=16 at 47x63x44). In voxel
    coordinates a matrix entry is multiplied by positions up to ``S``, so at ``lr = 3e-4`` one
    step could move the far corner by tens of voxels, and the network diverged; label-reg
    trained at ``lr = 1e-5``. Scaling by ``1 / sqrt(F)`` and measuring the matrix in half
    extents makes one step move any part of the field by about ``lr * sqrt(F) * mean(f) * h``
    (a fraction of a voxel at ``lr = 3e-4``), the same for the translation and the matrix.

    The dense layer's size depends on the bottom grid, ``ceil(S / 16)``, so the input's spatial
    shape must be static and the same at every call.

    ``transform="translation"`` keeps ``M = 0``: ``theta = [I | H tau]``, a pure translation
    (the outputs of ``M`` are computed and ignored, so the head's shape, and a checkpoint's, do
    not depend on the choice). A translation cannot scale or shear, which is what an image
    similarity across modalities can exploit without aligning anything (e.g. NMI raised by
    zooming one image into a homogeneous region of the other).

    Args:
        ndim: 2 or 3.
        num_channel_initial: encoder width ``c`` (label-reg's GlobalNet: 8).
        transform: ``"affine"`` (label-reg's) or ``"translation"``.

    Call arguments:
        x: ``[B, *S, C_in]`` with a static ``S``.
        training: batch-norm mode.

    Returns:
        ``theta [B, n, n+1]``, float32 under every dtype policy (the encoder follows the
        policy, the dense head is float32).
    """

    def __init__(self, ndim: int, num_channel_initial: int = 8, transform: str = "affine",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.num_channel_initial = check_positive_int(num_channel_initial, "num_channel_initial")
        if transform not in AFFINE_TRANSFORMS:
            raise ValueError(f"transform must be one of {AFFINE_TRANSFORMS}; received "
                             f"transform={transform!r}.")
        self.transform = transform
        self.encoder = Encoder(self.ndim, self.num_channel_initial, name="encoder")
        n = self.ndim
        # Always float32, whatever the dtype policy: theta is close to [I | 0], and bfloat16's
        # spacing near 1 is 2**-7, so a bfloat16 matrix entry would be off by up to 0.004,
        # i.e. up to 0.25 voxel at the far side of a 64-voxel grid; a translation of 20 voxels
        # would be off by up to 0.06 voxel. The layer is one small matmul, so float32 costs
        # nothing measurable; its bfloat16 input features are cast to float32 on entry.
        self.dense = keras.layers.Dense(
            n * (n + 1), kernel_initializer="zeros", bias_initializer="zeros",
            dtype="float32", name="affine",
        )
        self._grid: tuple[int, ...] | None = None

    def _num_features(self, spatial_shape: Sequence[int | None]) -> int:
        if any(s is None for s in spatial_shape):
            raise ValueError(
                f"{self.name} needs a static spatial input shape (its dense layer depends on it); "
                f"received spatial shape {shape_text(spatial_shape)}."
            )
        bottom = Encoder.bottom_shape(spatial_shape)
        return math.prod(bottom) * self.num_channel_initial * 2**Encoder.num_levels

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.encoder.build(tuple(input_shape))
        spatial = tuple(input_shape)[1:-1]
        self.dense.build((input_shape[0], self._num_features(spatial)))
        self._grid = tuple(int(s) for s in spatial)

    def _to_theta(self, raw: tf.Tensor, spatial_shape: Sequence[int]) -> tf.Tensor:
        """Dense outputs ``[B, n(n+1)]`` -> ``theta [B, n, n+1]`` (see the class docstring)."""
        n = self.ndim
        centre, half = _centred_frame(spatial_shape)
        scale = 1.0 / math.sqrt(self._num_features(spatial_shape))
        r = tf.reshape(raw * scale, [-1, n, n + 1])
        m, tau = r[..., :n], r[..., n]
        if self.transform == "translation":
            m = tf.zeros_like(m)
        h = tf.constant(half, tf.float32)
        # H M H^-1: row i scaled by h_i, column j divided by h_j.
        delta = m * h[:, None] / h[None, :]
        t = tau * h - tf.linalg.matvec(delta, tf.constant(centre, tf.float32))
        return tf.concat([tf.eye(n, dtype=tf.float32) + delta, t[..., None]], axis=-1)

    def bias_for_theta(self, theta: Any) -> np.ndarray:
        """The dense bias that makes ``theta`` the output of a zero-kernel head.

        The inverse of the head's parametrisation, to start the regressor at a known transform
        (and in tests). The layer must be built (the grid sets ``c``, ``h`` and ``F``).

        Args:
            theta: ``[n, n+1]`` row-major ``[A | t]`` in the voxel convention of ``theta``.

        Returns:
            float32 ``[n (n+1)]``.
        """
        if self._grid is None:
            raise ValueError(f"{self.name} must be built before bias_for_theta().")
        n = self.ndim
        theta = np.asarray(theta, np.float64)
        if theta.shape != (n, n + 1):
            raise ValueError(f"theta must have shape ({n}, {n + 1}); received {theta.shape}.")
        centre, half = _centred_frame(self._grid)
        delta = theta[:, :n] - np.eye(n)
        m = delta / half[:, None] * half[None, :]
        tau = (theta[:, n] + delta @ centre) / half
        raw = np.concatenate([m, tau[:, None]], axis=1).reshape(-1)
        return (raw * math.sqrt(self._num_features(self._grid))).astype(np.float32)

    def call(self, x: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        bottom, _ = self.encoder(x, training=training)
        spatial = tuple(x.shape[1:-1])
        flat = tf.reshape(bottom, [-1, self._num_features(spatial)])
        return self._to_theta(self.dense(flat), spatial)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "num_channel_initial": self.num_channel_initial,
            "transform": self.transform,
        }


# --------------------------------------------------------------------------------------------
# Base model
# --------------------------------------------------------------------------------------------


class RegistrationModel(keras.Model):
    """Base of the networks mapping ``[moving_image, fixed_image]`` to a DDF.

    Subclasses implement ``forward``, which returns a dict with at least ``"ddf"``; ``call``
    returns that DDF. The DDF ``[B, *S_fix, n]`` is in voxel units and is used as
    ``labelreg.ops.warp(moving_image, ddf)``: the moving image is sampled, in its own voxel
    indices, at ``x + ddf[x]`` for each fixed-grid voxel ``x`` (label-reg's convention). When
    the two shapes differ, the moving image is brought onto the fixed grid only to form the
    network's input: resized to the fixed shape (``moving_input="resize"``, label-reg's and
    the default), or placed by the identity transform (``"identity"``, see
    :func:`pair_input`).

    Precision: the networks' layers follow the Keras dtype policy in force when the network
    is created (see :mod:`labelreg.networks.precision`). Under ``mixed_bfloat16`` the
    convolutions and their feature maps are bfloat16 and the variables float32, while the
    network's interface stays float32: the images are not cast on entry (the model does not
    autocast its inputs; each convolution casts what it reads) and the DDF it returns is
    float32, so the warp and the losses downstream run in float32 unchanged.

    Args:
        ndim: 2 or 3.
        moving_input: ``"resize"`` or ``"identity"`` (see above).
        **kwargs: ``name``, ``trainable``, ``dtype``, passed to ``keras.Model``.
    """

    #: Whether every DDF the network predicts is affine (then it needs no smoothness term).
    affine_only = False

    def __init__(self, ndim: int = 3, moving_input: str = "resize", **kwargs: Any) -> None:
        # Keras would otherwise cast the float32 images to the compute dtype (bfloat16 under
        # mixed precision) before forward() sees them, quantising the moving image that the
        # composite network warps and the fixed shape's resize reads.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        self.moving_input = check_moving_input(moving_input)

    def network_input(self, moving: tf.Tensor, fixed: tf.Tensor) -> tf.Tensor:
        """:func:`pair_input` with this network's ``moving_input``."""
        return pair_input(moving, fixed, self.moving_input)

    def forward(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        """All outputs of the network as a dict (``"ddf"`` and, for some networks, more).

        Every concrete network overrides this; the base class has no network to run.
        """
        raise TypeError(
            f"{type(self).__name__} is a base class without a network; use LocalNet, GlobalNet, "
            "CompositeNet or UNet."
        )

    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        # The built-in networks already return float32; the cast (a no-op then) keeps the
        # float32 contract for any subclass whose last layer follows a bfloat16 policy.
        return as_float32(self.forward(inputs, training=training)["ddf"])

    def warp(
        self,
        image: Any,
        ddf: Any,
        interpolation: str = "linear",
        fill_mode: str = "constant",
        fill_value: float = 0.0,
    ) -> tf.Tensor:
        """``labelreg.ops.warp(image, ddf, ...)``: the moving image (or label) on the fixed grid.

        Args:
            image: ``[B, *S_mov, C]``.
            ddf: ``[B, *S_fix, n]``, typically ``model([moving, fixed])``.
            interpolation: ``"linear"``, or ``"nearest"`` for label maps.
            fill_mode, fill_value: as for ``labelreg.ops.warp``.

        Returns:
            ``[B, *S_fix, C]``.
        """
        return ops.warp(
            image, ddf, interpolation=interpolation, fill_mode=fill_mode, fill_value=fill_value
        )

    def _pair(self, inputs: Any) -> tuple[tf.Tensor, tf.Tensor]:
        return unpack_pair(inputs, self.ndim, type(self).__name__)

    def _input_shape(self, input_shape: Any) -> tuple[int | None, ...]:
        """Check a pair's shapes (from ``build``) and return the network input's shape.

        The network input is the fixed grid with the channels of both images.
        """
        moving, fixed = pair_shapes(input_shape, type(self).__name__)
        check_pair_shapes(moving, fixed, self.ndim, type(self).__name__)
        channels = known_channels(moving, "moving_image") + known_channels(fixed, "fixed_image")
        return with_channels(fixed, channels)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ndim": self.ndim, "moving_input": self.moving_input}
