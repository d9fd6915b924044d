"""The shared base of methods whose model predicts a DDF from an image pair.

Label-driven registration and the image-driven methods (DeepSim, GraDIRN) train one network
from the networks registry on the pairs of a data source (:mod:`labelreg.methods.sources`:
NIfTI pairs, TIFF stacks), which also validates, draws the TensorBoard picture, gives the
batches that re-estimate BatchNorm statistics before checkpoints and writes the inference
outputs; the export signatures come from :mod:`labelreg.export.registration`. A subclass
supplies its objective, :meth:`loss_terms`, its config loader and, where it reads another
format, :meth:`data_source`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from labelreg import metrics
from labelreg._tf import tf
from labelreg.engine.batchnorm import batch_norm_layers, recalibrate_batch_norm
from labelreg.engine.checkpoints import load_trained_run
from labelreg.errors import DataError
from labelreg.losses.label import centroid_distance_loss, dice_loss
from labelreg.methods.base import Endpoint, Method
from labelreg.methods.sources import PairSource, source_for
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

    def data_source(self) -> PairSource:
        """The source of this config's data format (:func:`labelreg.methods.sources.source_for`:
        ``[Data] format``, NIfTI pairs without it), chosen once."""
        return source_for(self.cfg, self.log)

    @property
    def source(self) -> PairSource:
        """The method's :class:`~labelreg.methods.sources.PairSource` (made on first use; its
        files are read by :meth:`prepare_data`)."""
        if getattr(self, "_source", None) is None:
            self._source = self.data_source()
        return self._source

    def prepare_data(self) -> None:
        self._ensure_demo_data()
        self.source.prepare()

    def case_names(self, indices: Sequence[int]) -> list[str]:
        return self.source.case_names(indices)

    def describe_data(self) -> str:
        return self.source.describe()

    @property
    def normalise(self) -> bool:
        return self.source.normalise

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        return self.source.train_dataset(seed, start_step,
                                         segmentation_labels=self.segmentation_weight > 0)

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.source.preprocess(batch)

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
        return self.source.moving_shape

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """Spatial shape of the training fixed images."""
        return self.source.fixed_shape

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
        if batch_norm_layers(self.models["model"]):
            self.log(f"re-estimating BatchNorm statistics on up to {RECALIBRATION_BATCHES} "
                     "training batches before the checkpoint")
        recalibrate_batch_norm(self.models["model"],
                               self.source.recalibration_inputs(RECALIBRATION_BATCHES))

    def validate(self) -> dict[str, float]:
        """The data source's validation figures (:meth:`NiftiPairs.validate
        <labelreg.methods.sources.NiftiPairs.validate>`: median gland Dice and landmark TRE);
        ``{}`` without validation data."""
        return self.source.validate(self.ddf_function())

    def pictures(self) -> dict[str, np.ndarray]:
        """One registered pair's middle slice, fixed | moving | warped, for TensorBoard."""
        return self.source.pictures(self.ddf_function())

    # -- inference and export -------------------------------------------------------------------

    def infer(self, overwrite: bool = False) -> list[str]:
        """Register the configured test data and write the outputs (one folder per item, the
        contract of :mod:`labelreg.item_outputs`).

        Raises:
            PartialFailure: some items failed, the others were written.
        """
        self._ensure_demo_data()

        def load_models() -> dict[str, keras.Model]:
            return load_trained_run(self.checkpoint_for_export()[0]).models

        return self.source.infer(load_models, overwrite=overwrite)

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
