"""The INI sections every method shares: ``[Method]`` and ``[Train]`` (read by the one trainer),
the run paths derived from them, and the part of every method's loader that they make common."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelreg.config.components import Selector, parse_with_components
from labelreg.config.engine import Config, Key, Schema, fail

__all__ = ["method_section", "train_section", "derive_run_paths", "parse_method", "check_train"]


def method_section(name: str) -> dict[str, Key]:
    """The ``[Method]`` section of a method's schema: ``name`` may only be the method's own
    (the method registry has chosen the schema by it)."""
    return {"name": Key("str", name, "The method this file configures (see docs/methods).",
                        choices=(name,))}


_TRAIN_DOCS = {
    "total_iterations": "Number of training steps.",
    "minibatch_size": "Training samples (image pairs) per step.",
    "learning_rate": "Learning rate of the optimiser (> 0); the peak rate under a schedule.",
    "lr_schedule": "How the learning rate changes with the step: constant, or cosine (decays "
                   "from learning_rate after the warm-up to 0 at total_iterations, Keras's "
                   "CosineDecay).",
    "warmup_steps": "Steps over which the learning rate rises linearly from 0 to learning_rate "
                    "before the schedule; 0 = none. Must be below total_iterations.",
    "optimizer": "Optimiser of every trained network (one optimiser per network).",
    "momentum": "Momentum of the sgd optimiser (unused by adam).",
    "weight_decay": "Weight decay added to the gradients after clipping, g + wd * w (PyTorch's "
                    "SGD convention); 0 = none.",
    "clip_norm": "Clip each network's gradients to this global norm; 0 = no clipping.",
    "freq_info_print": "Print progress and write TensorBoard scalars every this many steps.",
    "freq_model_save": "Save a checkpoint (and validate) every this many steps, and at the end.",
    "file_model_save": "Checkpoint file prefix; its folder is the run folder unless dir_run is "
                       "set; unset = <dir_run>/<the method's checkpoint name, e.g. model.ckpt>, "
                       "with dir_run unset too: runs/ beside the INI file.",
    "seed": "Seed of sampling, augmentation and initialisation.",
    "deterministic": "Enable TensorFlow op determinism (bitwise-repeatable CPU runs, slower).",
    "dir_run": "Run folder (checkpoints, resolved config, model.json); unset = the folder of "
               "file_model_save.",
    "resume": "Continue from the latest checkpoint in dir_run.",
    "dir_tensorboard": "TensorBoard logs; unset = <dir_run>/tensorboard.",
    "max_checkpoints_to_keep": "Checkpoints kept in dir_run.",
    "validate": "Validate at every checkpoint when the method has validation data.",
    "max_nonfinite_steps": "A step whose loss or gradients are NaN/inf is not applied and is "
                           "logged with its cases; the run stops after this many consecutive "
                           "such steps (the last good checkpoint is kept).",
    "strategy": "tf.distribute strategy: default (one device, or mirrored over several GPUs), "
                "mirrored (every local GPU, or every logical CPU device), multi_worker "
                "(MultiWorkerMirroredStrategy across machines, configured by TF_CONFIG; see "
                "docs/distributed.md).",
    "precision": "Arithmetic of the networks: float32, or mixed_bfloat16 (bfloat16 convolutions "
                 "with float32 weights; losses, the DDF and the warp stay float32).",
    "keep_best": "Also keep the checkpoint with the best validation figure in <dir_run>/best "
                 "(dice: highest median gland Dice; tre: lowest median landmark TRE); none = "
                 "only the latest checkpoints.",
    "gradient_checkpointing": "Recompute each network block's activations in the backward pass "
                              "instead of keeping them (less memory for large volumes, more "
                              "time).",
}


def train_section(**defaults: Any) -> dict[str, Key]:
    """The ``[Train]`` keys of every method, read by the one trainer (:mod:`labelreg.engine`).

    The key names are label-reg's. A method passes its own defaults, e.g.
    ``train_section(optimizer="sgd", learning_rate=1e-2)``.

    Raises:
        ValueError: for a default given for a key that does not exist.
    """
    keys = {
        "total_iterations": Key("int", 100000, _TRAIN_DOCS["total_iterations"], min=1),
        "minibatch_size": Key("int", 2, _TRAIN_DOCS["minibatch_size"], min=1),
        "learning_rate": Key("float", 1e-5, _TRAIN_DOCS["learning_rate"], min=0.0),
        "lr_schedule": Key("str", "constant", _TRAIN_DOCS["lr_schedule"],
                           choices=("constant", "cosine")),
        "warmup_steps": Key("int", 0, _TRAIN_DOCS["warmup_steps"], min=0),
        "optimizer": Key("str", "adam", _TRAIN_DOCS["optimizer"], choices=("adam", "sgd")),
        "momentum": Key("float", 0.9, _TRAIN_DOCS["momentum"], min=0.0, max=1.0),
        "weight_decay": Key("float", 0.0, _TRAIN_DOCS["weight_decay"], min=0.0),
        "clip_norm": Key("float", 0.0, _TRAIN_DOCS["clip_norm"], min=0.0),
        "freq_info_print": Key("int", 100, _TRAIN_DOCS["freq_info_print"], min=1),
        "freq_model_save": Key("int", 500, _TRAIN_DOCS["freq_model_save"], min=1),
        "file_model_save": Key("path", None, _TRAIN_DOCS["file_model_save"]),
        "seed": Key("int", 0, _TRAIN_DOCS["seed"], min=0),
        "deterministic": Key("bool", False, _TRAIN_DOCS["deterministic"]),
        "dir_run": Key("path", None, _TRAIN_DOCS["dir_run"]),
        "resume": Key("bool", True, _TRAIN_DOCS["resume"]),
        "dir_tensorboard": Key("path", None, _TRAIN_DOCS["dir_tensorboard"]),
        "max_checkpoints_to_keep": Key("int", 3, _TRAIN_DOCS["max_checkpoints_to_keep"], min=1),
        "validate": Key("bool", True, _TRAIN_DOCS["validate"]),
        "max_nonfinite_steps": Key("int", 10, _TRAIN_DOCS["max_nonfinite_steps"], min=1),
        "strategy": Key("str", "default", _TRAIN_DOCS["strategy"],
                        choices=("default", "mirrored", "multi_worker")),
        "precision": Key("str", "float32", _TRAIN_DOCS["precision"],
                         choices=("float32", "mixed_bfloat16")),
        "gradient_checkpointing": Key("bool", False, _TRAIN_DOCS["gradient_checkpointing"]),
        "keep_best": Key("str", "none", _TRAIN_DOCS["keep_best"], choices=("none", "dice", "tre")),
    }
    for name, value in defaults.items():
        if name not in keys:
            raise ValueError(f"train_section: no [Train] key {name!r}; keys: {', '.join(keys)}.")
        keys[name] = dataclasses.replace(keys[name], default=value)
    return keys


def derive_run_paths(cfg: Config, checkpoint_name: str = "model.ckpt") -> None:
    """Fill the unset run paths of ``[Train]``; every method's ``load`` calls it.

    ``file_model_save`` becomes ``<dir_run>/<checkpoint_name>`` (``dir_run`` unset too:
    ``runs/`` beside the INI file, label-reg's ``runs/model.ckpt``), ``dir_run`` the folder of
    ``file_model_save`` and ``dir_tensorboard`` ``<dir_run>/tensorboard``; where the schema has
    them, ``[Inference] file_model_saved`` becomes ``file_model_save`` and ``[Inference]
    dir_save`` ``<dir_run>/inference``.
    """
    train = cfg["Train"]
    if train["file_model_save"] is None:
        run = train["dir_run"] if train["dir_run"] is not None else cfg.path.parent / "runs"
        cfg._replace("Train", "file_model_save", Path(run) / checkpoint_name)
    if train["dir_run"] is None:
        cfg._replace("Train", "dir_run", Path(train["file_model_save"]).parent)
    if train["dir_tensorboard"] is None:
        cfg._replace("Train", "dir_tensorboard", Path(cfg["Train"]["dir_run"]) / "tensorboard")
    inference = cfg.schema.get("Inference", {})
    if "file_model_saved" in inference and cfg["Inference"]["file_model_saved"] is None:
        cfg._replace("Inference", "file_model_saved", cfg["Train"]["file_model_save"])
    if "dir_save" in inference and cfg["Inference"]["dir_save"] is None:
        cfg._replace("Inference", "dir_save", Path(cfg["Train"]["dir_run"]) / "inference")


def parse_method(
    path: str | os.PathLike,
    schema: Schema,
    overrides: Sequence[str] = (),
    renamed: Mapping[tuple[str, str], str] | None = None,
    checkpoint_name: str = "model.ckpt",
    selectors: Sequence[Selector] = (),
) -> Config:
    """:func:`~labelreg.config.engine.parse` a method's INI file (with the options of the
    components its ``selectors`` pick, :func:`~labelreg.config.components.parse_with_components`),
    then :func:`derive_run_paths` and :func:`check_train`: the part of every method's loader
    that the methods share.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    cfg = parse_with_components(path, schema, selectors, overrides, renamed=renamed)
    derive_run_paths(cfg, checkpoint_name)
    check_train(cfg)
    return cfg


def check_train(cfg: Config) -> None:
    """Checks of ``[Train]`` that every method shares."""
    if cfg["Train"]["learning_rate"] <= 0:
        raise fail(cfg, "Train", "learning_rate", "expected a number > 0.")
    if cfg["Train"]["warmup_steps"] >= cfg["Train"]["total_iterations"]:
        raise fail(cfg, "Train", "warmup_steps", "expected fewer steps than [Train] "
                   f"total_iterations ({cfg['Train']['total_iterations']}).")
    if cfg["Train"]["keep_best"] != "none" and not cfg["Train"]["validate"]:
        raise fail(cfg, "Train", "keep_best", "needs [Train] validate = true (the best "
                   "checkpoint is chosen on the validation figures).")
