"""The shared base of methods whose model predicts a DDF from an image pair.

Label-driven registration and, next, the image-driven methods (DeepSim, learned similarity,
GraDIRN) all read the same four NIfTI folders, train one network from the networks registry on
label-reg's two-stage sampling with affine augmentation, validate Dice and centroid distance,
re-estimate BatchNorm statistics before checkpoints, infer on a folder
(:mod:`labelreg.infer`) and export the registration signatures
(:mod:`labelreg.export.registration`). A subclass supplies its objective, :meth:`loss_terms`,
and its config loader.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from labelreg import metrics, ops
from labelreg._tf import tf
from labelreg.data import PairedDataset, make_eval_batches, make_train_dataset
from labelreg.data.augment import augment_batch, step_seed
from labelreg.data.pipeline import CaseCache
from labelreg.engine.batchnorm import batch_norm_layers, recalibrate_batch_norm
from labelreg.engine.summaries import middle_slice_panel
from labelreg.errors import ConfigError, DataError, PartialFailure
from labelreg.losses.label import centroid_distance_loss, dice_loss
from labelreg.methods.base import Endpoint, Method
from labelreg.networks.apply import network_ddf, register_pair
from labelreg.networks.registry import NETWORKS, build_network

__all__ = ["PairwiseMethod", "RECALIBRATION_BATCHES"]

#: Training batches used to re-estimate the BatchNorm averages before each checkpoint.
RECALIBRATION_BATCHES = 32


class PairwiseMethod(Method):
    """A method training one ``[moving, fixed] -> ddf`` network (``self.models["model"]``).

    The objective is a weighted sum, per sample,

        label_weight * label_loss(fixed label, warped moving label)
            + centroid_weight * centroid distance (mm) of those labels
            + image_weight * image_loss(fixed image, warped moving image)
            + regulariser_weight * regulariser(ddf)
            + segmentation_weight * Dice loss of the network's segmentations
              (``centroid_align``'s ``moving_segmentation`` and ``fixed_segmentation``)
              against label 0 of each image

    whose terms a subclass sets in :meth:`build` (a weight of 0 or a loss of ``None`` drops
    the term; labels, when present, are always monitored with Dice and centroid distance).
    """

    label_loss: Callable[..., tf.Tensor] | None = None
    label_weight: float = 0.0
    centroid_weight: float = 0.0
    image_loss: Callable[..., tf.Tensor] | None = None
    image_weight: float = 0.0
    regulariser: Callable[..., tf.Tensor] | None = None
    regulariser_weight: float = 0.0
    segmentation_weight: float = 0.0
    #: The first steps train the segmentations alone (``[Loss] segmentation_only_steps``).
    segmentation_only_steps: int = 0
    #: After them, the segmentations stay as they are (``[Loss] freeze_segmentations``).
    freeze_segmentations: bool = False
    #: ``[Network]`` keys whose constructor argument has another name.
    network_argument_names: dict[str, str] = {}

    # -- data -----------------------------------------------------------------------------------

    def _ensure_demo_data(self) -> None:
        folder = self.cfg["Data"].get("demo_data")
        if folder is not None:
            from labelreg.data.demo import generate_demo_data

            generate_demo_data(folder)

    def prepare_data(self) -> None:
        data, train = self.cfg["Data"], self.cfg["Train"]
        self._ensure_demo_data()
        self.paired = PairedDataset(data["dir_moving_image"], data["dir_fixed_image"],
                                    data["dir_moving_label"], data["dir_fixed_label"])
        batch_size = int(train["minibatch_size"])
        if batch_size > self.paired.num_cases:
            raise DataError(
                f"[Train] minibatch_size = {batch_size} exceeds the {self.paired.num_cases} "
                f"training cases in {data['dir_moving_image']}."
            )
        ndim = len(self.paired.fixed_shape)
        flips = list(data["flip_axes"])
        if any(axis >= ndim for axis in flips) or len(set(flips)) != len(flips):
            raise ConfigError(
                f"{self.cfg.path}: [Data] flip_axes = {flips}: expected distinct spatial axes "
                f"in [0, {ndim}) of the {ndim}-D images in {data['dir_moving_image']}.")
        self.valid = None
        if data["dir_valid_moving_image"] is not None and data["dir_valid_moving_label"]:
            self.valid = PairedDataset(
                data["dir_valid_moving_image"], data["dir_valid_fixed_image"],
                data["dir_valid_moving_label"], data["dir_valid_fixed_label"])
        self.spacing_table = tf.constant(self.paired.fixed_spacings(tuple(data["voxel_spacing"])))
        # Every training file is read (and checked) now, so unreadable data end the run before
        # a run folder exists; the training stream reuses what was read.
        self.cache = CaseCache(self.paired, normalise=self.normalise)

    def case_names(self, indices: Sequence[int]) -> list[str]:
        return [self.paired.names[int(i)] for i in indices]

    def describe_data(self) -> str:
        return f"{self.paired.num_cases} pairs"

    @property
    def normalise(self) -> bool:
        return bool(self.cfg["Data"]["normalise"])

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        return make_train_dataset(self.paired, int(self.cfg["Train"]["minibatch_size"]), seed,
                                  start_step=start_step, normalise=self.normalise,
                                  cache=getattr(self, "cache", None),
                                  segmentation_labels=self.segmentation_weight > 0)

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        data = self.cfg["Data"]
        if data["augmentation"]:
            seed = step_seed(int(self.cfg["Train"]["seed"]), batch["step"])
            # Under several replicas a batch is a slice of the global batch; its samples take
            # the transforms of their positions in it, as on one device.
            batch = augment_batch(batch, float(data["affine_scale"]), seed,
                                  sample_index=batch.get("sample_index"),
                                  num_samples=int(self.cfg["Train"]["minibatch_size"]),
                                  translation=float(data["translation"]),
                                  intensity_gamma=float(data["intensity_gamma"]),
                                  intensity_noise=float(data["intensity_noise"]),
                                  flip_axes=tuple(data["flip_axes"]))
        return {**batch, "spacing": tf.gather(self.spacing_table, batch["case_index"])}

    # -- model ----------------------------------------------------------------------------------

    def network_arguments(self) -> dict[str, Any]:
        """Constructor arguments of the ``[Network]`` network beyond ``ndim``/``fixed_shape``:
        the keys set away from their defaults (so each network keeps its own defaults, and a
        key the chosen network does not take is reported by the registry)."""
        net, schema = self.cfg["Network"], self.cfg.schema["Network"]
        kwargs: dict[str, Any] = {}
        if net["num_channel_initial"] > 0:
            kwargs["num_channel_initial"] = net["num_channel_initial"]
        for name, value in net.items():
            if name not in ("network_type", "num_channel_initial") and \
                    value != schema[name].default:
                kwargs[self.network_argument_names.get(name, name)] = value
        return kwargs

    @property
    def moving_shape(self) -> tuple[int, ...]:
        """Spatial shape of the training moving images."""
        return tuple(self.paired.moving_shape)

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """Spatial shape of the training fixed images."""
        return tuple(self.paired.fixed_shape)

    def build(self) -> dict[str, keras.Model]:
        model = build_network(self.cfg["Network"]["network_type"], len(self.fixed_shape),
                              fixed_shape=self.fixed_shape, **self.network_arguments())
        _build_on_zeros(model, self.moving_shape, self.fixed_shape)
        return {"model": model}

    def meta(self) -> dict[str, Any]:
        return {"moving_shape": list(self.moving_shape),
                "fixed_shape": list(self.fixed_shape),
                "network_type": self.cfg["Network"]["network_type"],
                "normalise": self.normalise}

    @classmethod
    def rebuild(cls, description: Mapping[str, Any]) -> dict[str, keras.Model]:
        for name in NETWORKS:  # registers every network class for deserialisation
            NETWORKS.get(name)
        models = super().rebuild(description)
        meta = description.get("meta", {})
        if "moving_shape" in meta and "fixed_shape" in meta:
            _build_on_zeros(models["model"], meta["moving_shape"], meta["fixed_shape"])
        return models

    def ddf_function(self, training: bool = False):
        return network_ddf(self.models["model"], training=training)

    def schedule_restarts(self) -> tuple[int, ...]:
        return (self.segmentation_only_steps,) if self.segmentation_only_steps > 0 else ()

    def phase_loss_terms(self, phase: int) -> Callable[[dict[str, tf.Tensor]],
                                                       dict[str, tf.Tensor]]:
        if phase == 0 and self.segmentation_only_steps > 0:
            return self.segmentation_terms
        if self.freeze_segmentations and self.segmentation_only_steps > 0:
            return functools.partial(self.loss_terms, train_segmentations=False)
        return self.loss_terms

    def _segmentation_loss(self, batch: dict[str, tf.Tensor], moving_segmentation: tf.Tensor,
                           fixed_segmentation: tf.Tensor) -> tf.Tensor:
        """Mean of the Dice losses of the two segmentations against label 0 of their images,
        ``[B]``."""
        return 0.5 * (dice_loss(batch["moving_seg_label"], moving_segmentation)
                      + dice_loss(batch["fixed_seg_label"], fixed_segmentation))

    def segmentation_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The objective of the first ``segmentation_only_steps``: the segmentation loss alone
        (``segmentation_weight`` times it), from the network's ``segmentations`` only, so the
        registration part is neither run nor changed."""
        maps = self.models["model"].segmentations(batch["moving_image"], batch["fixed_image"],
                                                  training=True)
        segmentation = self._segmentation_loss(batch, maps["moving_segmentation"],
                                               maps["fixed_segmentation"])
        return {"segmentation_loss": segmentation,
                "loss": self.segmentation_weight * segmentation}

    def loss_terms(self, batch: dict[str, tf.Tensor], train_segmentations: bool = True
                   ) -> dict[str, tf.Tensor]:
        """The loss and monitoring terms of one batch, per sample ``[B]``.

        With ``train_segmentations=False`` (the second phase under ``freeze_segmentations``)
        the segmentations run in inference mode without gradient, and their loss is logged
        but not added."""
        use_image = self.image_loss is not None and self.image_weight > 0
        ddf_fn = self.ddf_function(training=True)
        terms: dict[str, tf.Tensor] = {}
        segmentation = None
        if self.segmentation_weight > 0:
            # One forward pass gives the DDF and the segmentations the extra term scores.
            outputs = self.models["model"].forward(
                [batch["moving_image"], batch["fixed_image"]], training=True,
                train_segmentations=train_segmentations)
            terms["segmentation_loss"] = self._segmentation_loss(
                batch, outputs["moving_segmentation"], outputs["fixed_segmentation"])
            if train_segmentations:
                segmentation = terms["segmentation_loss"]
            ddf_fn = lambda moving, fixed: outputs["ddf"]  # noqa: E731 - the DDF just computed
        out = register_pair(ddf_fn, batch["moving_image"], batch["fixed_image"],
                            batch.get("moving_label"), warp_image=use_image)
        ddf = out["ddf"]
        total = tf.zeros(tf.shape(ddf)[:1])
        if segmentation is not None:
            total += self.segmentation_weight * segmentation
        if "warped_label" in out:
            warped_label = out["warped_label"]
            if self.label_loss is not None and self.label_weight > 0:
                label = self.label_loss(batch["fixed_label"], warped_label)
                terms["label_loss"] = label
                total += self.label_weight * label
            if self.centroid_weight > 0 and warped_label.shape[-1] == 1:
                centroid = centroid_distance_loss(batch["fixed_label"], warped_label,
                                                  spacing=batch["spacing"])
                terms["centroid_loss_mm"] = centroid
                total += self.centroid_weight * centroid
            if warped_label.shape[-1] == 1:
                terms["dice"] = metrics.dice(batch["fixed_label"], warped_label)
                terms["centroid_distance_mm"] = metrics.centroid_distance(
                    batch["fixed_label"], warped_label, spacing=batch["spacing"])
                if "label_index" in batch:
                    # The same figures as validation: the gland's Dice (label 0) and the
                    # landmarks' centroid distance (labels 1..), each over the pairs that
                    # sampled it (NaN elsewhere; the logged means skip NaN).
                    gland = tf.equal(batch["label_index"], 0)
                    nan = tf.fill(tf.shape(terms["dice"]), float("nan"))
                    terms["dice_gland"] = tf.where(gland, terms["dice"], nan)
                    terms["tre_mm"] = tf.where(gland, nan, terms["centroid_distance_mm"])
            else:  # one-hot classes: the mean of the per-class Dice
                terms["dice"] = tf.reduce_mean(
                    metrics.dice_per_class(batch["fixed_label"], warped_label), axis=-1)
        if self.regulariser is not None and self.regulariser_weight > 0:
            reg = self.regulariser(ddf)
            terms["regulariser"] = reg
            total += self.regulariser_weight * reg
        if use_image:
            image = self.image_loss(batch["fixed_image"], out["warped_moving_image"])
            terms["image_loss"] = image
            total += self.image_weight * image
        terms["loss"] = total
        return terms

    # -- around checkpoints ---------------------------------------------------------------------

    def before_save(self) -> None:
        """Re-estimate the BatchNorm averages on (up to 32 batches of) the training images, as
        inference will see them (no augmentation); see :mod:`labelreg.engine.batchnorm`."""
        label_index = 0 if self.paired.has_labels else None
        batch_size = int(self.cfg["Train"]["minibatch_size"])

        def batches():
            # The training cases are already in memory (prepare_data): no file is read again.
            for i, batch in enumerate(make_eval_batches(self.paired, batch_size,
                                                        normalise=self.normalise,
                                                        label_index=label_index,
                                                        cache=getattr(self, "cache", None))):
                if i == RECALIBRATION_BATCHES:
                    return
                yield [batch["moving_image"], batch["fixed_image"]]

        if batch_norm_layers(self.models["model"]):
            self.log(f"re-estimating BatchNorm statistics on up to {RECALIBRATION_BATCHES} "
                     "training batches before the checkpoint")
        recalibrate_batch_norm(self.models["model"], batches())

    def validate(self) -> dict[str, float]:
        """Registration accuracy on the validation pairs (:func:`labelreg.evaluation.evaluate`).

        Returns:
            ``{}`` without validation data, else ``dice``: the median over cases of the gland
            (label 0) Dice; ``tre_mm``: the median over cases of the mean landmark TRE in mm
            (labels 1..; NaN when no case has a landmark found); ``dice_mean``: the mean Dice
            over every label of every case; ``centroid_distance_mm``: the mean centroid
            distance (mm) over every label with a centroid. Labels are warped linearly and
            binarised at 0.5.
        """
        if self.valid is None:
            return {}
        from labelreg.evaluation import evaluate

        # Read once and kept: validation runs at every checkpoint on the same files.
        if getattr(self, "_valid_cache", None) is None:
            self._valid_cache = CaseCache(self.valid, normalise=self.normalise)
        table = evaluate(self.ddf_function(), self.valid,
                         spacing=self.valid.fixed_spacings(tuple(self.cfg["Data"]["voxel_spacing"])),
                         normalise=self.normalise,
                         batch_size=int(self.cfg["Train"]["minibatch_size"]),
                         cache=self._valid_cache)
        summary = table.summary()
        return {"dice": summary["dice_median"], "tre_mm": summary["tre_mm_median"],
                **table.label_means()}

    def pictures(self) -> dict[str, np.ndarray]:
        """The first case's gland (label 0), middle slice: fixed | moving | warped."""
        paired = self.paired
        batch = next(make_eval_batches(paired, 1, normalise=self.normalise,
                                       label_index=0 if paired.has_labels else None,
                                       cache=getattr(self, "cache", None)))
        out = register_pair(self.ddf_function(), batch["moving_image"], batch["fixed_image"],
                            batch.get("moving_label"))
        fixed_shape = paired.fixed_shape
        moving_resized = ops.resize(batch["moving_image"], fixed_shape).numpy()[0, ..., 0]
        labels = {}
        if paired.has_labels:
            labels = {
                "fixed_label": batch["fixed_label"][0, ..., 0],
                "moving_label": ops.resize(batch["moving_label"], fixed_shape).numpy()[0, ..., 0],
                "warped_label": out["warped_label"].numpy()[0, ..., 0],
            }
        picture = middle_slice_panel(batch["fixed_image"][0, ..., 0], moving_resized,
                                     out["warped_moving_image"].numpy()[0, ..., 0], **labels)
        return {"middle_slice/fixed_moving_warped": picture}

    # -- inference and export -------------------------------------------------------------------

    def infer(self, overwrite: bool = False) -> list[str]:
        from labelreg.infer import infer

        self._ensure_demo_data()
        result = infer(self.cfg, log=self.log, overwrite=overwrite)
        lines = [f"wrote {len(result.cases)} registered pair(s) to {result.dir_save}"]
        if result.rows:
            lines.append(
                f"gland (label 0) Dice: before {result.mean('dice_before'):.3f}, "
                f"after {result.mean('dice'):.3f}; centroid distance: before "
                f"{result.mean('centroid_distance_mm_before'):.2f} mm, after "
                f"{result.mean('centroid_distance_mm'):.2f} mm")
        if result.failed:
            names = ", ".join(pair.case for pair in result.failed[:5])
            more = ", ..." if len(result.failed) > 5 else ""
            raise PartialFailure(f"{len(result.failed)} pair(s) failed ({names}{more}); see "
                                 f"{result.dir_save / 'failed.csv'}", lines)
        return lines

    def checkpoint_for_export(self) -> tuple[Any, dict[str, Any]]:
        inference = self.cfg["Inference"]
        return inference["file_model_saved"], {
            "label_interpolation": inference["label_interpolation"]}

    @classmethod
    def serving_endpoints(
        cls, models: Mapping[str, keras.Model], meta: Mapping[str, Any],
        label_interpolation: str = "linear", **options: Any,
    ) -> dict[str, Endpoint]:
        from labelreg.export.registration import ServingFunctions

        for key in ("moving_shape", "fixed_shape"):
            if key not in meta:
                raise DataError(
                    f"model.json: the meta entry {key!r} is missing; export needs the shapes the "
                    "network was trained on (written by training.py)."
                )
        functions = ServingFunctions(models["model"], meta["moving_shape"], meta["fixed_shape"],
                                     normalise=bool(meta.get("normalise", True)),
                                     label_interpolation=label_interpolation, **options)
        return functions.endpoints()


def _build_on_zeros(model: keras.Model, moving_shape, fixed_shape) -> None:
    model([tf.zeros([1, *moving_shape, 1]), tf.zeros([1, *fixed_shape, 1])], training=False)
