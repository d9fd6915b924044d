"""The run folder of every method: checkpoints, and the model description stored beside them.

A run folder holds ``checkpoints/`` (``tf.train.CheckpointManager``: every model by weight path,
the optimizers, the step), ``model.json`` (the method's name and its networks' Keras configs,
so inference and export rebuild the networks without the training data) and ``config.ini`` (the
resolved settings of the run).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.errors import DataError
from labelreg.files import atomic_write_text

__all__ = [
    "CHECKPOINT_SUBDIR",
    "BEST_SUBDIR",
    "MODEL_FILE",
    "atomic_write_text",
    "save_model_description",
    "save_run",
    "load_model_description",
    "resolve_checkpoint",
    "model_variables",
    "make_checkpoint",
    "restore_checkpoint",
    "restore_latest",
    "UnreadableCheckpoint",
    "prepare_run_dir",
]

CHECKPOINT_SUBDIR = "checkpoints"
#: Where ``[Train] keep_best`` keeps the checkpoint with the best validation figure.
BEST_SUBDIR = "best"
MODEL_FILE = "model.json"


def prepare_run_dir(run_dir: str | os.PathLike, fresh: bool, log: Callable[[str], None],
                    setting: str = "[Train] dir_run") -> Path:
    """Create a run folder (checking it is writable) and, for a fresh start, set its old
    checkpoints aside: starting over never deletes a previous run's checkpoints.

    Args:
        run_dir: the folder.
        fresh: move an existing ``checkpoints/`` to ``checkpoints.<timestamp>``.
        log: where to say so.
        setting: the config key that named the folder, for the error message.

    Raises:
        DataError: when the folder cannot be created or written.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise DataError(f"{run_dir}: cannot write the run folder ({setting}): {err}") from err
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for subdir in (CHECKPOINT_SUBDIR, BEST_SUBDIR):
        folder = run_dir / subdir
        if fresh and folder.exists():
            aside = run_dir / f"{subdir}.{stamp}"
            shutil.move(str(folder), str(aside))
            log(f"starting fresh: previous {subdir} moved to {aside}")
    return run_dir


def model_variables(model: keras.Model) -> dict[str, Any]:
    """Every weight of a built Keras model, keyed by its path below the model.

    ``tf.train.Checkpoint(model=keras_model)`` does not see Keras 3 layers that a model keeps in
    lists or dicts, so checkpoints name the variables explicitly. The model's own name is left
    out of the keys because Keras numbers it per process (``local_net_1``...), which would make a
    checkpoint unreadable by a second model built in the same process.

    Raises:
        ValueError: when the model is not built or two weights share a path.
    """
    if not model.weights:
        raise ValueError(f"model {model.name!r} has no weights yet; call it once to build it.")
    items: dict[str, Any] = {}
    for variable in model.weights:
        key = variable.path.split("/", 1)[-1]
        if key in items:
            raise ValueError(f"model {model.name!r} has two weights with the path {key!r}.")
        items[key] = variable
    return items


def _as_models(models: keras.Model | Mapping[str, keras.Model]) -> dict[str, keras.Model]:
    return {"model": models} if isinstance(models, keras.Model) else dict(models)


def make_checkpoint(models: keras.Model | Mapping[str, keras.Model], **others: Any
                    ) -> tf.train.Checkpoint:
    """The one checkpoint layout of every method: each model's weights by path (see
    :func:`model_variables`) under its key (a single model under ``model``), and any other
    trackables (optimizers, the step counter...) under their keyword."""
    objects = {key: model_variables(model) for key, model in _as_models(models).items()}
    return tf.train.Checkpoint(**objects, **others)


def restore_checkpoint(
    models: keras.Model | Mapping[str, keras.Model], prefix: str, partial: bool = False,
    **others: Any,
) -> str:
    """Load a checkpoint into ``models`` (and ``others``), checking that every object matched.

    Checkpoints written before every method shared the trainer stored CoMIR's networks as Keras
    object graphs instead of by path; those are still read (``"legacy"`` is returned).

    Args:
        models: the models, keyed as when the checkpoint was written.
        prefix: the checkpoint prefix.
        partial: ``True`` when the checkpoint may hold more than is asked for (inference reads
            only the models of a training checkpoint).
        **others: optimizers, step... restored under their keyword.

    Returns:
        ``"current"`` or ``"legacy"``: the layout that was read.

    Raises:
        DataError: when the checkpoint is unreadable or its variables do not fit the models.
    """
    models = _as_models(models)
    attempts = (("current", make_checkpoint(models, **others)),
                ("legacy", tf.train.Checkpoint(**models, **others)))
    problems = []
    for layout, checkpoint in attempts:
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
            return layout
        except (AssertionError, ValueError) as err:
            problems.append(str(err).splitlines()[0][:300])
        except (tf.errors.OpError, IndexError) as err:  # IndexError: a short read
            message = getattr(err, "message", str(err)).splitlines()[0]
            raise UnreadableCheckpoint(f"{prefix}: cannot read the checkpoint ({message}).") \
                from err
    raise DataError(
        f"{prefix}: the checkpoint does not fit the model(s) {sorted(models)} built from the "
        f"configuration (different network, width or method?): {problems[0]}"
    )


class UnreadableCheckpoint(DataError):
    """A checkpoint's files are damaged or incomplete (e.g. a write was interrupted)."""


def restore_latest(manager: tf.train.CheckpointManager,
                   models: keras.Model | Mapping[str, keras.Model],
                   log: Callable[[str], None], **others: Any) -> str | None:
    """Restore the newest readable checkpoint a ``CheckpointManager`` knows.

    A checkpoint whose files cannot be read (an interrupted write, a truncated file) is skipped
    with a warning naming it, and the previous one is used; one that reads but does not fit the
    models is an error, never skipped.

    Returns:
        The prefix restored, or ``None`` when there is none.

    Raises:
        DataError: when a checkpoint does not fit the models.
    """
    for prefix in reversed(manager.checkpoints):
        try:
            restore_checkpoint(models, prefix, **others)
            return prefix
        except UnreadableCheckpoint as err:
            log(f"warning: skipping a damaged checkpoint: {err}")
    return None


def save_model_description(
    models: keras.Model | Mapping[str, keras.Model], run_dir: str | os.PathLike,
    method: str = "labelreg", **meta: Any,
) -> Path:
    """Store ``model.json``: the method name, every model's serialised config
    (``keras.saving.serialize_keras_object``) and ``meta`` (e.g. the image shapes the networks
    were trained on), so inference and export rebuild the networks without the training data."""
    description = {
        "method": method,
        "models": {key: keras.saving.serialize_keras_object(model)
                   for key, model in _as_models(models).items()},
        "meta": meta,
    }
    return atomic_write_text(Path(run_dir) / MODEL_FILE, json.dumps(description, indent=2) + "\n")


def save_run(models: keras.Model | Mapping[str, keras.Model], run_dir: str | os.PathLike,
             method: str = "labelreg", checkpoint_name: str = "ckpt",
             step: tf.Variable | None = None, **meta: Any) -> str:
    """Save ``models`` as a run folder that inference, export and evaluation read, without
    training: ``model.json`` (:func:`save_model_description`) and one checkpoint in
    ``checkpoints/`` (with ``step`` when given); returns the checkpoint prefix. The trainer
    writes the same layout as it trains."""
    run_dir = Path(run_dir)
    save_model_description(models, run_dir, method=method, **meta)
    others = {} if step is None else {"step": step}
    manager = tf.train.CheckpointManager(make_checkpoint(models, **others),
                                         str(run_dir / CHECKPOINT_SUBDIR), max_to_keep=1,
                                         checkpoint_name=checkpoint_name)
    return manager.save()


def load_model_description(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``model.json`` of a run folder as ``{"method", "models", "meta"}``.

    Descriptions written before the method layer (``{"model": ..., "meta": ...}`` for
    label-driven runs, ``{"model_a": ..., "model_b": ...}`` for CoMIR) are read too.

    Raises:
        DataError: when the file is missing or not valid JSON.
    """
    path = Path(run_dir) / MODEL_FILE
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(
            f"{path}: missing; expected the model description written by training.py next to "
            "the checkpoints."
        ) from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}).") from err
    if not isinstance(description, dict):
        raise DataError(f"{path}: expected a JSON object.")
    if "models" not in description:
        models = {k: v for k, v in description.items() if k.startswith("model")}
        description = {"method": "comir" if "model_a" in models else "labelreg",
                       "models": models, "meta": description.get("meta", {})}
    description.setdefault("meta", {})
    description.setdefault("method", "labelreg")
    return description


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, Path]:
    """Find the checkpoint a user meant, and its run folder.

    Accepts a checkpoint prefix as ``training.py`` writes it (``<run>/checkpoints/model.ckpt-500``),
    label-reg's ``file_model_save`` prefix (``<run>/model.ckpt``: the latest checkpoint of
    ``<run>/checkpoints/`` is used), a checkpoints folder, the best-checkpoint folder
    ``<run>/best`` (``[Train] keep_best``), or a run folder.

    Returns:
        ``(checkpoint_prefix, run_dir)``.

    Raises:
        DataError: when no checkpoint is found there.
    """
    path = Path(path)
    candidates: list[tuple[Path, Path]] = []
    if Path(f"{path}.index").exists():
        in_subdir = path.parent.name in (CHECKPOINT_SUBDIR, BEST_SUBDIR)
        return str(path), path.parent.parent if in_subdir else path.parent
    for folder, run in (
        (path, path.parent),  # a folder of checkpoints: checkpoints/ or best/
        (path / CHECKPOINT_SUBDIR, path),
        (path.parent / CHECKPOINT_SUBDIR, path.parent),
    ):
        candidates.append((folder, run))
        if folder.is_dir():
            latest = tf.train.latest_checkpoint(str(folder))
            if latest:
                return latest, run
    raise DataError(
        f"{path}: no checkpoint found; looked for {path}.index and for the latest checkpoint in "
        + ", ".join(str(folder) for folder, _ in candidates)
        + ". Train first with `python training.py <config.ini>`."
    )
