"""GraDIRN: gradient descent on an image similarity, unrolled into a network.

Qiu, Hammernik, Qin, Chen, Rueckert, "Embedding Gradient-based Optimization in Image Registration
Networks", MICCAI 2022 (arXiv 2112.03915). The network runs a fixed number of gradient-descent
steps on a similarity energy over image pyramids, coarse to fine. Each step adds a learned
correction from a small CNN:

    u <- u - tau_l * train_scale * numel * dE(target_l, warp(moving_l, u)) / du
           - CNN_l([u, target_l, warp(moving_l, u)])

Here ``u`` is the displacement at pyramid level ``l`` in that level's voxels. ``E`` is the
per-sample mean squared difference (``"ssd"``), the negative squared global NCC (``"ncc"``), or
any image loss of :mod:`labelreg.losses.registry` that needs no network (``"mind"`` and ``"nmi"``
for images of two modalities, ``"lncc"``, ``"gncc"``; :func:`inner_similarities`).
``numel`` is the voxel-times-channel count of one target image at that level, so for SSD the step
follows the gradient of the sum of squared differences. ``tau_l`` is a learned scalar per level.
``CNN_l`` is five 3^n convolutions, and both are shared across the repeats of a level.

The gradient ``dE/du`` comes from a nested ``tf.GradientTape`` inside the forward pass, so it is a
differentiable part of the graph: an outer tape (training) differentiates through it, as
PyTorch's ``autograd.grad(create_graph=True)`` would. Second-order gradients through the
XLA-compiled :func:`labelreg.ops.warp` work as they are, so nothing needs ``xla_disabled``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.losses.image import ssd
from labelreg.losses.registry import build_loss
from labelreg.networks.activations import leaky_relu
from labelreg.networks.gradirn_options import CORRECTION_INITS, inner_similarities
from labelreg.networks.layers import (
    RegistrationModel,
    as_float32,
    check_ndim,
    check_positive_int,
    conv_layer,
    known_channels,
    pair_shapes,
    resize_like,
    static_spatial_shape,
)
from labelreg.ops.checks import check_number

__all__ = [
    "GraDIRN",
    "GradientStep",
    "SIMILARITIES",
    "inner_similarities",
    "ncc_energy",
    "similarity_gradient",
    "pyramid_shapes",
    "CORRECTION_INITS",
]

#: The built-in energies (:func:`inner_similarities` at import).
SIMILARITIES = inner_similarities()

_NUM_CONVS = 5
_LEAK = 0.2
_NCC_EPS = 1e-5
# The warps inside the descent steps replicate the border, as the reference's differentiable
# sampler does: a sample that leaves the image then has a zero gradient instead of being pulled
# towards the zero padding.
_STEP_FILL_MODE = "nearest"


# --------------------------------------------------------------------------------------------
# Similarity energies and their gradient
# --------------------------------------------------------------------------------------------


def _as_pair(target: Any, warped: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Tensors of one floating dtype (the target's, float32 for non-float input)."""
    target = tf.convert_to_tensor(target)
    if not target.dtype.is_floating:
        target = tf.cast(target, tf.float32)
    return target, tf.cast(tf.convert_to_tensor(warped), target.dtype)


def _sample_axes(x: tf.Tensor) -> list[int]:
    return list(range(1, x.shape.rank))


def ncc_energy(target: Any, warped: Any) -> tf.Tensor:
    """Per-sample negative squared global NCC, GraDIRN's ``ncc`` energy.

    ``-(Σ t'w')² / (Σ t'² · Σ w'² + 1e-5)`` with ``t' = t - mean(t)``, ``w' = w - mean(w)``. The
    sums run over ``[*S, C]``, as in the reference. The constant is small next to sums of squares
    over a whole image, so it only guards flat images. This is GraDIRN's energy, not the
    ``labelreg.losses.gncc`` loss (which normalises by the image scale and is ``1 - ncc²``).

    Args:
        target, warped: ``[B, *S, C]``.

    Returns:
        ``[B]`` in ``[-1, 0]``.
    """
    target, warped = _as_pair(target, warped)
    axes = _sample_axes(target)
    t = target - tf.reduce_mean(target, axis=axes, keepdims=True)
    w = warped - tf.reduce_mean(warped, axis=axes, keepdims=True)
    cov = tf.reduce_sum(t * w, axis=axes)
    var_t = tf.reduce_sum(tf.square(t), axis=axes)
    var_w = tf.reduce_sum(tf.square(w), axis=axes)
    return -tf.square(cov) / (var_t * var_w + _NCC_EPS)


# The ssd energy is the image loss of the same name (mean squared difference per sample).
_ENERGIES = {"ssd": ssd, "ncc": ncc_energy}


def energy_function(similarity: str) -> Any:
    """``(target, warped) -> [B]`` of one of :func:`inner_similarities`.

    Raises:
        ValueError: an unknown name, naming the choices.
    """
    choices = inner_similarities()
    if similarity not in choices:
        raise ValueError(f"similarity must be one of {choices}; received "
                         f"similarity={similarity!r}.")
    return _ENERGIES.get(similarity) or build_loss(similarity, "image")


def similarity_gradient(
    similarity: str, target: tf.Tensor, moving: tf.Tensor, ddf: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """``numel · ∂E(target, warp(moving, ddf)) / ∂ddf`` per sample, and the warped image.

    The energies of the batch are summed before the gradient is taken, so each sample receives
    the gradient of its own energy. The gradient is computed on a nested tape and stays in the
    graph: a surrounding ``tf.GradientTape`` differentiates through it (second order). The warp
    replicates the border (``fill_mode="nearest"``), as the reference's sampler does. Where the
    linear interpolation has a kink (integer coordinates), the gradient takes the right-hand
    slope (``floor``).

    Args:
        similarity: one of :func:`inner_similarities`.
        target: ``[B, *S, C_t]``.
        moving: ``[B, *S, C_m]``, on the same grid as ``target``.
        ddf: ``[B, *S, n]`` in voxels of that grid.

    Returns:
        ``(gradient [B, *S, n], warped [B, *S, C_m])``; ``numel = prod(S) · C_t``.
    """
    energy_fn = energy_function(similarity)
    target = tf.convert_to_tensor(target, tf.float32)
    ddf = tf.convert_to_tensor(ddf, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(ddf)
        warped = ops.warp(moving, ddf, fill_mode=_STEP_FILL_MODE)
        energy = tf.reduce_sum(energy_fn(target, warped))
    gradient = tape.gradient(energy, ddf)
    numel = tf.cast(tf.reduce_prod(tf.shape(target)[1:]), gradient.dtype)
    return gradient * numel, warped


# --------------------------------------------------------------------------------------------
# Pyramid
# --------------------------------------------------------------------------------------------


def pyramid_shapes(shape: Sequence[int], num_levels: int) -> list[tuple[int, ...]]:
    """Spatial shapes of the pyramid, level 0 (``shape``) to ``num_levels - 1`` (coarsest).

    Each level halves the previous one, rounding up (``ceil(s / 2)``), so odd sizes never reach
    zero.
    """
    shapes = [tuple(int(s) for s in shape)]
    for _ in range(num_levels - 1):
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes


def _upsample_ddf(ddf: tf.Tensor, shape: Sequence[int]) -> tf.Tensor:
    """A DDF resized (linear) onto a finer grid and rescaled to the finer grid's voxels.

    With half-pixel centres a coarse voxel spans ``s_fine / s_coarse`` fine voxels per axis, which
    is the reference's factor 2 whenever the finer size is even.
    """
    coarse = static_spatial_shape(ddf, "ddf")
    scale = tf.constant([f / c for f, c in zip(shape, coarse, strict=True)], tf.float32)
    return ops.resize(ddf, shape) * scale


def _fixed_to_moving_voxels(ddf: tf.Tensor, moving: tf.Tensor, fixed: tf.Tensor) -> tf.Tensor:
    """Convert a DDF into the moving image's voxels when the moving image was resized.

    The descent runs on the moving image resized (half-pixel centres) to the fixed grid, so it
    matches fixed voxel ``x`` with the point ``y = x + ddf[x]`` of the resized image. That is the
    point ``(y + 0.5) · S_mov / S_fix - 0.5`` of the moving image, and ``labelreg.ops.warp(moving,
    ·)`` expects that point minus ``x``. This is a no-op when the shapes agree.
    """
    fixed_shape = static_spatial_shape(fixed, "fixed_image")
    if tuple(moving.shape[1:-1]) == fixed_shape:
        return ddf
    moving_size = tf.cast(tf.shape(moving)[1:-1], tf.float32)
    ratio = moving_size / tf.constant(fixed_shape, tf.float32)
    grid = ops.reference_grid(fixed_shape)
    return (grid + ddf + 0.5) * ratio - 0.5 - grid


# --------------------------------------------------------------------------------------------
# One level's step
# --------------------------------------------------------------------------------------------


def _kaiming_uniform(negative_slope: float) -> keras.initializers.Initializer:
    """PyTorch's ``kaiming_uniform_(a=negative_slope)``: ``U(±gain · sqrt(3 / fan_in))``.

    The gain is ``sqrt(2 / (1 + a²))``. Keras' ``VarianceScaling`` draws from
    ``U(±sqrt(3 · scale / fan_in))``, so it matches with ``scale = gain²``. Both compute a
    convolution's fan-in as kernel volume times input channels.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0 / (1.0 + negative_slope**2), mode="fan_in", distribution="uniform"
    )


def _torch_default_bias(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default convolution bias, ``U(±1 / sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package="labelreg")
class GradientStep(keras.layers.Layer):
    """One GraDIRN step at one pyramid level: a similarity gradient step and a CNN step.

    ``u' = u - tau · train_scale · numel · ∂E/∂u - CNN([u, target, warp(moving, u)])``. See the
    module docstring for the notation. GraDIRN calls the layer ``num_repeat`` times per level, so
    those repeats share ``tau`` and the CNN's weights.

    The CNN has five 3^n "SAME" convolutions with bias: ``channels`` outputs each with
    LeakyReLU(0.2) after the first four, then a linear convolution to ``n`` outputs. The
    initialisation is the reference's PyTorch one, expressed with Keras initialisers.
    ``kaiming_uniform_(a=0.2)`` for the hidden kernels and ``(a=0)`` for the last become
    ``VarianceScaling(2 / (1 + a²), "fan_in", "uniform")``. PyTorch's default bias
    ``U(±1/sqrt(fan_in))`` becomes ``RandomUniform`` with that bound. The first convolution's
    fan-in depends on the image channels, so the convolutions are created in ``build``.

    Precision: the step itself (its inputs, ``tau``, the similarity gradient and the update of
    ``u``) is float32 under every dtype policy; only the CNN follows the policy in force when
    the layer is built, so under ``mixed_bfloat16`` its convolutions run in bfloat16 and its
    correction is cast to float32 before it is subtracted. ``u`` is carried through all steps,
    and bfloat16 roundings of ``u`` itself would accumulate over them.

    Args:
        ndim: 2 or 3.
        similarity: one of :func:`inner_similarities`.
        channels: width of the CNN's hidden convolutions.
        tau_init: initial value of the learned step size ``tau``.
        train_scale: constant factor on ``tau`` (a learning-rate rescaling of ``tau``).
        correction_init: ``"reference"`` (the PyTorch initialisation above for every
            convolution) or ``"zero"`` (the last convolution's kernel and bias start at zero, so
            the untrained step is the plain gradient step and training starts from plain
            descent; the gradient still reaches every weight through the last kernel).

    Call arguments:
        ddf: ``[B, *S, n]``, the current displacement in voxels of this level.
        target: ``[B, *S, C_t]``, the fixed image at this level.
        moving: ``[B, *S, C_m]``, the moving image at this level, on the same grid.

    Returns:
        The updated displacement ``[B, *S, n]``.
    """

    def __init__(
        self,
        ndim: int,
        similarity: str = "ssd",
        channels: int = 32,
        tau_init: float = 0.05,
        train_scale: float = 10.0,
        correction_init: str = "reference",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("dtype", "float32")  # the descent's arithmetic; see the docstring
        super().__init__(**kwargs)
        self.ndim = check_ndim(ndim)
        energy_function(similarity)  # an unknown name fails here, naming the choices
        self.similarity = similarity
        self.channels = check_positive_int(channels, "channels")
        self.tau_init = check_number(tau_init, "tau_init", 0.0)
        self.train_scale = check_number(train_scale, "train_scale", 0.0, exclusive_minimum=True)
        if correction_init not in CORRECTION_INITS:
            raise ValueError(f"correction_init must be one of {CORRECTION_INITS}; received "
                             f"correction_init={correction_init!r}.")
        self.correction_init = correction_init
        self.convs: list[keras.layers.Layer] = []

    def build(
        self,
        ddf_shape: Sequence[int | None],
        target_shape: Sequence[int | None],
        moving_shape: Sequence[int | None],
    ) -> None:
        in_channels = (
            self.ndim
            + known_channels(target_shape, "target")
            + known_channels(moving_shape, "moving")
        )
        volume = 3**self.ndim
        self.tau = self.add_weight(
            name="tau",
            shape=(),
            initializer=keras.initializers.Constant(self.tau_init),
            trainable=True,
        )
        widths = [self.channels] * (_NUM_CONVS - 1) + [self.ndim]
        shape: tuple[int | None, ...] = (None,) * (self.ndim + 1) + (in_channels,)
        for k, width in enumerate(widths):
            last = k == _NUM_CONVS - 1
            zero = last and self.correction_init == "zero"
            conv = conv_layer(
                self.ndim,
                width,
                3,
                use_bias=True,
                kernel_initializer="zeros" if zero else _kaiming_uniform(0.0 if last else _LEAK),
                bias_initializer="zeros" if zero else _torch_default_bias(volume * shape[-1]),
                name=f"conv_{k}",
            )
            conv.build(shape)
            self.convs.append(conv)
            shape = (*shape[:-1], width)

    def call(self, ddf: tf.Tensor, target: tf.Tensor, moving: tf.Tensor) -> tf.Tensor:
        gradient, warped = similarity_gradient(self.similarity, target, moving, ddf)
        x = tf.concat([ddf, target, warped], axis=-1)
        for conv in self.convs[:-1]:
            x = leaky_relu(conv(x), _LEAK)
        correction = as_float32(self.convs[-1](x))
        step = self.tau * self.train_scale
        return ddf - step * gradient - correction

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "ndim": self.ndim,
            "similarity": self.similarity,
            "channels": self.channels,
            "tau_init": self.tau_init,
            "train_scale": self.train_scale,
            "correction_init": self.correction_init,
        }


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="labelreg")
class GraDIRN(RegistrationModel):
    """GraDIRN: multi-resolution gradient descent with learned CNN steps (Qiu et al., 2022).

    The algorithm:

    - pyramids: the moving image is resized (linear) to the fixed grid, as every network here
      sees it. Both images are then halved ``num_levels - 1`` times by linear resizing, each
      level made from the previous one (level 0 is the fixed grid; sizes ``ceil(s / 2)``);
    - from ``u = 0`` at the coarsest level, each level ``l`` runs ``num_repeat`` steps of its
      :class:`GradientStep`. The moving image is warped at level ``l`` on that level's grid,
      with ``u`` in that level's voxels;
    - between levels ``u`` is resized (linear) to the next grid and multiplied by the size
      ratio, 2 for even sizes;
    - the DDF is the last ``u`` on the fixed grid. When the moving image has another shape it is
      converted to moving-image voxels, so ``ops.warp(moving_image, ddf)`` follows the labelreg
      convention.

    With the defaults (3 levels × 3 repeats = 9 steps, 32 channels, single-channel images) there
    are 88,521 trainable parameters in 2-D and 269,964 in 3-D: 3 CNNs and 3 ``tau``. These are
    the reference's counts.

    The warps inside the descent replicate the border, as the reference's differentiable sampler
    does. The returned DDF is meant for ``ops.warp``'s default zero padding, which the
    reference's loss and evaluation use.

    The CNNs start from the reference's random initialisation (see :class:`GradientStep`). At
    that point their corrections outweigh the gradient steps and feed back through ``u``, so an
    untrained network's DDF grows over the steps, to tens of voxels on a 16² toy pair. Training
    shrinks it within a few optimiser steps.

    Deviations from the reference implementation (PyTorch, ``qiuhuaqi/GraDIRN``):

    - resizing uses half-pixel centres (``labelreg.ops.resize``) instead of ``align_corners=True``,
      and the pyramid is built level by level. Each halving is then exactly a 2^n-voxel mean.
      The displacement's rescaling between levels is the exact size ratio, which equals the
      reference's 2 for even sizes;
    - displacements are in voxels with ``labelreg.ops.warp``. The reference normalised them by
      ``2 / size`` on an ``align_corners`` grid, which is ``(size - 1) / size`` voxels per unit;
    - ``tau_init`` is the step size itself. The reference scales its configured 0.5 by
      ``1 / (total steps + 1)``, which is 0.05 for 9 steps;
    - the similarity gradient stays differentiable in inference mode too. The reference detached
      it outside training; here that only costs something when a tape is recording.

    Args:
        ndim: 2 or 3 spatial axes.
        num_levels: number of pyramid levels (resolutions), each with its own step layer.
        num_repeat: gradient steps per level (they share weights).
        similarity: the energy of the descent: ``"ssd"`` (mean squared difference), ``"ncc"``
            (negative squared global NCC), or a plain image loss of the registry such as
            ``"mind"`` or ``"nmi"`` for two modalities (:func:`inner_similarities`).
        channels: width of the CNNs.
        tau_init: initial step size ``tau`` of every level.
        train_scale: fixed factor on ``tau`` (effective initial step ``tau_init · train_scale``).
        correction_init: ``"reference"`` or ``"zero"`` (every level's CNN starts with a zero
            output: the untrained network is the plain descent; see :class:`GradientStep`).
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        inputs: ``[moving_image [B, *S_mov, C_m], fixed_image [B, *S_fix, C_f]]`` (or a dict
            with those keys). ``S_fix`` must be static.
        training: unused (no layer depends on it); accepted for the common interface.

    Returns:
        ``ddf [B, *S_fix, n]`` in voxels; :meth:`forward` also returns ``"ddf_steps"``, the
        displacement after every step (``num_levels · num_repeat`` tensors, coarse to fine, each
        on its level's grid and in its voxels).

    Raises:
        ValueError: at construction for a bad argument; at call for ranks other than ``ndim + 2``,
            different batch sizes or eager NaN/Inf inputs.
    """

    def __init__(
        self,
        ndim: int = 3,
        num_levels: int = 3,
        num_repeat: int = 3,
        similarity: str = "ssd",
        channels: int = 32,
        tau_init: float = 0.05,
        train_scale: float = 10.0,
        correction_init: str = "reference",
        **kwargs: Any,
    ) -> None:
        super().__init__(ndim=ndim, **kwargs)
        if self.moving_input != "resize":
            raise ValueError("GraDIRN descends on the moving image resized to the fixed grid; "
                             f"moving_input={self.moving_input!r} is not supported (use "
                             "'resize').")
        self.num_levels = check_positive_int(num_levels, "num_levels")
        self.num_repeat = check_positive_int(num_repeat, "num_repeat")
        # steps[l] serves pyramid level l (0 = full resolution); each step checks the arguments.
        self.steps = [
            GradientStep(self.ndim, similarity, channels, tau_init, train_scale,
                         correction_init, name=f"step_level_{level}")
            for level in range(self.num_levels)
        ]
        first = self.steps[0]
        self.similarity, self.channels = first.similarity, first.channels
        self.tau_init, self.train_scale = first.tau_init, first.train_scale
        self.correction_init = first.correction_init

    def build(self, input_shape: Any) -> None:
        moving, fixed = pair_shapes(input_shape, type(self).__name__)
        self._input_shape(input_shape)  # checks ranks, batch sizes and known channels
        unknown = (None,) * (self.ndim + 1)
        for step in self.steps:
            step.build((*unknown, self.ndim), (*unknown, fixed[-1]), (*unknown, moving[-1]))

    def pyramids(self, moving: Any, fixed: Any) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """The image pyramids ``(moving_levels, fixed_levels)``, level 0 (fixed grid) first.

        Args:
            moving: ``[B, *S_mov, C_m]``.
            fixed: ``[B, *S_fix, C_f]`` with a static ``S_fix``.

        Returns:
            Two lists of ``num_levels`` tensors. Level ``l`` of both is on the grid
            ``pyramid_shapes(S_fix, num_levels)[l]``.
        """
        moving, fixed = self._pair([moving, fixed])
        shapes = pyramid_shapes(static_spatial_shape(fixed, "fixed_image"), self.num_levels)
        moving_levels, fixed_levels = [resize_like(moving, fixed)], [fixed]
        for shape in shapes[1:]:
            moving_levels.append(ops.resize(moving_levels[-1], shape))
            fixed_levels.append(ops.resize(fixed_levels[-1], shape))
        return moving_levels, fixed_levels

    def forward(self, inputs: Any, training: bool | None = None) -> dict[str, Any]:
        """``{"ddf": [B, *S_fix, n], "ddf_steps": [...]}`` (see the class docstring)."""
        del training  # no layer behaves differently in training
        moving, fixed = self._pair(inputs)
        moving_levels, fixed_levels = self.pyramids(moving, fixed)
        coarsest = static_spatial_shape(fixed_levels[-1], "the coarsest level")
        zeros_shape = tf.concat([tf.shape(fixed)[:1], [*coarsest, self.ndim]], axis=0)
        ddf = tf.zeros(zeros_shape, tf.float32)
        ddf_steps = []
        for level in reversed(range(self.num_levels)):
            if level < self.num_levels - 1:
                ddf = _upsample_ddf(ddf, static_spatial_shape(fixed_levels[level]))
            for _ in range(self.num_repeat):
                ddf = self.steps[level](ddf, fixed_levels[level], moving_levels[level])
                ddf_steps.append(ddf)
        return {
            "ddf": _fixed_to_moving_voxels(ddf, moving, fixed),
            "ddf_steps": ddf_steps,
        }

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_levels": self.num_levels,
            "num_repeat": self.num_repeat,
            "similarity": self.similarity,
            "channels": self.channels,
            "tau_init": self.tau_init,
            "train_scale": self.train_scale,
            "correction_init": self.correction_init,
        }
