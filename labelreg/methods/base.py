"""The protocol every registration method implements, so that one trainer, one inference command
and one exporter serve them all.

A method is a class with a name and a TF-free config loader (registered in
:mod:`labelreg.methods.registry`), built from a validated :class:`~labelreg.config.Config`:

=======================  ======================================================================
``load_config``          parse and validate the INI (no TensorFlow import), classmethod
``prepare_data``         read and check the training data (before any run folder is made)
``build``                the Keras models, weights created, as ``{key: model}``
``train_dataset``        a ``tf.data.Dataset`` of batches (dicts), a pure function of
                         ``(seed, step)`` so that a resumed run repeats an uninterrupted one
``loss_terms``           ``batch -> {"loss": [B] or scalar, other monitored terms}``; the
                         trainer takes the gradient of ``loss`` and reduces the rest
``schedule_restarts``    steps where the objective changes: the learning-rate schedule
                         starts again there (default: none)
``phase_loss_terms``     the ``loss_terms`` of each of those phases (default: ``loss_terms``)
``preprocess``           per-batch work outside the gradient tape (augmentation)
``callbacks``            the method's own training callbacks (default: none)
``before_save``          work before each checkpoint (e.g. BatchNorm recalibration)
``validate``             ``{name: float}`` at each checkpoint
``pictures``             ``{tag: [H, W, 3] in [0, 1]}`` for TensorBoard at each checkpoint
``meta``                 JSON-able facts stored in ``model.json`` (image shapes...)
``rebuild``              models from ``model.json`` without the data, classmethod
``infer``                inference on the configured folder; returns summary lines
``checkpoint_for_export``the checkpoint an export of this config starts from, and its options
``serving_endpoints``    the SavedModel signatures of trained models, classmethod
=======================  ======================================================================

Methods import the layers below them (ops, losses, networks, data, engine pieces) and never each
other; shared building blocks live in base modules such as :mod:`labelreg.methods.pairwise`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from labelreg.config import Config

if TYPE_CHECKING:  # pragma: no cover - typing only; TensorFlow is imported by the subclasses
    import keras
    import numpy as np
    import tensorflow as tf

__all__ = ["Method", "Endpoint"]

#: ``(function, input_signature)`` of one SavedModel signature.
Endpoint = tuple[Callable[..., Any], list[Any]]


class Method:
    """Base class of a registration method; see the module docstring for the protocol.

    Args:
        cfg: the method's validated settings (from :meth:`load_config`).
        log: where progress lines go.

    Attributes:
        models: ``{key: keras.Model}`` once :meth:`build` (or the trainer) has run.
    """

    #: The name in ``[Method] name = ...`` and in ``model.json``.
    name: ClassVar[str] = ""
    #: Name of the checkpoint files when ``[Train] file_model_save`` does not give one.
    checkpoint_name: ClassVar[str] = "model.ckpt"
    #: The model another method borrows as a feature network (``[Loss] feature_extractor``).
    feature_network_key: ClassVar[str] = "model"

    def __init__(self, cfg: Config, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.log = log
        self.models: dict[str, keras.Model] = {}

    # -- configuration --------------------------------------------------------------------------

    #: ``"module:function"`` of the method's TF-free config loader, ``(path, overrides) ->
    #: Config`` (or override :meth:`load_config`).
    config_loader: ClassVar[str] = ""

    @classmethod
    def load_config(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
        """Parse and validate an INI file for this method without importing TensorFlow."""
        if not cls.config_loader:
            raise NotImplementedError(f"{cls.__name__} must set config_loader or implement "
                                      "load_config")
        from labelreg.registry import import_target

        return import_target(cls.config_loader)(path, overrides)

    # -- training -------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Read and check the training data; raise :class:`~labelreg.DataError` on a problem.
        Called before the run folder is created, so bad data leave nothing behind."""

    def describe_data(self) -> str:
        """A few words for the first log line, e.g. ``"16 pairs"``."""
        return "the configured data"

    def case_names(self, indices: Sequence[int]) -> list[str]:
        """Names of training cases by their ``case_index`` in a batch, for log lines (e.g. the
        cases of a batch whose loss was not finite)."""
        return [f"case {int(i)}" for i in indices]

    def build(self) -> dict[str, keras.Model]:
        """Create the models (weights built) and return them as ``{key: model}``. The trainer
        calls it inside its ``tf.distribute`` scope and stores the result in :attr:`models`."""
        raise NotImplementedError(f"{type(self).__name__} must implement build")

    def trained_models(self) -> tuple[str, ...]:
        """Keys of the models that get an optimiser (default: every model)."""
        return tuple(self.models)

    def learning_rates(self) -> dict[str, float]:
        """Learning rates of particular models' optimisers (default: ``[Train] learning_rate``
        for every model)."""
        return {}

    def schedule_restarts(self) -> tuple[int, ...]:
        """Steps at which the training objective changes (e.g. a first phase that trains a
        part of the model alone). The learning-rate schedule starts again at each, and
        ``[Train] keep_best`` only keeps checkpoints after the last, which are trained on the
        final objective (default: none)."""
        return ()

    def phase_loss_terms(self, phase: int) -> Callable[[dict[str, tf.Tensor]],
                                                       dict[str, tf.Tensor]]:
        """The objective of phase ``phase``: 0 up to the first of :meth:`schedule_restarts`,
        1 up to the second... The trainer compiles one step per phase (default:
        :meth:`loss_terms` in every phase)."""
        return self.loss_terms

    def custom_train_step(self, optimizers: Mapping[str, Any]
                          ) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None:
        """A method whose step is more than one gradient step (e.g. an inner optimisation per
        batch) returns its own compiled ``step(batch) -> {term: scalar}`` here, using the
        trainer's ``optimizers`` (by model key); ``None`` (the default) uses the shared step."""
        return None

    def callbacks(self) -> list[Any]:
        """The method's own training callbacks (:class:`labelreg.engine.callbacks.Callback`),
        run after the engine's at each hook; none by default."""
        return []

    def train_dataset(self, seed: int, start_step: int, total_steps: int) -> tf.data.Dataset:
        """Batches for steps ``start_step + 1 ..``; a pure function of ``(seed, step)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement train_dataset")

    def preprocess(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Per-batch work before the forward pass, outside the gradient tape."""
        return batch

    def loss_terms(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The training objective of one batch: ``{"loss": [B] (or a scalar for a loss over
        the whole batch), other monitored terms [B] or scalars}``, in training mode."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss_terms")

    def before_save(self) -> None:
        """Work before a checkpoint is written (e.g. re-estimating BatchNorm statistics)."""

    def validate(self) -> dict[str, float]:
        """Validation figures at a checkpoint (empty when there is no validation data)."""
        return {}

    def pictures(self) -> dict[str, np.ndarray]:
        """TensorBoard pictures at a checkpoint, ``{tag: [H, W, 3] float in [0, 1]}``."""
        return {}

    def meta(self) -> dict[str, Any]:
        """JSON-able facts stored in ``model.json`` beside the networks' configs."""
        return {}

    # -- trained models -------------------------------------------------------------------------

    @classmethod
    def rebuild(cls, description: Mapping[str, Any]) -> dict[str, keras.Model]:
        """The untrained models of a run, weights built, from :func:`load_model_description`'s
        result (restore them with :func:`labelreg.engine.checkpoints.restore_checkpoint`)."""
        import keras

        return {key: keras.saving.deserialize_keras_object(config)
                for key, config in description["models"].items()}

    def infer(self, overwrite: bool = False) -> list[str]:
        """Run inference as the config says; return lines summarising what was done.

        Args:
            overwrite: redo outputs an earlier run already completed (``inference.py
                --overwrite``); a method that always rewrites everything ignores it.

        Raises:
            PartialFailure: some items failed and the others were written (exit code 1).
        """
        raise NotImplementedError(f"{type(self).__name__} has no inference")

    def checkpoint_for_export(self) -> tuple[str | os.PathLike, dict[str, Any]]:
        """The checkpoint (or run folder) an export of this config starts from, and the options
        passed to :meth:`serving_endpoints`."""
        return self.cfg["Train"]["dir_run"], {}

    @classmethod
    def serving_endpoints(
        cls, models: Mapping[str, keras.Model], meta: Mapping[str, Any], **options: Any
    ) -> dict[str, Endpoint]:
        """The SavedModel signatures of trained models: ``{signature name: (function,
        input_signature)}``; the first is also ``serving_default`` unless one is named so."""
        raise NotImplementedError(f"{cls.__name__} has no export")

    @classmethod
    def export_meta(cls, models: Mapping[str, keras.Model], **options: Any) -> dict[str, Any]:
        """Facts about the signatures recorded in the exported ``model.json`` meta."""
        return {}
