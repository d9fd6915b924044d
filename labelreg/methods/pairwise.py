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
from labelreg.errors import DataError
from labelreg.losses.label import centroid_distance_loss
from labelreg.losses.terms import ModelObjective, Monitor, Phase, Term, batch_keys, evaluate
from labelreg.methods.base import Endpoint, Method
from labelreg.methods.runs import load_trained_run
from labelreg.methods.sources import PairSource, source_for
from labelreg.networks.apply import network_ddf, register_pair
from labelreg.networks.registry import NETWORKS, build_network
from labelreg.ops.jit import xla_disabled

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
            + the terms the network contributes (its ``training_objective``)

    whose weights and losses a subclass sets in :meth:`build` (a weight of 0 or a loss of
    ``None`` drops the term; labels, when present, are always monitored with Dice and centroid
    distance). The objective is a list of :class:`~labelreg.losses.terms.Term` objects; see
    :meth:`objective`.
    """

    label_loss: Callable[..., tf.Tensor] | None = None
    label_weight: float = 0.0
    centroid_weight: float = 0.0
    image_loss: Callable[..., tf.Tensor] | None = None
    image_weight: float = 0.0
    regulariser: Callable[..., tf.Tensor] | None = None
    regulariser_weight: float = 0.0

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
        needs = batch_keys(self.objective()[0])
        return self.source.train_dataset(
            seed, start_step, total_steps,
            segmentation_labels=bool(needs & {"moving_seg_label", "fixed_seg_label"}))

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return self.source.preprocess(batch)

    # -- model ----------------------------------------------------------------------------------

    def network_arguments(self) -> dict[str, Any]:
        """Constructor arguments of the ``[Network]`` network beyond ``ndim``/``fixed_shape``:
        the keys set away from their defaults (so each network keeps its own defaults, and a
        key the chosen network does not take is reported by the registry), the options the
        network declares (``NETWORKS.options``) under their argument names."""
        net, schema = self.cfg["Network"], self.cfg.schema["Network"]
        options = NETWORKS.options(net["network_type"]) if net["network_type"] in NETWORKS \
            else None
        renamed = dict(options.arguments) if options is not None else {}
        kwargs: dict[str, Any] = {}
        if net["num_channel_initial"] > 0:
            kwargs["num_channel_initial"] = net["num_channel_initial"]
        for name, value in net.items():
            if name not in ("network_type", "num_channel_initial") and \
                    value != schema[name].default:
                kwargs[renamed.get(name, name)] = value
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

    # -- objective ------------------------------------------------------------------------------

    def objective(self) -> tuple[list[Term], list[Monitor], list[Phase]]:
        """The terms, monitors and phases of the training objective (made once, after
        :meth:`build`): the network's own terms first (``training_objective``, e.g.
        CentroidAlignNet's segmentation Dice), then the label, centroid, regulariser and image
        terms this method's settings weight, and the label figures as monitors."""
        if getattr(self, "_objective", None) is None:
            model = self.models["model"]
            contribution = (model.training_objective(self.cfg["Loss"])
                            if hasattr(model, "training_objective") else ModelObjective())
            self._objective = ([*contribution.terms, *self.registration_terms()],
                               [Monitor(_label_figures)], list(contribution.phases))
        return self._objective

    def registration_terms(self) -> list[Term]:
        """The terms of the registration: each set in :meth:`build` with a weight > 0."""
        terms = []
        if self.label_loss is not None and self.label_weight > 0:
            label_loss = self.label_loss
            terms.append(Term("label_loss", self.label_weight, lambda batch, out: label_loss(
                batch["fixed_label"], out["warped_label"]) if "warped_label" in out else None))
        if self.centroid_weight > 0:
            terms.append(Term("centroid_loss_mm", self.centroid_weight, _centroid_term))
        if self.regulariser is not None and self.regulariser_weight > 0:
            regulariser = self.regulariser
            terms.append(Term("regulariser", self.regulariser_weight,
                              lambda batch, out: regulariser(out["ddf"]) if "ddf" in out
                              else None))
        if self.image_loss is not None and self.image_weight > 0:
            image_loss = self.image_loss
            terms.append(Term("image_loss", self.image_weight, lambda batch, out: image_loss(
                batch["fixed_image"], out["warped_moving_image"])
                if "warped_moving_image" in out else None))
        return terms

    def schedule_restarts(self) -> tuple[int, ...]:
        return tuple(phase.start for phase in self.objective()[2][1:])

    def phase_loss_terms(self, phase: int) -> Callable[[dict[str, tf.Tensor]],
                                                       dict[str, tf.Tensor]]:
        if phase == len(self.objective()[2]) - 1:
            return self.loss_terms
        return functools.partial(self._phase_terms, phase=phase)

    def loss_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The loss and monitored terms of one batch, per sample ``[B]``, in the objective's
        last phase (see :meth:`objective`)."""
        return self._phase_terms(batch, len(self.objective()[2]) - 1)

    def _phase_terms(self, batch: dict[str, tf.Tensor], phase: int) -> dict[str, tf.Tensor]:
        terms, monitors, phases = self.objective()
        forward = phases[phase].forward
        if forward is None:
            ddf_fn = self.ddf_function(training=True)
            outputs: dict[str, tf.Tensor] = {}
        else:
            outputs = dict(forward(batch))
            ddf_fn = lambda moving, fixed: outputs["ddf"]  # noqa: E731 - the DDF just computed
        if forward is None or "ddf" in outputs:
            use_image = any(t.name == "image_loss" and t.active(phase) for t in terms)
            outputs.update(register_pair(ddf_fn, batch["moving_image"], batch["fixed_image"],
                                         batch.get("moving_label"), warp_image=use_image))
        return evaluate(terms, monitors, batch, outputs, phase)

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
    # Only the variables are wanted: without XLA the warps of this one eager call (GraDIRN's
    # inner gradients, a composite's stages) run as plain operations instead of compiling
    # kernels for shapes the training graph compiles again anyway (4 s of GraDIRN's build).
    with xla_disabled():
        model([tf.zeros([1, *moving_shape, 1]), tf.zeros([1, *fixed_shape, 1])], training=False)


def _centroid_term(batch: Mapping[str, Any], out: Mapping[str, tf.Tensor]) -> tf.Tensor | None:
    """The soft centroid distance (mm) of a single sampled label, ``[B]``."""
    if "warped_label" not in out or out["warped_label"].shape[-1] != 1:
        return None
    return centroid_distance_loss(batch["fixed_label"], out["warped_label"],
                                  spacing=batch["spacing"])


def _label_figures(batch: Mapping[str, Any], out: Mapping[str, tf.Tensor]
                   ) -> dict[str, tf.Tensor]:
    """The label figures logged beside the loss, per sample: ``dice`` and
    ``centroid_distance_mm`` of a sampled label, and with ``label_index`` the gland's Dice
    (label 0) and the landmarks' centroid distance (labels 1..) each over the pairs that
    sampled it (NaN elsewhere; the logged means skip NaN), as validation reports them; the mean
    per-class Dice of one-hot classes."""
    if "warped_label" not in out:
        return {}
    fixed, warped = batch["fixed_label"], out["warped_label"]
    if warped.shape[-1] != 1:
        return {"dice": tf.reduce_mean(metrics.dice_per_class(fixed, warped), axis=-1)}
    figures = {"dice": metrics.dice(fixed, warped),
               "centroid_distance_mm": metrics.centroid_distance(fixed, warped,
                                                                 spacing=batch["spacing"])}
    if "label_index" in batch:
        gland = tf.equal(batch["label_index"], 0)
        nan = tf.fill(tf.shape(figures["dice"]), float("nan"))
        figures["dice_gland"] = tf.where(gland, figures["dice"], nan)
        figures["tre_mm"] = tf.where(gland, nan, figures["centroid_distance_mm"])
    return figures

