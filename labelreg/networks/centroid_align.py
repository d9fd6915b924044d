"""CentroidAlignNet: segment the structure in each image, align the centroids, refine with LocalNet.

A registration network trained from labels has to learn two things: where the structure is in
each image (a global offset that varies by 10 mm or more between prostate MR/TRUS cases) and how
it deforms. LocalNet, seeing both images stacked, learns the second well and the first poorly
from a few dozen cases: it mostly applies the average offset. This network gives the offset its
own, easier task: one small U-Net per image segments the structure (label 0 of each case, the
gland in label-reg's data), the soft centroids of the two segmentations give a translation, and
a LocalNet registers the translated moving image to the fixed image. Training adds a Dice loss
of each segmentation against its image's label 0 (``[Loss] segmentation_weight``); inference sees
only the images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from labelreg import ops
from labelreg._tf import tf
from labelreg.losses.label import dice_loss
from labelreg.losses.terms import ModelObjective, Phase, Term
from labelreg.networks.layers import (
    RegistrationModel,
    as_float32,
    check_nonnegative_int,
    check_positive_int,
    pair_shapes,
    with_channels,
)
from labelreg.networks.localnet import LocalNet
from labelreg.networks.unet import UNetBackbone
from labelreg.refinement import refine_ddf

__all__ = ["CentroidAlignNet"]


@keras.saving.register_keras_serializable(package="labelreg")
class CentroidAlignNet(RegistrationModel):
    """A translation from segmentation centroids, composed with a LocalNet.

    1. ``segment_moving`` and ``segment_fixed``, two :class:`~labelreg.networks.UNetBackbone`
       s (width ``num_channel_segment``, depth 4, batch norm, max-pooling), each read one image
       resized onto its segmentation grid (``segment_resolution`` times the training shape)
       and give one logit per voxel there; ``p = sigmoid(logit)``.
    2. The translation is ``t = c(p_moving) - c(p_fixed)`` (voxel units), where ``c`` is
       :func:`labelreg.ops.soft_centroid` carried from the segmentation grid to the image's
       own voxel indices: the constant DDF ``t`` carries the fixed segmentation's centroid
       onto the moving one's.
    3. The moving image is warped by ``t`` onto the fixed grid and a LocalNet (width
       ``num_channel_initial``, levels ``ddf_levels``) registers it to the fixed image:
       ``ddf_local``. With ``register_resolution`` r < 1 both images are first resized onto
       a grid ``R = round(r S_fix)`` of the training fixed shape, and LocalNet's DDF, in
       voxels of ``R``, is scaled by ``S_fix / R`` per axis and resized (linear) back onto the
       fixed grid (see :meth:`register`).
    4. ``ddf = ddf_local + t``, which is exactly the composition "translate, then deform" (a
       constant field composes by addition).

    In training, ``translation_jitter`` adds a uniform random shift in ``[-j, j]`` voxels per
    axis to ``t`` before step 3. On training cases the segmentations are better than on new
    ones, so without it LocalNet only ever sees well-centred pairs and never learns to correct
    the centroid error it meets at inference; the label loss of the jittered composition is
    meant to teach it (on the prostate MR/TRUS data, 400 steps of it did not pay:
    docs/results.md).

    LocalNet's heads start at zero, so an untrained network applies the translation alone.

    Args:
        ndim: 2 or 3 spatial axes.
        num_channel_initial: LocalNet's width ``c``.
        num_channel_segment: width of each segmentation U-Net.
        segment_resolution: the U-Nets segment their image resized by this factor per axis
            (in (0, 1]; see :meth:`segment`).
        ddf_levels: LocalNet's output levels.
        segment_padding: voxels of the segmentation grid added on every side of each image by
            repeating its edge values before its U-Net, and cut from the logits after (see
            :meth:`segment`); 0 (default) adds none.
        translation_jitter: largest random shift (voxels, per axis) added to the translation
            in training; 0 (default) adds none, and inference never does.
        register_resolution: LocalNet registers on the fixed image resized by this factor per
            axis (in (0, 1]; 1, the default, is the fixed grid itself). At 0.5 LocalNet costs
            an eighth of its arithmetic in 3-D, for a real-time model.
        **kwargs: ``name``, ``trainable``, ``dtype``, and ``moving_input`` (accepted like
            every registration network's, without effect: LocalNet's moving image is already
            on the fixed grid).

    Call arguments:
        inputs: ``[moving_image [B, *S_mov, C_m], fixed_image [B, *S_fix, C_f]]`` (or a dict).
        training: batch-norm mode.

    Returns:
        ``ddf [B, *S_fix, n]`` float32. ``forward`` also returns ``translation [B, n]`` (the
        one applied, jitter included), ``ddf_local [B, *S_fix, n]``, and
        ``moving_segmentation [B, *S_mov, 1]`` and ``fixed_segmentation [B, *S_fix, 1]``
        (probabilities in [0, 1], linearly resized from the segmentation grids; present when
        the image's shape is static), all float32 under every dtype policy.

    Raises:
        ValueError: for a bad argument; at call as :class:`~labelreg.networks.LocalNet`.
    """

    def __init__(
        self,
        ndim: int = 3,
        num_channel_initial: int = 16,
        num_channel_segment: int = 8,
        ddf_levels: Sequence[int] = (0, 1, 2, 3, 4),
        segment_resolution: float = 0.5,
        segment_padding: int = 0,
        translation_jitter: float = 0.0,
        register_resolution: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(ndim=ndim, **kwargs)
        self.num_channel_segment = check_positive_int(num_channel_segment,
                                                      "num_channel_segment")
        if not 0.0 < float(segment_resolution) <= 1.0:
            raise ValueError(f"segment_resolution must be in (0, 1]; received "
                             f"segment_resolution={segment_resolution!r}.")
        self.segment_resolution = float(segment_resolution)
        if not 0.0 < float(register_resolution) <= 1.0:
            raise ValueError(f"register_resolution must be in (0, 1]; received "
                             f"register_resolution={register_resolution!r}.")
        self.register_resolution = float(register_resolution)
        self.segment_padding = check_nonnegative_int(segment_padding, "segment_padding")
        if not float(translation_jitter) >= 0.0:
            raise ValueError(f"translation_jitter must be >= 0 (voxels); received "
                             f"translation_jitter={translation_jitter!r}.")
        self.translation_jitter = float(translation_jitter)
        # Only a jittering network owns a seed generator (a variable), so the checkpoints of
        # one without jitter keep their layout.
        self._jitter_seed = (keras.random.SeedGenerator(name="jitter_seed")
                             if self.translation_jitter > 0 else None)
        self.segment_moving, self.segment_fixed = (
            UNetBackbone(self.ndim, self.num_channel_segment, depth=4, out_channels=1,
                         use_batch_norm=True, name=f"segment_{role}")
            for role in ("moving", "fixed"))
        self.local_net = LocalNet(self.ndim, num_channel_initial, ddf_levels=ddf_levels,
                                  moving_input=self.moving_input, name="local_net")

    @property
    def num_channel_initial(self) -> int:
        return self.local_net.num_channel_initial

    @property
    def ddf_levels(self) -> tuple[int, ...]:
        return self.local_net.ddf_levels

    def build(self, input_shape: Any) -> None:
        self._input_shape(input_shape)  # checks the pair
        moving, fixed = pair_shapes(input_shape)
        self._set_grids(moving, fixed)
        # LocalNet sees the translated moving image on the fixed grid.
        for part, grid, shape in ((self.segment_moving, "moving", moving),
                                  (self.segment_fixed, "fixed", fixed)):
            if not part.built:  # forward() may have run (and built the parts) first
                part.build((shape[0], *self.grids[grid], shape[-1]))
        if not self.local_net.built:
            grid = (fixed[0], *self.grids["register"], fixed[-1])
            self.local_net.build([with_channels(grid, moving[-1]), grid])

    def _set_grids(self, moving: Sequence[int | None], fixed: Sequence[int | None]
                           ) -> None:
        """Fix the grids the U-Nets segment on, ``round(S * segment_resolution)`` of the
        first (training) shapes, so a moving image of another size at serving time is resized
        onto the same grid; and LocalNet's grid (key ``register``), ``round(S_fix *
        register_resolution)``."""
        if getattr(self, "grids", None) is not None:
            return
        grids = {}
        for role, shape in (("moving", moving), ("fixed", fixed)):
            spatial = tuple(shape)[1:-1]
            if any(s is None for s in spatial):
                raise ValueError(f"CentroidAlignNet is built from static image shapes; received "
                                 f"the {role} shape {tuple(shape)}.")
            grids[role] = tuple(max(1, round(int(s) * self.segment_resolution))
                                for s in spatial)
            if role == "fixed":
                grids["register"] = tuple(max(1, round(int(s) * self.register_resolution))
                                          for s in spatial)
        self.grids = grids

    def segment(self, moving: tf.Tensor, fixed: tf.Tensor, training: bool | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
        """The two segmentations on the segmentation grids: ``p_moving [B, *G_mov, 1]``,
        ``p_fixed [B, *G_fix, 1]``.

        Each U-Net reads its image resized (linear) onto its grid ``G``, ``segment_resolution``
        times the training shape per axis (half by default: a centroid needs no fine detail,
        and it costs an eighth of the arithmetic in 3-D).

        With ``segment_padding = k``, each resized image is padded by ``k`` voxels on every
        side with its edge values (:func:`labelreg.ops.replicate_pad`) and the logits are
        cropped back to ``G``. A U-Net's zero padding makes the volume's faces look like the
        end of the anatomy; a gland that runs through a face of the field of view (as in some
        TRUS volumes) is then cut short, and its centroid moves away from that face. Repeated
        edge values make the structure seem to go on past the face.
        """
        self._set_grids(tuple(moving.shape), tuple(fixed.shape))
        pad = self.segment_padding
        out = []
        for net, role, image in ((self.segment_moving, "moving", moving),
                                 (self.segment_fixed, "fixed", fixed)):
            small = ops.resize(image, self.grids[role])
            logits = ops.crop_border(net(ops.replicate_pad(small, pad), training=training), pad)
            # The sigmoid runs in float32: the centroid sums a whole volume of probabilities.
            out.append(tf.sigmoid(as_float32(logits)))
        return out[0], out[1]

    @staticmethod
    def _centroid_on_image(probability: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        """Soft centroid ``[B, n]`` of a map on a segmentation grid ``G``, in voxel indices
        of ``image``'s grid ``S``: ``x = (g + 0.5) S / G - 0.5``, the half-pixel mapping of
        :func:`labelreg.ops.resize`."""
        grid = tf.cast(tf.shape(probability)[1:-1], tf.float32)
        size = tf.cast(tf.shape(image)[1:-1], tf.float32)
        return (ops.soft_centroid(probability) + 0.5) * size / grid - 0.5

    def forward(self, inputs: Any, training: bool | None = None,
                train_segmentations: bool = True) -> dict[str, tf.Tensor]:
        """``ddf``, ``translation``, ``ddf_local`` and the two segmentations (resized onto
        their images' grids; only when those grids are static).

        ``train_segmentations=False`` runs the segmentations in inference mode (batch-norm
        statistics kept) and stops the gradient at their maps, so training changes LocalNet
        alone."""
        moving, fixed = self._pair(inputs)
        p_moving, p_fixed = self.segment(moving, fixed,
                                         training=training if train_segmentations else False)
        if not train_segmentations:
            p_moving, p_fixed = tf.stop_gradient(p_moving), tf.stop_gradient(p_fixed)
        translation = (self._centroid_on_image(p_moving, moving)
                       - self._centroid_on_image(p_fixed, fixed))  # [B, n]
        if training and self._jitter_seed is not None:
            translation = translation + keras.random.uniform(
                tf.shape(translation), -self.translation_jitter, self.translation_jitter,
                seed=self._jitter_seed)
        field = tf.reshape(translation, [-1] + [1] * self.ndim + [self.ndim])
        constant = tf.zeros_like(fixed[..., :1]) + field  # [B, *S_fix, n]
        ddf_local = self.register(ops.warp(moving, constant), fixed, training=training)
        return {"ddf": ddf_local + field, "translation": translation, "ddf_local": ddf_local,
                **self._on_image_grids(p_moving, p_fixed, moving, fixed)}

    def register(self, moving: tf.Tensor, fixed: tf.Tensor, training: bool | None = None
                 ) -> tf.Tensor:
        """LocalNet's DDF ``[B, *S_fix, n]`` (fixed-grid voxels) of ``moving``, already on the
        fixed grid, against ``fixed``.

        Below ``register_resolution = 1`` LocalNet sees both images resized onto its grid
        ``R``. A displacement of ``d`` voxels of ``R`` along an axis is ``d S / R`` voxels of
        the fixed grid (the half-pixel mapping ``x = (g + 0.5) S / R - 0.5`` of
        :func:`labelreg.ops.resize`), so the field is scaled by ``S / R`` and then resized
        onto the fixed grid.
        """
        grid = self.grids["register"]
        size = tuple(fixed.shape[1:-1])
        if self.register_resolution == 1.0 or grid == size:
            return self.local_net([moving, fixed], training=training)
        small = self.local_net([ops.resize(moving, grid), ops.resize(fixed, grid)],
                               training=training)
        scale = tf.constant([s / g for s, g in zip(size, grid, strict=True)], tf.float32)
        return ops.resize(small * scale, size)

    def inference_ddf(self, settings: Mapping[str, Any]) -> Callable[[tf.Tensor, tf.Tensor],
                                                                      tf.Tensor]:
        """``(moving, fixed) -> ddf`` for inference and evaluation: the network's DDF, then,
        with ``[Inference] refine_steps`` > 0, that many Adam steps of test-time refinement
        aligning the network's own two segmentations (:func:`labelreg.refinement.refine_ddf`
        with ``refine_learning_rate`` and ``refine_bending_weight``)."""
        steps = int(settings.get("refine_steps", 0) or 0)
        # Only the settings given: refine_ddf's own defaults are the options' defaults.
        options = {name: float(settings[key]) for key, name in (
            ("refine_learning_rate", "learning_rate"), ("refine_bending_weight", "bending_weight"))
            if key in settings}

        def ddf(moving: tf.Tensor, fixed: tf.Tensor) -> tf.Tensor:
            out = self.forward([moving, fixed], training=False)
            if steps <= 0:
                return out["ddf"]
            return refine_ddf(out["ddf"], out["moving_segmentation"],
                              out["fixed_segmentation"], steps, **options)

        return ddf

    def segmentations(self, moving: tf.Tensor, fixed: tf.Tensor, training: bool | None = None
                      ) -> dict[str, tf.Tensor]:
        """The two segmentations resized (linear) onto their images' grids, as ``forward``
        returns them, without running the registration: ``moving_segmentation [B, *S_mov,
        1]`` and ``fixed_segmentation [B, *S_fix, 1]`` (each only when its image's grid is
        static)."""
        p_moving, p_fixed = self.segment(moving, fixed, training=training)
        return self._on_image_grids(p_moving, p_fixed, moving, fixed)

    def training_objective(self, loss: Mapping[str, Any]) -> ModelObjective:
        """This network's part of its method's objective, from the ``[Loss]`` settings.

        ``segmentation_weight`` times the mean of the Dice losses of the two segmentations
        against label 0 of their images (logged as ``segmentation_loss``). With
        ``segmentation_only_steps = N`` the first N steps are a phase that runs the
        segmentations alone on that loss (LocalNet is neither run nor changed); with
        ``freeze_segmentations`` the phase after it runs the segmentations in inference mode
        without gradient, so LocalNet trains alone, and their loss is logged but not added.
        """
        weight = float(loss.get("segmentation_weight", 0.0))
        if weight <= 0:
            return ModelObjective()
        needs = ("moving_seg_label", "fixed_seg_label")
        only = int(loss.get("segmentation_only_steps", 0))
        frozen = only > 0 and bool(loss.get("freeze_segmentations", False))

        def segment_only(batch: Mapping[str, Any]) -> dict[str, tf.Tensor]:
            return self.segmentations(batch["moving_image"], batch["fixed_image"], training=True)

        def register(batch: Mapping[str, Any]) -> dict[str, tf.Tensor]:
            # One forward pass gives the DDF and the segmentations the term scores.
            return self.forward([batch["moving_image"], batch["fixed_image"]], training=True,
                                train_segmentations=not frozen)

        if only <= 0:
            term = Term("segmentation_loss", weight, _segmentation_dice, needs=needs)
            return ModelObjective((term,), (Phase(0, register),))
        terms = (Term("segmentation_loss", weight, _segmentation_dice, phases=(0,), needs=needs),
                 Term("segmentation_loss", 0.0 if frozen else weight, _segmentation_dice,
                      phases=(1,), needs=needs))
        return ModelObjective(terms, (Phase(0, segment_only), Phase(only, register)))

    @staticmethod
    def _on_image_grids(p_moving: tf.Tensor, p_fixed: tf.Tensor, moving: tf.Tensor,
                        fixed: tf.Tensor) -> dict[str, tf.Tensor]:
        out = {}
        for role, p, image in (("moving", p_moving, moving), ("fixed", p_fixed, fixed)):
            if all(s is not None for s in image.shape[1:-1]):
                out[f"{role}_segmentation"] = ops.resize(p, image.shape[1:-1])
        return out

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_channel_initial": self.num_channel_initial,
            "num_channel_segment": self.num_channel_segment,
            "segment_resolution": self.segment_resolution,
            "segment_padding": self.segment_padding,
            "translation_jitter": self.translation_jitter,
            "register_resolution": self.register_resolution,
            "ddf_levels": list(self.ddf_levels),
        }


def _segmentation_dice(batch: Mapping[str, Any], outputs: Mapping[str, tf.Tensor]
                       ) -> tf.Tensor | None:
    """Mean of the Dice losses of the two segmentations against label 0 of their images,
    ``[B]``; ``None`` when the outputs hold no segmentation."""
    if "moving_segmentation" not in outputs:
        return None
    return 0.5 * (dice_loss(batch["moving_seg_label"], outputs["moving_segmentation"])
                  + dice_loss(batch["fixed_seg_label"], outputs["fixed_segmentation"]))

