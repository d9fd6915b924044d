"""Restoring a training run of any method: its networks rebuilt from ``model.json`` by the
method the run names (looked up in the method registry) and their weights restored from the
checkpoint. Used by inference, export and evaluation, and by a method that borrows another run's
network (DeepSim's feature extractor)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from labelreg.engine.checkpoints import (
    load_model_description,
    resolve_checkpoint,
    restore_checkpoint,
)
from labelreg.methods.registry import get_method

__all__ = ["TrainedRun", "load_trained_run"]


@dataclass
class TrainedRun:
    """A training run restored for inference or export (see :func:`load_trained_run`)."""

    method: type
    models: dict[str, keras.Model]
    meta: dict[str, Any]
    prefix: str
    run_dir: Path
    description: dict[str, Any]


def load_trained_run(path: str | os.PathLike) -> TrainedRun:
    """Rebuild the networks of a training run of any method and restore their weights.

    Args:
        path: anything :func:`labelreg.engine.checkpoints.resolve_checkpoint` accepts (a
            checkpoint prefix, a checkpoints folder or a run folder).

    Raises:
        DataError: no checkpoint or model description, or weights that do not fit.
        ConfigError: a run of a method that is not registered.
    """
    prefix, run_dir = resolve_checkpoint(path)
    description = load_model_description(run_dir)
    method = get_method(description["method"])
    models = method.rebuild(description)
    # The optimizers and step of the training checkpoint are not needed here; every model
    # weight is.
    restore_checkpoint(models, prefix, partial=True)
    return TrainedRun(method, models, dict(description["meta"]), prefix, run_dir, description)
