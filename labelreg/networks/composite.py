"""CompositeNet: label-reg's GlobalNet followed by a LocalNet, composed properly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.networks.globalnet import AffineStage, check_fixed_shape, resolve_fixed_shape
from labelreg.networks.layers import (
    AffineRegressor,
    RegistrationModel,
    check_positive_int,
    pair_shapes,
    with_channels,
)
from labelreg.networks.localnet import LocalNet

__all__ = ["CompositeNet"]


@keras.saving.register_keras_serializable(package="labelreg")
class CompositeNet(AffineStage, RegistrationModel):
    """An affine stage (GlobalNet) then a dense stage (LocalNet), composed.

    1. GlobalNet's regressor gives ``theta`` and the affine DDF ``ddf_global`` (see
       :class:`~labelreg.networks.GlobalNet` for the grid of ``theta``).
    2. The moving image is warped by ``ddf_global`` onto the fixed grid
       (``labelreg.ops.warp``, linear, zero outside).
    3. A LocalNet (``ddf_levels=(0,)`` by default, as label-reg) registers that warped image to
       the fixed image: ``ddf_local``.
    4. The output is the true composition, warping by ``ddf_global`` first and ``ddf_local``
       second: ``ddf(x) = ddf_local(x) + ddf_global(x + ddf_local(x))``, computed by
       ``labelreg.ops.compose(ddf_global, ddf_local)`` (the global field is read with border
       replication outside the grid). So ``warp(moving, ddf)`` equals
       ``warp(warp(moving, ddf_global), ddf_local)`` up to interpolation, with one resampling
       of the moving image instead of two.

    Deviations from label-reg: label-reg's CompositeNet crashed on its master branch (a missing
    argument, issues #13/#14), and once fixed it ADDED the fields (``global grid + local ddf``),
    which is not the composition of the two transforms; here it is composed. Batch norm runs in
    inference mode when ``training`` is false or ``None``; resizing uses half-pixel centres.

    Args:
        ndim: 2 or 3 spatial axes.
        fixed_shape: the fixed image's spatial shape (``ndim`` ints) or ``None`` for the first
            call's; the affine stage's dense layer depends on it.
        num_channel_initial: width of the LocalNet stage (label-reg: 32).
        num_channel_initial_global: width of the GlobalNet stage (label-reg: 8).
        ddf_levels: LocalNet's output levels (label-reg's composite: ``(0,)``).
        image_shape: another name for ``fixed_shape``.
        transform: the global stage's ``"affine"`` (label-reg's) or ``"translation"``.
        **kwargs: ``name``, ``trainable``, ``dtype``.

    Call arguments:
        inputs: ``[moving_image [B, *S_mov, C_m], fixed_image [B, *S_fix, C_f]]`` (or a dict).
        training: batch-norm mode.

    Returns:
        ``ddf [B, *S_fix, n]``. ``forward`` returns ``ddf``, ``theta``, ``ddf_global`` and
        ``ddf_local``; ``theta()`` returns ``theta`` alone. All are float32 under every dtype
        policy: under ``mixed_bfloat16`` the two encoders and LocalNet's decoder compute in
        bfloat16, while ``theta``, the warp of the moving image and the composition are
        float32.

    Raises:
        ValueError: as :class:`~labelreg.networks.GlobalNet` and
            :class:`~labelreg.networks.LocalNet`.
    """

    def __init__(
        self,
        ndim: int = 3,
        fixed_shape: Sequence[int] | None = None,
        num_channel_initial: int = 32,
        num_channel_initial_global: int = 8,
        ddf_levels: Sequence[int] = (0,),
        image_shape: Sequence[int] | None = None,
        transform: str = "affine",
        **kwargs: Any,
    ) -> None:
        super().__init__(ndim=ndim, **kwargs)
        self.fixed_shape = resolve_fixed_shape(self.ndim, fixed_shape, image_shape)
        self.num_channel_initial_global = check_positive_int(
            num_channel_initial_global, "num_channel_initial_global"
        )
        self.regressor = AffineRegressor(
            self.ndim, self.num_channel_initial_global, transform, name="global_regressor"
        )
        self.local_net = LocalNet(
            self.ndim, num_channel_initial, ddf_levels=ddf_levels, name="local_net"
        )

    @property
    def num_channel_initial(self) -> int:
        return self.local_net.num_channel_initial

    @property
    def ddf_levels(self) -> tuple[int, ...]:
        return self.local_net.ddf_levels

    def build(self, input_shape: Any) -> None:
        network_input = self._input_shape(input_shape)
        moving, fixed = pair_shapes(input_shape)
        self.fixed_shape = check_fixed_shape(self, fixed, self.fixed_shape)
        self.regressor.build(network_input)
        # LocalNet sees the moving image warped onto the fixed grid.
        self.local_net.build([with_channels(fixed, moving[-1]), fixed])

    def forward(self, inputs: Any, training: bool | None = None) -> dict[str, tf.Tensor]:
        """``ddf``, ``theta``, ``ddf_global`` and ``ddf_local`` (all on the fixed grid)."""
        moving, fixed = self._pair(inputs)
        theta, shape = self._affine(moving, fixed, training)
        ddf_global = ops.affine_to_ddf(theta, shape)
        warped = ops.warp(moving, ddf_global)
        ddf_local = self.local_net([warped, fixed], training=training)
        # compose(a, b) is "warp by a, then by b": b(x) + a(x + b(x)).
        ddf = ops.compose(ddf_global, ddf_local)
        return {"ddf": ddf, "theta": theta, "ddf_global": ddf_global, "ddf_local": ddf_local}

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_channel_initial": self.num_channel_initial,
            "num_channel_initial_global": self.num_channel_initial_global,
            "ddf_levels": list(self.ddf_levels),
        }
