"""Checkpoints of a training run and the model description stored beside them.

A run folder holds ``checkpoints/`` (``tf.train.CheckpointManager``: model, optimizer, step),
``model.json`` (the network's Keras config, so inference and export rebuild the network without
the training data) and ``config.ini`` (the resolved settings of the run).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.errors import DataError

__all__ = [
    "CHECKPOINT_SUBDIR",
    "MODEL_FILE",
    "atomic_write_text",
    "save_model_description",
    "load_model_description",
    "rebuild_model",
    "resolve_checkpoint",
    "model_variables",
    "make_checkpoint",
    "prepare_run_dir",
]

CHECKPOINT_SUBDIR = "checkpoints"
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
    ckpt_dir = run_dir / CHECKPOINT_SUBDIR
    if fresh and ckpt_dir.exists():
        aside = run_dir / f"{CHECKPOINT_SUBDIR}.{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(ckpt_dir), str(aside))
        log(f"starting fresh: previous checkpoints moved to {aside}")
    return run_dir


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see
    a half-written file and an interrupted write leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def make_checkpoint(model: keras.Model, **others: Any) -> tf.train.Checkpoint:
    """A ``tf.train.Checkpoint`` holding the model's weights (see :func:`model_variables`) under
    ``model`` and any other trackables (optimizer, step counter...) under their keyword."""
    return tf.train.Checkpoint(model=model_variables(model), **others)


def save_model_description(model: keras.Model, run_dir: str | os.PathLike, **extra: Any) -> Path:
    """Store the network's serialised config (``keras.saving.serialize_keras_object``) as JSON.

    ``extra`` entries (e.g. the moving and fixed shapes the network was trained on) are stored
    alongside under ``"meta"``.
    """
    description = {"model": keras.saving.serialize_keras_object(model), "meta": extra}
    return atomic_write_text(Path(run_dir) / MODEL_FILE, json.dumps(description, indent=2) + "\n")


def load_model_description(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``model.json`` of a run folder.

    Raises:
        DataError: when the file is missing or not valid JSON.
    """
    path = Path(run_dir) / MODEL_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError(
            f"{path}: missing; expected the model description written by training.py next to "
            "the checkpoints."
        ) from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err}).") from err


def rebuild_model(description: dict[str, Any]) -> keras.Model:
    """Recreate the (untrained) network from :func:`load_model_description`'s result and build
    its weights with one call on zeros of the stored shapes (restore them with
    ``make_checkpoint(model).restore(prefix)``)."""
    import labelreg.networks  # noqa: F401  (registers the classes for deserialisation)

    model = keras.saving.deserialize_keras_object(description["model"])
    meta = description.get("meta", {})
    if "moving_shape" in meta and "fixed_shape" in meta:
        moving = tf.zeros([1, *meta["moving_shape"], 1])
        fixed = tf.zeros([1, *meta["fixed_shape"], 1])
        model([moving, fixed], training=False)
    return model


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, Path]:
    """Find the checkpoint a user meant, and its run folder.

    Accepts a checkpoint prefix as ``training.py`` writes it (``<run>/checkpoints/model.ckpt-500``),
    label-reg's ``file_model_save`` prefix (``<run>/model.ckpt``: the latest checkpoint of
    ``<run>/checkpoints/`` is used), a checkpoints folder, or a run folder.

    Returns:
        ``(checkpoint_prefix, run_dir)``.

    Raises:
        DataError: when no checkpoint is found there.
    """
    path = Path(path)
    candidates: list[tuple[Path, Path]] = []
    if Path(f"{path}.index").exists():
        run = path.parent.parent if path.parent.name == CHECKPOINT_SUBDIR else path.parent
        return str(path), run
    for folder, run in (
        (path.parent / CHECKPOINT_SUBDIR, path.parent),
        (path / CHECKPOINT_SUBDIR, path),
        (path, path.parent),
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
