"""Contrastive training of the two CoMIR networks (``python training.py configs/comir.ini``).

One network per modality. Each step draws ``N`` aligned patch pairs (see
:func:`comir_tf.data.make_patch_dataset`), optionally turns every patch of each modality by its
own random multiple of 90 degrees, runs the networks, turns the outputs back, and minimises

    info_nce(z_a, z_b) + l1_decay * (1 + sum|z|) / numel + l2_decay * (1 + sum z^2) / numel

with one SGD optimiser per network as the paper does: gradients clipped to a global norm per
network, then PyTorch-style weight decay ``g + wd * w`` added, then momentum SGD.

The run folder follows the main pipeline's conventions: ``checkpoints/``
(``tf.train.CheckpointManager`` with both networks, both optimisers and the step; a rerun resumes
from the latest), ``config.ini`` (the resolved settings), ``model.json`` (both networks' Keras
configs) and ``tensorboard/`` (``tf.summary`` scalars and a CoMIR picture).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from comir_tf import synthetic
from comir_tf.contrastive import activation_decay, info_nce_loss
from comir_tf.data import PairSet, centre_crops, load_pairs, make_patch_dataset
from comir_tf.equivariance import rot90
from comir_tf.summaries import EventWriter
from comir_tf.tiramisu import Tiramisu
from labelreg._tf import tf
from labelreg.config import Config
from labelreg.errors import DataError
from labelreg.train.checkpoints import CHECKPOINT_SUBDIR, atomic_write_text, prepare_run_dir
from labelreg.train.loop import TrainResult as LabelregTrainResult
from labelreg.train.summaries import format_line

__all__ = [
    "TrainResult",
    "build_models",
    "make_train_step",
    "ensure_data",
    "read_pairs",
    "restore_models",
    "train",
    "MODEL_FILE",
]

MODEL_FILE = "model.json"


@dataclass
class TrainResult(LabelregTrainResult):
    """What a call to :func:`train` did: the main pipeline's result plus the logged values."""

    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


def build_models(cfg: Config) -> tuple[Tiramisu, Tiramisu]:
    """The two Tiramisus of ``[CoMIR]`` (modality A, modality B), weights created."""
    c = cfg["CoMIR"]
    common = dict(out_channels=c["latent_channels"], init_filters=c["init_filters"],
                  down_blocks=tuple(c["down_blocks"]), up_blocks=tuple(c["up_blocks"]),
                  bottleneck_layers=c["bottleneck_layers"], growth_rate=c["growth_rate"],
                  compression=c["compression"], dropout=c["dropout"])
    model_a = Tiramisu(c["channels_a"], name="comir_a", **common)
    model_b = Tiramisu(c["channels_b"], name="comir_b", **common)
    for model in (model_a, model_b):
        model.build((None, None, None, model.in_channels))
    return model_a, model_b


def make_train_step(
    model_a: keras.Model,
    model_b: keras.Model,
    optimizer_a: keras.optimizers.Optimizer,
    optimizer_b: keras.optimizers.Optimizer,
    critic: str = "mse",
    tau: float = 0.5,
    l1_decay: float = 1e-4,
    l2_decay: float = 1e-4,
    equivariance: bool = True,
    weight_decay: float = 1e-5,
    clip_norm: float = 1.0,
) -> Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]:
    """A compiled (``tf.function``) training step on a batch of
    :func:`~comir_tf.data.make_patch_dataset`.

    Returns:
        ``step(batch) -> {"loss", "info_nce", "decay", "positive_mse", "grad_norm_a",
        "grad_norm_b"}`` (scalars; ``positive_mse`` is the mean squared difference of the
        positive pairs' CoMIRs, ``grad_norm_*`` the norms before clipping).
    """
    variables_a = model_a.trainable_variables
    variables_b = model_b.trainable_variables
    split = len(variables_a)

    def forward(model: keras.Model, x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        if equivariance:
            return rot90(model(rot90(x, k), training=True), -k)
        return model(x, training=True)

    # No autograph: the step has no tensor-dependent Python control flow, and converting every
    # Keras layer's call() would triple the tracing time.
    @tf.function(autograph=False)
    def step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            z_a = forward(model_a, batch["a"], batch["k_a"])
            z_b = forward(model_b, batch["b"], batch["k_b"])
            nce = info_nce_loss(z_a, z_b, critic=critic, tau=tau)
            decay = (l1_decay * activation_decay([z_a, z_b], 1.0)
                     + l2_decay * activation_decay([z_a, z_b], 2.0))
            loss = nce + decay
        # One backward pass for both networks (two gradient calls would repeat the loss's).
        all_grads = tape.gradient(loss, variables_a + variables_b)
        out = {"loss": loss, "info_nce": nce, "decay": decay,
               "positive_mse": tf.reduce_mean(tf.square(z_a - z_b))}
        for name, optimizer, variables, grads in (
            ("a", optimizer_a, variables_a, all_grads[:split]),
            ("b", optimizer_b, variables_b, all_grads[split:]),
        ):
            if clip_norm > 0:
                grads, norm = tf.clip_by_global_norm(grads, clip_norm)
            else:
                norm = tf.linalg.global_norm(grads)
            if weight_decay > 0:
                grads = [g + weight_decay * v for g, v in zip(grads, variables, strict=True)]
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            out[f"grad_norm_{name}"] = norm
        return out

    return step


def ensure_data(cfg: Config) -> None:
    """Write the synthetic demo pairs when ``[Data] synthetic = true`` (no-op if present)."""
    data = cfg["Data"]
    if not data["synthetic"]:
        return
    common = dict(size=data["synthetic_size"], suffix_a=data["suffix_a"],
                  suffix_b=data["suffix_b"])
    synthetic.write_synthetic_pairs(data["train_dir"], data["synthetic_train_pairs"],
                                    seed=data["synthetic_seed"], **common)
    synthetic.write_synthetic_pairs(data["test_dir"], data["synthetic_test_pairs"],
                                    seed=data["synthetic_seed"] + 1, **common)


def read_pairs(cfg: Config, folder_key: str) -> PairSet:
    """Load the pairs of ``[Data] <folder_key>`` with the config's suffixes, scales and logs."""
    data, comir = cfg["Data"], cfg["CoMIR"]
    folder = data[folder_key]
    if folder is None:
        raise DataError(f"{cfg.path}: [Data] {folder_key} is not set.")
    return load_pairs(folder, data["suffix_a"], data["suffix_b"], comir["channels_a"],
                      comir["channels_b"], data["scale_a"], data["scale_b"], data["log_a"],
                      data["log_b"])


def _checkpoint(model_a: keras.Model, model_b: keras.Model, optimizer_a: Any = None,
                optimizer_b: Any = None, step: tf.Variable | None = None) -> tf.train.Checkpoint:
    objects: dict[str, Any] = {"model_a": model_a, "model_b": model_b}
    if optimizer_a is not None:
        objects.update(optimizer_a=optimizer_a, optimizer_b=optimizer_b, step=step)
    return tf.train.Checkpoint(**objects)


def restore_models(cfg: Config, checkpoint: str | None = None) -> tuple[Tiramisu, Tiramisu, str]:
    """Rebuild both networks from the config and load the latest checkpoint of the run folder.

    Returns:
        ``(model_a, model_b, checkpoint_prefix)``.

    Raises:
        DataError: when the run folder holds no checkpoint.
    """
    model_a, model_b = build_models(cfg)
    run_dir = Path(cfg["Train"]["run_dir"])
    path = checkpoint or tf.train.latest_checkpoint(str(run_dir / CHECKPOINT_SUBDIR))
    if not path:
        raise DataError(
            f"{run_dir / CHECKPOINT_SUBDIR}: no checkpoint found ([Train] run_dir). Train first "
            f"with `python training.py {cfg.path}`."
        )
    _checkpoint(model_a, model_b).restore(path).expect_partial().assert_existing_objects_matched()
    return model_a, model_b, path


def _picture(model_a: keras.Model, model_b: keras.Model, a: np.ndarray, b: np.ndarray
             ) -> np.ndarray:
    """``[H, 4W, 3]`` in [0, 1]: image A | image B | CoMIR A | CoMIR B (first channels)."""
    def show(x: np.ndarray) -> np.ndarray:
        x = x[..., :3] if x.shape[-1] >= 3 else np.repeat(x[..., :1], 3, axis=-1)
        lo, hi = float(x.min()), float(x.max())
        return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)

    z_a = model_a(a[None], training=False).numpy()[0]
    z_b = model_b(b[None], training=False).numpy()[0]
    # Both CoMIRs on a common intensity scale, so that agreement is visible.
    both = show(np.concatenate([z_a, z_b], axis=1))
    return np.concatenate([show(a), show(b), both], axis=1).astype(np.float32)


def train(cfg: Config, log: Callable[[str], None] = print) -> TrainResult:
    """Train the two CoMIR networks described by a CoMIR config.

    Args:
        cfg: settings from :func:`comir_tf.config.load`.
        log: where progress lines go.

    Returns:
        A :class:`TrainResult`; on Ctrl-C the last finished step is saved first and
        ``interrupted`` is set.

    Raises:
        DataError: unreadable or inconsistent data, or an unwritable run folder.
    """
    comir, data, train_cfg = cfg["CoMIR"], cfg["Data"], cfg["Train"]
    seed = int(train_cfg["seed"])
    keras.utils.set_random_seed(seed)
    if train_cfg["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    ensure_data(cfg)
    pairs = read_pairs(cfg, "train_dir")
    valid = read_pairs(cfg, "test_dir") if (train_cfg["validate"] and data["test_dir"]) else None
    run_dir = Path(train_cfg["run_dir"])
    prepare_run_dir(run_dir, not train_cfg["resume"], log, setting="[Train] run_dir")

    model_a, model_b = build_models(cfg)
    optimizers = []
    for model in (model_a, model_b):
        optimizer = keras.optimizers.SGD(learning_rate=train_cfg["learning_rate"],
                                         momentum=train_cfg["momentum"])
        optimizer.build(model.trainable_variables)
        optimizers.append(optimizer)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = _checkpoint(model_a, model_b, *optimizers, step=step_var)
    manager = tf.train.CheckpointManager(checkpoint, str(run_dir / CHECKPOINT_SUBDIR),
                                         max_to_keep=train_cfg["max_checkpoints"],
                                         checkpoint_name="comir.ckpt")
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(step_var.numpy())}")
    first_step = int(step_var.numpy())
    total = int(train_cfg["steps"])

    cfg.write(run_dir / "config.ini")
    description = {
        "model_a": keras.saving.serialize_keras_object(model_a),
        "model_b": keras.saving.serialize_keras_object(model_b),
        "meta": {key: data[key] for key in ("suffix_a", "suffix_b", "scale_a", "scale_b",
                                            "log_a", "log_b", "patch_size")},
    }
    atomic_write_text(run_dir / MODEL_FILE, json.dumps(description, indent=2) + "\n")
    result = TrainResult(run_dir, first_step, first_step, manager.latest_checkpoint)
    if first_step >= total:
        log(f"already trained to step {first_step} of {total}; nothing to do")
        return result

    batch_size = int(train_cfg["batch_size"])
    dataset = make_patch_dataset(
        pairs, data["patch_size"], batch_size, seed, start_step=first_step, stop_step=total,
        flip=data["flip"], rotate=data["rotate"], blur_sigma=data["blur_sigma"],
        blur_probability=data["blur_probability"], noise_std=data["noise_std"])
    train_step = make_train_step(
        model_a, model_b, *optimizers, critic=comir["critic"], tau=comir["tau"],
        l1_decay=comir["l1_decay"], l2_decay=comir["l2_decay"],
        equivariance=comir["equivariance"], weight_decay=train_cfg["weight_decay"],
        clip_norm=train_cfg["clip_norm"])
    valid_batch = None
    if valid is not None and len(valid) >= 1:
        crops_a, crops_b = centre_crops(valid, data["patch_size"])
        valid_batch = (crops_a[:batch_size], crops_b[:batch_size])

    writer = EventWriter(run_dir / "tensorboard")
    progress = keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() else 0,
                                   unit_name="step")
    progress.update(first_step)
    log(f"training CoMIR networks ({model_a.count_params():,} + {model_b.count_params():,} "
        f"parameters) on {len(pairs)} pairs, batch {batch_size}, steps {first_step + 1}..{total};"
        f" run folder {run_dir}")

    def save(step: int) -> None:
        result.checkpoint = manager.save(checkpoint_number=step)
        log(f"saved {result.checkpoint}")
        if valid_batch is not None:
            z_a = model_a(valid_batch[0], training=False)
            z_b = model_b(valid_batch[1], training=False)
            values = {"positive_mse": float(tf.reduce_mean(tf.square(z_a - z_b)))}
            if len(valid_batch[0]) >= 2:
                values["info_nce"] = float(info_nce_loss(z_a, z_b, comir["critic"],
                                                         comir["tau"]))
            result.validation = values
            writer.scalars(step, values, prefix="validation")
            log(f"validation at step {step}: "
                + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
            writer.image(step, "comir/images_a_b_comirs_a_b",
                         _picture(model_a, model_b, valid_batch[0][0], valid_batch[1][0]))

    step = first_step
    tic, tic_step = time.perf_counter(), step
    log_every, save_every = int(train_cfg["log_every"]), int(train_cfg["save_every"])
    try:
        for batch in dataset:
            values = train_step(batch)
            step += 1
            step_var.assign(step)
            if step % log_every == 0 or step == total or step == first_step + 1:
                host = {k: float(v.numpy()) for k, v in values.items()}
                if not all(math.isfinite(v) for v in host.values()):
                    raise FloatingPointError(
                        f"non-finite training loss at step {step}: {host}; lower [Train] "
                        "learning_rate or check the images for extreme values."
                    )
                rate = (step - tic_step) / max(time.perf_counter() - tic, 1e-9)
                tic, tic_step = time.perf_counter(), step
                log(format_line(step, total, host, rate))
                writer.scalars(step, host)
                result.last_values = host
                result.history.append((step, host))
            progress.update(step)
            if step % save_every == 0 or step == total:
                save(step)
    except KeyboardInterrupt:
        result.interrupted = True
        if step > first_step and not str(result.checkpoint or "").endswith(f"-{step}"):
            result.checkpoint = manager.save(checkpoint_number=step)
            log(f"interrupted: saved {result.checkpoint}")
    finally:
        writer.flush()
    result.last_step = step
    return result
