"""GlobalNet: label-reg's affine registration network (Hu et al., MedIA 2018)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import shape_text
from labelreg.networks.layers import (
    AffineRegressor,
    RegistrationModel,
    check_positive_int,
    check_spatial_shape,
    pair_shapes,
)

__all__ = ["AffineStage", "GlobalNet", "check_fixed_shape"]


def check_fixed_shape(
    network: RegistrationModel, fixed: Any, fixed_shape: tuple[int, ...] | None
) -> tuple[int, ...]:
    """The fixed image's static spatial shape, checked against the network's ``fixed_shape``.

    Args:
        network: the network, for the message.
        fixed: the fixed image (a tensor) or its full shape ``[B, *S_fix, C]``.
        fixed_shape: the expected ``S_fix``, or ``None`` to accept any static shape.

    Raises:
        ValueError: when the shape is not static or differs from ``fixed_shape``; the message
            names ``fixed_image`` and both shapes.
    """
    full = tuple(fixed.shape) if tf.is_tensor(fixed) else tuple(fixed)
    spatial = full[1:-1]
    if any(s is None for s in spatial):
        raise ValueError(
            f"{type(network).__name__} needs a static fixed_image spatial shape (its dense layer "
            f"depends on it); received fixed_image shape {shape_text(full)}."
        )
    shape = tuple(int(s) for s in spatial)
    if fixed_shape is not None and shape != tuple(fixed_shape):
        raise ValueError(
            f"{type(network).__name__} was built for fixed images of spatial shape "
            f"{tuple(fixed_shape)} (its dense layer depends on it); received fixed_image shape "
            f"{shape_text(full)}."
        )
    return shape



def resolve_fixed_shape(
    ndim: int, fixed_shape: Sequence[int] | None, image_shape: Sequence[int] | None
) -> tuple[int, ...] | None:
    """Accept ``image_shape`` as another name of ``fixed_shape``; check the value."""
    if image_shape is not None:
        if fixed_shape is not None and tuple(fixed_shape) != tuple(image_shape):
            raise ValueError(
                "fixed_shape and image_shape name the same setting and must agree; received "
                f"fixed_shape={fixed_shape!r} and image_shape={image_shape!r}."
            )
        fixed_shape = image_shape
    if fixed_shape is None:
        return None
    return check_spatial_shape(fixed_shape, ndim, "fixed_shape")


class AffineStage:
    """What the networks with an affine regressor share (GlobalNet, CompositeNet): ``theta``,
    and the ``fixed_shape`` their dense layer depends on in their config. Mixed in before
    :class:`~labelreg.networks.layers.RegistrationModel`; needs ``self.regressor`` and
    ``self.fixed_shape``."""

    def _affine(self, moving: tf.Tensor, fixed: tf.Tensor, training: bool | None
                ) -> tuple[tf.Tensor, tuple[int, ...]]:
        """``theta [B, n, n+1]`` and the fixed grid's shape, which is fixed at the first call."""
        shape = check_fixed_shape(self, fixed, self.fixed_shape)
        if self.fixed_shape is None:  # forward() called before build()
            self.fixed_shape = shape
        return self.regressor(self.network_input(moving, fixed), training=training), shape

    def theta(self, inputs: Any, training: bool | None = False) -> tf.Tensor:
        """The affine transform ``[B, n, n+1]`` of a pair (see GlobalNet's docstring for its
        grid)."""
        moving, fixed = self._pair(inputs)
        check_fixed_shape(self, fixed, self.fixed_shape)
        return self.regressor(self.network_input(moving, fixed), training=training)

    @property
    def transform(self) -> str:
        """``"affine"`` or ``"translation"``: what the regressor predicts."""
        return self.regressor.transform

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "transform": self.transform,
                "fixed_shape": None if self.fixed_shape is None else list(self.fixed_shape)}


@keras.saving.register_keras_serializable(package="labelreg")
class GlobalNet(AffineStage, RegistrationModel):
    """label-reg's GlobalNet: an encoder and a dense layer predicting an affine transform.

    The encoder is LocalNet's (four ``DownResBlock`` s with a 7^n first kernel and a bottom
    ``ConvBlock``, channels ``c .. 16c``); its bottom features are flattened and a zero-initialised
    dense layer gives ``theta [B, n, n+1]`` (row-major ``[A | t]``) through a centred,
    normalised parametrisation (:class:`~labelreg.networks.layers.AffineRegressor`) that keeps
    it trainable at LocalNet's learning rates. Its DDF is
    ``labelreg.ops.affine_to_ddf(theta, S_fix)``. At initialisation ``theta`` is exactly the
    identity and the DDF exactly zero.

    The grid of ``theta``: it maps a fixed-image voxel index ``x`` (homogeneous, origin at voxel
    0, ``ij`` order) to the voxel index ``A x + t`` of the MOVING image at which the moving image
    is sampled, i.e. ``warp(moving_image, ddf)`` with ``ddf = A x + t - x``, exactly as LocalNet's
    DDF and as label-reg. The network sees the moving image resized to the fixed shape, but the
    transform is not expressed in that resized grid: when the shapes differ, the identity pairs
    voxel ``x`` of the fixed image with voxel ``x`` of the moving image (not the voxel at the same
    relative position), and the network has to learn the scaling between the two grids.

    The dense layer's size depends on the fixed shape (bottom grid ``ceil(S_fix / 16)``), so a
    GlobalNet serves one fixed shape. Give it as ``fixed_shape`` or let the first call set it;
    ``get_config`` records it, so ``from_config`` and ``.keras`` files rebuild the same layer.

    Deviations from label-reg: the dense layer's outputs are an affine about the grid centre
    in half extents, scaled by ``1/sqrt(F)`` (label-reg's acted on voxel indices directly and
    needed ``lr = 1e-5``); batch norm runs in inference mode when ``training`` is false or
    ``None`` (label-reg always used batch statistics, so a pair's transform depended on the rest
    of its batch); resizing uses half-pixel centres; 2-D and multi-channel images work.

    Args:
        ndim: 2 or 3 spatial axes.
        num_channel_initial: encoder width ``c`` (label-reg: 8).
        fixed_shape: the fixed image's spatial shape ``S_fix`` (``ndim`` ints), or ``None`` to
            take it from the first call.
        image_shape: another name for ``fixed_shape``.
        transform: ``"affine"`` (label-reg's) or ``"translation"`` (``A = I``; see
            :class:`~labelreg.networks.layers.AffineRegressor`).
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        inputs: ``[moving_image [B, *S_mov, C_m], fixed_image [B, *S_fix, C_f]]`` (or a dict).
        training: batch-norm mode.

    Returns:
        ``ddf [B, *S_fix, n]`` in voxel units. ``forward`` also returns ``theta``; ``theta()``
        returns ``theta`` alone. Both are float32 under every dtype policy: under
        ``mixed_bfloat16`` only the encoder computes in bfloat16; the dense head, ``theta``
        and the DDF made from it are float32.

    Raises:
        ValueError: for bad arguments; at call for a wrong rank, mismatched batches, NaN/Inf in
            an eager input or a fixed shape other than ``fixed_shape``.
    """

    #: The DDF is affine: label-reg trains it without a smoothness regulariser.
    affine_only = True

    def __init__(
        self,
        ndim: int = 3,
        num_channel_initial: int = 8,
        fixed_shape: Sequence[int] | None = None,
        image_shape: Sequence[int] | None = None,
        transform: str = "affine",
        **kwargs: Any,
    ) -> None:
        super().__init__(ndim=ndim, **kwargs)
        self.num_channel_initial = check_positive_int(num_channel_initial, "num_channel_initial")
        self.fixed_shape = resolve_fixed_shape(self.ndim, fixed_shape, image_shape)
        self.regressor = AffineRegressor(self.ndim, self.num_channel_initial, transform,
                                         name="regressor")

    def build(self, input_shape: Any) -> None:
        network_input = self._input_shape(input_shape)
        self.fixed_shape = check_fixed_shape(self, pair_shapes(input_shape)[1], self.fixed_shape)
        self.regressor.build(network_input)

    def forward(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        """``{"ddf": [B, *S_fix, n], "theta": [B, n, n+1]}``."""
        theta, shape = self._affine(*self._pair(inputs), training)
        return {"ddf": ops.affine_to_ddf(theta, shape), "theta": theta}

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_channel_initial": self.num_channel_initial}
