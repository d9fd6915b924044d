"""The training loop behind ``python training.py config.ini``.

One custom ``tf.function`` step: (optional) random affine augmentation of moving and fixed,
the network's DDF, the warped moving label and image, and the loss

    multi-scale label loss + regulariser_weight * regulariser(ddf)
                           [+ image_loss_weight * image loss(fixed, warped moving)]

minimised with Adam. Sampling and augmentation are pure functions of ``([Train] seed, step)``, so
a run restored from a checkpoint (model, optimizer and step) continues exactly as an
uninterrupted run would.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from labelreg import losses, metrics, ops
from labelreg._tf import tf
from labelreg.config import Config
from labelreg.data import PairedDataset, make_eval_batches, make_train_dataset
from labelreg.data.augment import augment_batch, step_seed
from labelreg.errors import DataError
from labelreg.networks.registry import build_network
from labelreg.train.batchnorm import recalibrate_batch_norm
from labelreg.train.checkpoints import (
    CHECKPOINT_SUBDIR,
    make_checkpoint,
    prepare_run_dir,
    save_model_description,
)
from labelreg.train.summaries import SummaryWriter, format_line, middle_slice_panel

__all__ = ["TrainResult", "train", "build_model_from_config", "choose_strategy"]


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    run_dir: Path
    first_step: int
    last_step: int
    checkpoint: str | None
    interrupted: bool = False
    last_values: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    #: Wall time per step and the share of it spent waiting for input, over the steps after
    #: the first (which includes tracing).
    seconds_per_step: float = float("nan")
    input_share: float = float("nan")


def choose_strategy() -> tf.distribute.Strategy:
    """Mirror the model over every GPU when there are several, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def build_model_from_config(cfg: Config, ndim: int, moving_shape, fixed_shape) -> keras.Model:
    """The network named in ``[Network]``, built (weights created) for these image shapes."""
    net = cfg["Network"]
    kwargs: dict[str, Any] = {}
    if net["num_channel_initial"] > 0:
        kwargs["num_channel_initial"] = net["num_channel_initial"]
    if net["network_type"] in ("local",):
        kwargs["ddf_levels"] = tuple(net["ddf_levels"])
    model = build_network(net["network_type"], ndim, fixed_shape=tuple(fixed_shape), **kwargs)
    model([tf.zeros([1, *moving_shape, 1]), tf.zeros([1, *fixed_shape, 1])], training=False)
    return model


def _spacings(paired: PairedDataset, override: tuple[float, ...]) -> np.ndarray:
    """``[N, n]`` voxel sizes (mm) of the fixed images, or the configured override."""
    if override:
        if len(override) != paired.ndim:
            raise DataError(
                f"[Data] voxel_spacing has {len(override)} entries but the images are "
                f"{paired.ndim}-D."
            )
        return np.tile(np.asarray(override, np.float32), (paired.num_cases, 1))
    return np.asarray(
        [paired.spacing("fixed_image", i) for i in range(paired.num_cases)], np.float32
    )


def _nan_mean(values: tf.Tensor) -> tf.Tensor:
    """Mean over the finite entries (a centroid distance is NaN when a warped landmark vanishes);
    NaN when there are none."""
    finite = tf.math.is_finite(values)
    count = tf.reduce_sum(tf.cast(finite, values.dtype))
    total = tf.reduce_sum(tf.where(finite, values, tf.zeros_like(values)))
    return tf.where(count > 0, total / tf.maximum(count, 1.0), tf.constant(float("nan")))


class _Objective:
    """The loss terms and monitoring metrics of one batch, per sample ``[B]``."""

    def __init__(self, cfg: Config, network_type: str) -> None:
        loss = cfg["Loss"]
        self.kind = loss["similarity_type"]
        self.scales = tuple(loss["similarity_scales"])
        # label-reg adds no regulariser to GlobalNet: bending energy vanishes for affine fields.
        self.reg_weight = 0.0 if network_type == "global" else float(loss["regulariser_weight"])
        self.regulariser = losses.registry.get_regulariser(loss["regulariser_type"])
        self.image_weight = float(loss["image_loss_weight"])
        self.image_loss = (
            losses.registry.get_image_loss(loss["image_loss_type"])
            if loss["image_loss_type"] != "none" else None
        )

    def __call__(self, batch: dict[str, tf.Tensor], ddf: tf.Tensor, spacing: tf.Tensor
                 ) -> dict[str, tf.Tensor]:
        terms: dict[str, tf.Tensor] = {}
        total = tf.zeros(tf.shape(ddf)[:1])
        if "moving_label" in batch:
            warped_label = ops.warp(batch["moving_label"], ddf)
            label = losses.multi_scale_loss(
                batch["fixed_label"], warped_label, kind=self.kind, scales=self.scales
            )
            terms["label_loss"] = label
            total += label
            terms["dice"] = metrics.dice(batch["fixed_label"], warped_label)
            terms["centroid_distance_mm"] = metrics.centroid_distance(
                batch["fixed_label"], warped_label, spacing=spacing
            )
        if self.reg_weight > 0:
            reg = self.regulariser(ddf)
            terms["regulariser"] = reg
            total += self.reg_weight * reg
        if self.image_loss is not None:
            image = self.image_loss(batch["fixed_image"], ops.warp(batch["moving_image"], ddf))
            terms["image_loss"] = image
            total += self.image_weight * image
        terms["loss"] = total
        return terms


def _validate(model: keras.Model, paired: PairedDataset, spacing: np.ndarray, batch_size: int,
              normalise: bool) -> dict[str, float]:
    dices, distances = [], []
    for batch in make_eval_batches(paired, batch_size, normalise=normalise):
        ddf = model([batch["moving_image"], batch["fixed_image"]], training=False)
        warped = ops.warp(batch["moving_label"], ddf)
        dices.append(metrics.dice(batch["fixed_label"], warped).numpy())
        distances.append(metrics.centroid_distance(
            batch["fixed_label"], warped, spacing=spacing[batch["case_index"]]
        ).numpy())
    dice = np.concatenate(dices)
    distance = np.concatenate(distances)
    return {"dice": float(np.mean(dice)), "centroid_distance_mm": float(np.nanmean(distance))}


def train(cfg: Config, fresh: bool = False, log: Callable[[str], None] = print) -> TrainResult:
    """Train the registration network described by a labelreg config.

    Args:
        cfg: settings from :func:`labelreg.config.load`.
        fresh: ignore (and set aside) existing checkpoints instead of resuming; ``[Train] resume
            = false`` does the same.
        log: where progress lines go.

    Returns:
        A :class:`TrainResult`. On Ctrl-C a checkpoint of the last finished step is saved and the
        result has ``interrupted=True``.

    Raises:
        DataError: unreadable or inconsistent data, or an unwritable run folder.
        ConfigError: settings that contradict the data.
    """
    data_cfg, train_cfg = cfg["Data"], cfg["Train"]
    fresh = fresh or not train_cfg["resume"]
    seed = int(train_cfg["seed"])
    keras.utils.set_random_seed(seed)

    paired = PairedDataset(data_cfg["dir_moving_image"], data_cfg["dir_fixed_image"],
                           data_cfg["dir_moving_label"], data_cfg["dir_fixed_label"])
    batch_size = int(train_cfg["minibatch_size"])
    if batch_size > paired.num_cases:
        raise DataError(
            f"[Train] minibatch_size = {batch_size} exceeds the {paired.num_cases} training cases "
            f"in {data_cfg['dir_moving_image']}."
        )
    valid = None
    if data_cfg["dir_valid_moving_image"] is not None and data_cfg["dir_valid_moving_label"]:
        valid = PairedDataset(data_cfg["dir_valid_moving_image"], data_cfg["dir_valid_fixed_image"],
                              data_cfg["dir_valid_moving_label"], data_cfg["dir_valid_fixed_label"])
    run_dir = prepare_run_dir(train_cfg["dir_run"], fresh, log)

    strategy = choose_strategy()
    with strategy.scope():
        model = build_model_from_config(cfg, paired.ndim, paired.moving_shape, paired.fixed_shape)
        optimizer = keras.optimizers.Adam(learning_rate=float(train_cfg["learning_rate"]))
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = make_checkpoint(model, optimizer=optimizer, step=step_var)
    manager = tf.train.CheckpointManager(
        checkpoint, str(run_dir / CHECKPOINT_SUBDIR),
        max_to_keep=int(train_cfg["max_checkpoints_to_keep"]),
        checkpoint_name=Path(train_cfg["file_model_save"]).name or "model.ckpt",
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        log(f"resumed from {manager.latest_checkpoint} at step {int(step_var.numpy())}")
    first_step = int(step_var.numpy())
    total = int(train_cfg["total_iterations"])

    cfg.write(run_dir / "config.ini")
    save_model_description(model, run_dir, moving_shape=list(paired.moving_shape),
                           fixed_shape=list(paired.fixed_shape),
                           network_type=cfg["Network"]["network_type"],
                           normalise=bool(data_cfg["normalise"]))
    result = TrainResult(run_dir=run_dir, first_step=first_step, last_step=first_step,
                         checkpoint=manager.latest_checkpoint)
    if first_step >= total:
        log(f"already trained to step {first_step} of {total}; nothing to do")
        return result

    objective = _Objective(cfg, cfg["Network"]["network_type"])
    spacing_table = tf.constant(_spacings(paired, tuple(data_cfg["voxel_spacing"])))
    augmentation = bool(data_cfg["augmentation"])
    affine_scale = float(data_cfg["affine_scale"])
    dataset = make_train_dataset(paired, batch_size, seed, start_step=first_step,
                                 normalise=bool(data_cfg["normalise"]))
    dist_dataset = strategy.experimental_distribute_dataset(dataset)

    def replica_step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        if augmentation:
            batch = augment_batch(batch, affine_scale, step_seed(seed, batch["step"]))
        spacing = tf.gather(spacing_table, batch["case_index"])
        with tf.GradientTape() as tape:
            ddf = model([batch["moving_image"], batch["fixed_image"]], training=True)
            terms = objective(batch, ddf, spacing)
            loss = tf.nn.compute_average_loss(terms["loss"], global_batch_size=batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {name: _nan_mean(value) for name, value in terms.items()}

    @tf.function
    def train_step(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        per_replica = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in per_replica.items()}

    writer = SummaryWriter(train_cfg["dir_tensorboard"])
    print_every, save_every = int(train_cfg["freq_info_print"]), int(train_cfg["freq_model_save"])
    progress = keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() else 0,
                                   unit_name="step")
    progress.update(first_step)
    log(f"training {cfg['Network']['network_type']} network ({model.count_params():,} "
        f"parameters) on {paired.num_cases} pairs, steps {first_step + 1}..{total}; "
        f"run folder {run_dir}")

    def save(step: int) -> str:
        path = manager.save(checkpoint_number=step)
        result.checkpoint = path
        return path

    step = first_step
    tic, tic_step = time.perf_counter(), step
    iterator = iter(dist_dataset)
    waited = 0.0
    steady_start = None
    try:
        while step < total:
            fetch = time.perf_counter()
            batch = next(iterator)
            if steady_start is not None:
                waited += time.perf_counter() - fetch
            values = train_step(batch)
            step += 1
            if steady_start is None:
                steady_start, steady_first = time.perf_counter(), step
            step_var.assign(step)
            if step % print_every == 0 or step == total or step == first_step + 1:
                host = {k: float(v.numpy()) for k, v in values.items()}
                if not math.isfinite(host["loss"]):
                    raise FloatingPointError(
                        f"non-finite training loss at step {step}: {host}; lower [Train] "
                        "learning_rate or check the data for extreme values."
                    )
                rate = (step - tic_step) / max(time.perf_counter() - tic, 1e-9)
                tic, tic_step = time.perf_counter(), step
                log(format_line(step, total, host, rate))
                writer.scalars(step, host)
                result.last_values = host
            progress.update(step)
            if step % save_every == 0 or step == total:
                _recalibrate(model, paired, batch_size, bool(data_cfg["normalise"]))
                log(f"saved {save(step)}")
                if valid is not None:
                    result.validation = _validate(model, valid, _spacings(valid, tuple(
                        data_cfg["voxel_spacing"])), batch_size, bool(data_cfg["normalise"]))
                    log(f"validation at step {step}: " + "  ".join(
                        f"{k} {v:.4f}" for k, v in result.validation.items()))
                    writer.scalars(step, result.validation, prefix="validation")
                _write_picture(writer, model, paired, step, bool(data_cfg["normalise"]))
    except KeyboardInterrupt:
        result.interrupted = True
        if step > first_step and (result.checkpoint is None or not result.checkpoint.endswith(
                f"-{step}")):
            _recalibrate(model, paired, batch_size, bool(data_cfg["normalise"]))
            log(f"interrupted: saved {save(step)}")
    finally:
        writer.flush()
    result.last_step = step
    if steady_start is not None and step > steady_first:
        elapsed = time.perf_counter() - steady_start
        result.seconds_per_step = elapsed / (step - steady_first)
        result.input_share = waited / elapsed
        log(f"{result.seconds_per_step:.3f} s per step, {100 * result.input_share:.1f}% of it "
            "waiting for input")
    return result


_RECALIBRATION_BATCHES = 32


def _recalibrate(model: keras.Model, paired: PairedDataset, batch_size: int, normalise: bool
                 ) -> None:
    """Re-estimate the BatchNorm averages on (up to 32 batches of) the training images, as
    inference will see them (no augmentation); see :mod:`labelreg.train.batchnorm`."""
    label_index = 0 if paired.has_labels else None

    def batches():
        for i, batch in enumerate(make_eval_batches(paired, batch_size, normalise=normalise,
                                                    label_index=label_index)):
            if i == _RECALIBRATION_BATCHES:
                return
            yield [batch["moving_image"], batch["fixed_image"]]

    recalibrate_batch_norm(model, batches())


def _write_picture(writer: SummaryWriter, model: keras.Model, paired: PairedDataset, step: int,
                   normalise: bool) -> None:
    """TensorBoard picture of the first case's gland (label 0): fixed | moving | warped."""
    batch = next(make_eval_batches(paired, 1, normalise=normalise, label_index=0
                                   if paired.has_labels else None))
    ddf = model([batch["moving_image"], batch["fixed_image"]], training=False)
    fixed_shape = paired.fixed_shape
    moving_resized = ops.resize(batch["moving_image"], fixed_shape).numpy()[0, ..., 0]
    warped = ops.warp(batch["moving_image"], ddf).numpy()[0, ..., 0]
    labels = {}
    if paired.has_labels:
        labels = {
            "fixed_label": batch["fixed_label"][0, ..., 0],
            "moving_label": ops.resize(batch["moving_label"], fixed_shape).numpy()[0, ..., 0],
            "warped_label": ops.warp(batch["moving_label"], ddf).numpy()[0, ..., 0],
        }
    picture = middle_slice_panel(batch["fixed_image"][0, ..., 0], moving_resized, warped, **labels)
    writer.image(step, "middle_slice/fixed_moving_warped", picture)
