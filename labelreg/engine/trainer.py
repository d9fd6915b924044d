"""The one trainer behind ``python training.py config.ini``, for every method.

It owns what all methods share: seeding, the run folder, a ``tf.train.CheckpointManager`` with
one by-path layout for every model, exact resume (sampling is a pure function of ``(seed,
step)``), the ``tf.distribute`` strategy, the compiled step (:mod:`labelreg.engine.step`),
progress lines and a progress bar, ``tf.summary`` scalars and pictures, validation at every
checkpoint, timing (s/step and the share spent waiting for input), skipping of steps with a
non-finite loss or gradient (and stopping after too many in a row), and Ctrl-C (the last
finished step is saved). Under ``[Train] strategy = multi_worker`` only the chief writes the run
folder, checkpoints and summaries. What is trained, on what, with which loss, comes from
the method (:class:`labelreg.methods.base.Method`).
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import json
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.config import Config
from labelreg.engine.checkpoints import (
    BEST_SUBDIR,
    CHECKPOINT_SUBDIR,
    atomic_write_text,
    make_checkpoint,
    prepare_run_dir,
    restore_latest,
    save_model_description,
)
from labelreg.engine.distribute import (
    check_global_batch,
    distribute_batches,
    is_chief,
    make_strategy,
    task_label,
)
from labelreg.engine.step import (
    learning_rate_schedule,
    make_optimizer,
    make_train_step,
    optimizer_key,
)
from labelreg.engine.summaries import SummaryWriter, format_line
from labelreg.errors import DataError
from labelreg.methods.base import Method

__all__ = ["TrainResult", "train", "as_method", "choose_strategy", "build_scope"]


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
    #: ``(step, values)`` of every logged step.
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    #: Wall time per step and the share of it spent waiting for input, over the steps after
    #: the first (which includes tracing).
    seconds_per_step: float = float("nan")
    input_share: float = float("nan")
    #: Steps whose loss or gradients were not finite (not applied).
    skipped_steps: list[int] = field(default_factory=list)
    #: ``{"metric", "value", "step", "checkpoint"}`` of the best checkpoint (``keep_best``).
    best: dict[str, Any] = field(default_factory=dict)


def choose_strategy(kind: str = "default") -> tf.distribute.Strategy:
    """The strategy ``[Train] strategy`` names (:func:`labelreg.engine.distribute.make_strategy`);
    ``default`` mirrors the models over every GPU when there are several."""
    return make_strategy(kind)


@contextlib.contextmanager
def build_scope(train_cfg: dict) -> Iterator[None]:
    """Where the trainer builds the models: the ``[Train] precision`` dtype policy and, with
    ``[Train] gradient_checkpointing``, Keras rematerialisation of the networks' blocks."""
    from labelreg.networks.remat import remat_scope

    precision = contextlib.nullcontext()
    if train_cfg["precision"] != "float32":
        from labelreg.networks.precision import precision_scope

        precision = precision_scope(train_cfg["precision"])
    with precision, remat_scope(bool(train_cfg["gradient_checkpointing"])):
        yield


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    """``log`` with every line starting with ``prefix`` (a worker's lines under multi_worker)."""

    def write(line: str) -> None:
        log(prefix + line)

    return write


def _checkpoint_name(method: Method) -> str:
    name = Path(method.cfg["Train"]["file_model_save"]).name
    return name or method.checkpoint_name


def _interval_means(values: list[dict[str, tf.Tensor]]) -> dict[str, float]:
    """Mean of each logged term over the steps since the last log line, ignoring NaN entries
    (a term with no finite value stays NaN); the loss must be finite at every applied step, so
    one non-finite loss makes the mean NaN rather than being averaged away."""
    host = [{key: float(value.numpy()) for key, value in step.items()} for step in values]
    if not host:
        return {"loss": float("nan")}
    means = {}
    for key in host[-1]:
        finite = [step[key] for step in host if math.isfinite(step[key])]
        means[key] = sum(finite) / len(finite) if finite else float("nan")
    if any(not math.isfinite(step["loss"]) for step in host):
        means["loss"] = float("nan")
    return means


#: ``[Train] keep_best`` -> (validation key, +1 when higher is better, -1 when lower is).
BEST_FIGURES = {"dice": ("dice", 1.0), "tre": ("tre_mm", -1.0)}


class BestCheckpoint:
    """The checkpoint with the best validation figure, in ``<run>/best`` with ``best.json``
    (``{"metric", "value", "step", "checkpoint"}``), carried over a resumed run."""

    def __init__(self, choice: str, checkpoint: tf.train.Checkpoint, run_dir: Path,
                 name: str, log: Callable[[str], None]) -> None:
        self.key, self.sign = BEST_FIGURES[choice]
        self.log = log
        self.folder = run_dir / BEST_SUBDIR
        self.manager = tf.train.CheckpointManager(checkpoint, str(self.folder), max_to_keep=1,
                                                  checkpoint_name=name)
        self.record: dict[str, Any] = {}
        self.warned = False
        path = self.folder / "best.json"
        if path.exists():
            try:
                self.record = json.loads(path.read_text(encoding="utf-8"))
                float(self.record["value"])
            except (ValueError, KeyError, TypeError, OSError):
                log(f"warning: {path} is unreadable; the best checkpoint starts over")
                self.record = {}

    def offer(self, step: int, values: dict[str, float]) -> None:
        """Save the models as the best checkpoint if ``values`` beat the best so far."""
        value = values.get(self.key)
        if value is None or not math.isfinite(value):
            if not self.warned:
                self.log(f"warning: [Train] keep_best needs the validation figure "
                         f"{self.key!r}, which this validation does not give "
                         f"({', '.join(values) or 'no validation data'})")
                self.warned = True
            return
        if self.record and self.sign * value <= self.sign * float(self.record["value"]):
            return
        path = self.manager.save(checkpoint_number=step)
        self.record = {"metric": self.key, "value": value, "step": step, "checkpoint": path}
        atomic_write_text(self.folder / "best.json", json.dumps(self.record, indent=2) + "\n")
        self.log(f"best {self.key} so far ({value:.4f}): kept {path}")


#: The validation history of a run, one row per validated checkpoint.
VALIDATION_CSV = "validation.csv"


class ValidationHistory:
    """``<run>/validation.csv``: ``step`` and every validation figure, one row per checkpoint.

    A resumed run keeps the rows up to the step it resumes from (rows written after that
    checkpoint by an interrupted run are dropped, as their steps are trained again). The file
    is rewritten whole, atomically, at each validation; it feeds learning curves
    (``python -m labelreg.curves``).
    """

    def __init__(self, run_dir: Path, first_step: int, log: Callable[[str], None]) -> None:
        from labelreg.curves import read_history

        self.path = run_dir / VALIDATION_CSV
        self.rows: list[dict[str, float]] = []
        if self.path.exists():
            try:
                history = read_history(self.path)
            except DataError:
                log(f"warning: {self.path} is unreadable; the validation history starts over")
            else:
                self.rows = [{name: column[i] for name, column in history.items()}
                             for i, step in enumerate(history["step"]) if step <= first_step]

    def add(self, step: int, values: dict[str, float]) -> None:
        """Append the figures of ``step`` and rewrite the file."""
        self.rows.append({"step": step, **{k: float(v) for k, v in values.items()}})
        columns = ["step"] + sorted({k for row in self.rows for k in row if k != "step"})
        text = io.StringIO()
        writer = csv.DictWriter(text, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({**{k: repr(v) for k, v in row.items()}, "step": int(row["step"])}
                         for row in self.rows)
        atomic_write_text(self.path, text.getvalue())


def as_method(target: Method | Config, log: Callable[[str], None] | None = None) -> Method:
    """The method of a validated config (its ``[Method] name``), or ``target`` itself."""
    if isinstance(target, Config):
        from labelreg.methods.registry import get_method

        return get_method(target["Method"]["name"])(target, log=log or print)
    if log is not None:
        target.log = log
    return target


def train(target: Method | Config, fresh: bool = False,
          log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a method as its config says, resuming from the run folder's latest checkpoint.

    Args:
        target: a method built from its validated config, or the config itself (from
            ``labelreg.methods.registry.load_config``, ``labelreg.config.load``...).
        fresh: ignore (and set aside) existing checkpoints; ``[Train] resume = false`` does the
            same.
        log: where progress lines go (default: the method's, ``print``).

    Returns:
        A :class:`TrainResult`; on Ctrl-C the last finished step is saved first and
        ``interrupted`` is set.

    Raises:
        DataError: unreadable or inconsistent data, an unwritable run folder, or a checkpoint
            that does not fit the configured models.
        FloatingPointError: after ``[Train] max_nonfinite_steps`` consecutive steps with a
            NaN or infinite loss or gradient (each is skipped and logged with its cases), or
            at once for a method's own step (which cannot skip).
        ConfigError: ``[Train] minibatch_size`` is not a multiple of the number of replicas,
            or ``multi_worker`` without ``TF_CONFIG``.
    """
    method = as_method(target, log)
    cfg, log = method.cfg, method.log
    train_cfg = cfg["Train"]
    fresh = fresh or not train_cfg["resume"]
    seed = int(train_cfg["seed"])
    keras.utils.set_random_seed(seed)
    if train_cfg["deterministic"]:
        tf.config.experimental.enable_op_determinism()

    strategy = choose_strategy(train_cfg["strategy"])
    chief = is_chief(strategy)
    if not chief:
        log = method.log = _prefixed(log, f"[{task_label(strategy)}] ")
    batch_size = int(train_cfg["minibatch_size"])
    check_global_batch(strategy, batch_size)
    method.prepare_data()  # bad data fail here, before a run folder exists
    run_dir = Path(train_cfg["dir_run"])
    if chief:
        run_dir = prepare_run_dir(run_dir, fresh, log)

    with strategy.scope(), build_scope(train_cfg):
        method.models = method.build()
        optimizers = {}
        rates = method.learning_rates()
        for key in method.trained_models():
            rate = learning_rate_schedule(float(rates.get(key, train_cfg["learning_rate"])),
                                          train_cfg["lr_schedule"],
                                          int(train_cfg["warmup_steps"]),
                                          int(train_cfg["total_iterations"]),
                                          restarts=method.schedule_restarts())
            optimizer = make_optimizer(train_cfg["optimizer"], rate,
                                       float(train_cfg["momentum"]))
            optimizer.build(method.models[key].trainable_variables)
            optimizers[key] = optimizer
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    trackables = {optimizer_key(key): opt for key, opt in optimizers.items()}
    checkpoint = make_checkpoint(method.models, step=step_var, **trackables)
    manager = tf.train.CheckpointManager(
        checkpoint, str(run_dir / CHECKPOINT_SUBDIR),
        max_to_keep=int(train_cfg["max_checkpoints_to_keep"]),
        checkpoint_name=_checkpoint_name(method),
    )
    # Every worker restores the chief's checkpoint; saving is collective under multi_worker, so
    # the other workers save too, into a scratch folder that is removed.
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="labelreg-worker-"))
    writer_manager = manager if chief else tf.train.CheckpointManager(
        checkpoint, str(scratch), max_to_keep=1)
    restored = restore_latest(manager, method.models, log, step=step_var, **trackables)
    if restored:
        log(f"resumed from {restored} at step {int(step_var.numpy())}")
    first_step = int(step_var.numpy())
    total = int(train_cfg["total_iterations"])

    if chief:
        cfg.write(run_dir / "config.ini")
        save_model_description(method.models, run_dir, method=method.name, **method.meta())
    result = TrainResult(run_dir=run_dir, first_step=first_step, last_step=first_step,
                         checkpoint=restored)
    best = None
    if chief and train_cfg["keep_best"] != "none":
        best = BestCheckpoint(train_cfg["keep_best"], checkpoint, run_dir,
                              _checkpoint_name(method), log)
        result.best = best.record
    validation_log = ValidationHistory(run_dir, first_step, log) if chief else None
    if first_step >= total:
        log(f"already trained to step {first_step} of {total}; nothing to do")
        return result

    # Exactly the batches still to train on: once the last one is read the input pipeline's
    # threads are idle, so deleting the iterator never waits on a Python generator that needs
    # the GIL (a prefetching infinite pipeline could hang there).
    dataset = method.train_dataset(seed, first_step, total).take(total - first_step)
    dist_dataset = distribute_batches(strategy, dataset, batch_size)
    groups = {key.removeprefix("model_") or key: (opt, method.models[key].trainable_variables)
              for key, opt in optimizers.items()}
    restarts = sorted(method.schedule_restarts())
    custom_step = method.custom_train_step(optimizers)
    # One compiled step per phase of the objective (a function is traced at its first call,
    # so a run resumed past a phase never compiles its step).
    train_steps = [custom_step or make_train_step(
        method.phase_loss_terms(phase), groups, preprocess=method.preprocess,
        clip_norm=float(train_cfg["clip_norm"]), weight_decay=float(train_cfg["weight_decay"]),
        global_batch_size=batch_size, strategy=strategy,
    ) for phase in range(len(restarts) + 1)]

    writer = SummaryWriter(train_cfg["dir_tensorboard"]) if chief else None
    print_every, save_every = int(train_cfg["freq_info_print"]), int(train_cfg["freq_model_save"])
    max_bad = int(train_cfg["max_nonfinite_steps"])
    progress = keras.utils.Progbar(total, verbose=1 if sys.stdout.isatty() and chief else 0,
                                   unit_name="step")
    progress.update(first_step)
    parameters = " + ".join(f"{m.count_params():,}" for m in method.models.values())
    replicas = strategy.num_replicas_in_sync
    spread = f", {replicas} replicas" if replicas > 1 else ""
    log(f"training {method.name} ({parameters} parameters) on {method.describe_data()}"
        f"{spread}, steps {first_step + 1}..{total}; run folder {run_dir}")

    def save(step: int, why: str = "saved") -> None:
        method.before_save()
        path = writer_manager.save(checkpoint_number=step)
        if chief:
            result.checkpoint = path
            log(f"{why} {result.checkpoint}")

    def at_checkpoint(step: int) -> None:
        save(step)
        if not chief:
            return
        if train_cfg["validate"]:
            values = method.validate()
            if values:
                result.validation = values
                log(f"validation at step {step}: "
                    + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
                writer.scalars(step, values, prefix="validation")
                validation_log.add(step, values)
            # A checkpoint of an earlier phase is not trained on the final objective.
            if best is not None and step > max(restarts, default=0):
                best.offer(step, values)
                result.best = best.record
        for tag, picture in method.pictures().items():
            writer.image(step, tag, picture)

    def cases_of(batch: dict) -> str:
        if "case_index" not in batch:
            return "cases unknown"
        parts = strategy.experimental_local_results(batch["case_index"])
        indices = [int(i) for part in parts for i in tf.reshape(part, [-1]).numpy()]
        return ", ".join(method.case_names(indices))

    scheduled = train_cfg["lr_schedule"] != "constant" or int(train_cfg["warmup_steps"]) > 0

    def current_rates() -> dict[str, float]:
        # The rate the schedule gives at the optimiser's step (the next update's rate).
        return {("learning_rate" if len(optimizers) == 1 else f"learning_rate_{key}"):
                float(keras.ops.convert_to_numpy(opt.learning_rate))
                for key, opt in optimizers.items()}

    step = first_step
    tic, tic_step = time.perf_counter(), step
    iterator = iter(dist_dataset)
    waited, checkpoint_time, steady_start, steady_first = 0.0, 0.0, None, step
    pending: list[dict[str, tf.Tensor]] = []
    skipped_in_interval, bad_streak = 0, 0
    try:
        while step < total:
            fetch = time.perf_counter()
            batch = next(iterator)
            if steady_start is not None:
                waited += time.perf_counter() - fetch
            # The batch of step index `step` (counting from 0) belongs to the phase after the
            # restarts at or before it.
            values = dict(train_steps[bisect.bisect_right(restarts, step)](batch))
            step += 1
            nonfinite = values.pop("nonfinite", None)
            # One scalar read per step (the step has finished by now on CPU anyway).
            if nonfinite is not None and float(nonfinite.numpy()) > 0:
                bad_streak += 1
                skipped_in_interval += 1
                result.skipped_steps.append(step)
                log(f"step {step}: non-finite loss or gradients, update skipped "
                    f"({bad_streak} in a row); batch cases: {cases_of(batch)}")
                if bad_streak >= max_bad:
                    raise FloatingPointError(
                        f"{bad_streak} consecutive training steps (up to step {step}) had a "
                        f"non-finite loss or gradients ([Train] max_nonfinite_steps = {max_bad}); "
                        f"stopped with the last good checkpoint {result.checkpoint or 'none'} "
                        "kept. Lower [Train] learning_rate, set [Train] clip_norm, or check "
                        "those cases for extreme values."
                    )
            else:
                bad_streak = 0
                pending.append(values)  # tensors: read at the next log line
            if steady_start is None:
                steady_start, steady_first = time.perf_counter(), step
            step_var.assign(step)
            if step % print_every == 0 or step == total or step == first_step + 1:
                host = _interval_means(pending)
                if nonfinite is None and not math.isfinite(host["loss"]):
                    # A method's own step has no skip: stop rather than train on garbage.
                    raise FloatingPointError(
                        f"non-finite training loss at step {step}: {host}; lower [Train] "
                        "learning_rate or check the data for extreme values."
                    )
                if skipped_in_interval:
                    host["skipped_steps"] = float(skipped_in_interval)
                if scheduled:
                    host.update(current_rates())
                rate = (step - tic_step) / max(time.perf_counter() - tic, 1e-9)
                tic, tic_step = time.perf_counter(), step
                log(format_line(step, total, host, rate, steps=len(pending)))
                pending, skipped_in_interval = [], 0
                if writer is not None:
                    writer.scalars(step, host)
                result.last_values = host
                result.history.append((step, host))
            progress.update(step)
            if step % save_every == 0 or step == total:
                tick = time.perf_counter()
                at_checkpoint(step)
                checkpoint_time += time.perf_counter() - tick
    except KeyboardInterrupt:
        result.interrupted = True
        if step > first_step and not str(result.checkpoint or "").endswith(f"-{step}"):
            save(step, "interrupted: saved")
    finally:
        if writer is not None:
            writer.flush()
        del iterator  # now, not at some later garbage collection
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    result.last_step = step
    if steady_start is not None and step > steady_first:
        # Training time only: checkpoints, validation and pictures are not steps.
        elapsed = time.perf_counter() - steady_start - checkpoint_time
        result.seconds_per_step = elapsed / (step - steady_first)
        result.input_share = waited / elapsed
        log(f"{result.seconds_per_step:.3f} s per step, {100 * result.input_share:.1f}% of it "
            "waiting for input")
    return result
