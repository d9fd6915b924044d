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
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.config import Config
from labelreg.engine.callbacks import (
    BEST_FIGURES,
    VALIDATION_CSV,
    BestCheckpoint,
    Callback,
    Checkpointing,
    NonFiniteGuard,
    Pictures,
    ProgressLog,
    StepInfo,
    Timing,
    TrainContext,
    TrainResult,
    Validation,
    ValidationHistory,
)
from labelreg.engine.checkpoints import (
    CHECKPOINT_SUBDIR,
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
from labelreg.engine.summaries import SummaryWriter
from labelreg.methods.base import Method

__all__ = ["TrainResult", "train", "as_method", "choose_strategy", "build_scope",
           "default_callbacks", "BestCheckpoint", "ValidationHistory", "BEST_FIGURES",
           "VALIDATION_CSV"]


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
    train_cfg = method.cfg["Train"]
    keras.utils.set_random_seed(int(train_cfg["seed"]))
    if train_cfg["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    strategy = choose_strategy(train_cfg["strategy"])
    chief = is_chief(strategy)
    if not chief:
        method.log = _prefixed(method.log, f"[{task_label(strategy)}] ")
    check_global_batch(strategy, int(train_cfg["minibatch_size"]))
    method.prepare_data()  # bad data fail here, before a run folder exists
    run_dir = Path(train_cfg["dir_run"])
    if chief:
        run_dir = prepare_run_dir(run_dir, fresh or not train_cfg["resume"], method.log)
    with strategy.scope(), build_scope(train_cfg):
        method.models = method.build()
        optimizers = _optimizers(method)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="labelreg-worker-"))
    try:
        ctx = _context(method, strategy, run_dir, optimizers, step_var, scratch)
        if ctx.result.first_step >= ctx.total:
            method.log(f"already trained to step {ctx.result.first_step} of {ctx.total}; "
                       "nothing to do")
            return ctx.result
        callbacks = default_callbacks(method) + list(method.callbacks())
        _run_loop(ctx, _train_steps(method, strategy, optimizers),
                  _batches(method, strategy, ctx), step_var, callbacks)
        return ctx.result
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def default_callbacks(method: Method) -> list[Callback]:
    """The engine's callbacks, in the order they run (checkpointing first)."""
    train_cfg = method.cfg["Train"]
    return [Checkpointing(), NonFiniteGuard(int(train_cfg["max_nonfinite_steps"])),
            ProgressLog(int(train_cfg["freq_info_print"])),
            Validation(_checkpoint_name(method)), Pictures(), Timing()]


def _optimizers(method: Method) -> dict[str, keras.optimizers.Optimizer]:
    """One optimiser per trained model, its learning rate scheduled as ``[Train]`` says (the
    schedule starts again at each of the method's phase changes)."""
    train_cfg = method.cfg["Train"]
    rates = method.learning_rates()
    optimizers = {}
    for key in method.trained_models():
        rate = learning_rate_schedule(float(rates.get(key, train_cfg["learning_rate"])),
                                      train_cfg["lr_schedule"], int(train_cfg["warmup_steps"]),
                                      int(train_cfg["total_iterations"]),
                                      restarts=method.schedule_restarts())
        optimizer = make_optimizer(train_cfg["optimizer"], rate, float(train_cfg["momentum"]))
        optimizer.build(method.models[key].trainable_variables)
        optimizers[key] = optimizer
    return optimizers


def _context(method: Method, strategy: tf.distribute.Strategy, run_dir: Path,
             optimizers: dict[str, Any], step_var: tf.Variable,
             scratch: Path | None) -> TrainContext:
    """The checkpoint (restored from the run folder's latest), the run folder's description
    files, the TensorBoard writer and the result, as the callbacks share them."""
    train_cfg, log, chief = method.cfg["Train"], method.log, scratch is None
    trackables = {optimizer_key(key): opt for key, opt in optimizers.items()}
    checkpoint = make_checkpoint(method.models, step=step_var, **trackables)
    manager = tf.train.CheckpointManager(
        checkpoint, str(run_dir / CHECKPOINT_SUBDIR),
        max_to_keep=int(train_cfg["max_checkpoints_to_keep"]),
        checkpoint_name=_checkpoint_name(method))
    restored = restore_latest(manager, method.models, log, step=step_var, **trackables)
    if restored:
        log(f"resumed from {restored} at step {int(step_var.numpy())}")
    first_step = int(step_var.numpy())
    if chief:
        method.cfg.write(run_dir / "config.ini")
        save_model_description(method.models, run_dir, method=method.name, **method.meta())
    # Every worker restores the chief's checkpoint; saving is collective under multi_worker,
    # so the other workers save too, into a scratch folder that is removed.
    writer_manager = manager if chief else tf.train.CheckpointManager(
        checkpoint, str(scratch), max_to_keep=1)

    def cases_of(batch: dict) -> str:
        if "case_index" not in batch:
            return "cases unknown"
        parts = strategy.experimental_local_results(batch["case_index"])
        return ", ".join(method.case_names(
            [int(i) for part in parts for i in tf.reshape(part, [-1]).numpy()]))

    return TrainContext(
        method=method, log=log, checkpoint=checkpoint, manager=writer_manager, chief=chief,
        result=TrainResult(run_dir=run_dir, first_step=first_step, last_step=first_step,
                           checkpoint=restored),
        total=int(train_cfg["total_iterations"]), restarts=sorted(method.schedule_restarts()),
        optimizers=optimizers, cases_of=cases_of, replicas=strategy.num_replicas_in_sync,
        writer=SummaryWriter(train_cfg["dir_tensorboard"]) if chief else None)


def _train_steps(method: Method, strategy: tf.distribute.Strategy,
                 optimizers: dict[str, Any]) -> list[Callable[[Any], dict[str, tf.Tensor]]]:
    """One compiled step per phase of the objective (a function is traced at its first call,
    so a run resumed past a phase never compiles its step), or the method's own step."""
    train_cfg = method.cfg["Train"]
    groups = {key.removeprefix("model_") or key: (opt, method.models[key].trainable_variables)
              for key, opt in optimizers.items()}
    custom_step = method.custom_train_step(optimizers)
    return [custom_step or make_train_step(
        method.phase_loss_terms(phase), groups, preprocess=method.preprocess,
        clip_norm=float(train_cfg["clip_norm"]), weight_decay=float(train_cfg["weight_decay"]),
        global_batch_size=int(train_cfg["minibatch_size"]), strategy=strategy,
    ) for phase in range(len(method.schedule_restarts()) + 1)]


def _batches(method: Method, strategy: tf.distribute.Strategy, ctx: TrainContext) -> Any:
    """Exactly the batches still to train on, distributed over the replicas: once the last one
    is read the input pipeline's threads are idle, so deleting the iterator never waits on a
    Python generator that needs the GIL (a prefetching infinite pipeline could hang there)."""
    first, total = ctx.result.first_step, ctx.total
    dataset = method.train_dataset(int(method.cfg["Train"]["seed"]), first, total)
    # Without tf.data's autotuning model: deleting an iterator waits for that model's thread,
    # which sleeps between its rounds (8.7-10 s at the end of a one-step run, measured). The
    # prefetch buffers still adapt (TensorFlow's per-buffer autotuner), and AUTOTUNE
    # parallelism becomes one call per core.
    options = tf.data.Options()
    options.autotune.enabled = False
    dataset = dataset.with_options(options)
    return distribute_batches(strategy, dataset.take(total - first),
                              int(method.cfg["Train"]["minibatch_size"]))


def _run_loop(ctx: TrainContext, train_steps: list[Callable[[Any], dict[str, tf.Tensor]]],
              batches: Any, step_var: tf.Variable, callbacks: list[Callback]) -> None:
    """The training loop: one step per batch, the callbacks around it (module docstring of
    :mod:`labelreg.engine.callbacks`)."""
    method, result = ctx.method, ctx.result
    step = result.first_step
    parameters = " + ".join(f"{m.count_params():,}" for m in method.models.values())
    spread = f", {ctx.replicas} replicas" if ctx.replicas > 1 else ""
    ctx.log(f"training {method.name} ({parameters} parameters) on {method.describe_data()}"
            f"{spread}, steps {step + 1}..{ctx.total}; run folder {result.run_dir}")
    save_every = int(ctx.train_cfg["freq_model_save"])
    iterator = iter(batches)
    try:
        for callback in callbacks:
            callback.on_train_begin(ctx)
        while step < ctx.total:
            start = time.perf_counter()
            batch = next(iterator)
            waited = time.perf_counter() - start
            # The batch of step index `step` (counting from 0) belongs to the phase after the
            # restarts at or before it.
            values = dict(train_steps[bisect.bisect_right(ctx.restarts, step)](batch))
            nonfinite = values.pop("nonfinite", None)
            # One scalar read per step (the step has finished by now on CPU anyway).
            skipped = nonfinite is not None and float(nonfinite.numpy()) > 0
            step += 1
            step_var.assign(step)
            result.last_step = step
            info = StepInfo(step, values, batch, skipped, nonfinite is not None,
                            time.perf_counter() - start, waited)
            for callback in callbacks:
                callback.on_step_end(ctx, info)
            if step % save_every == 0 or step == ctx.total:
                for callback in callbacks:
                    callback.on_checkpoint(ctx, step)
    except KeyboardInterrupt:
        result.interrupted = True
        for callback in callbacks:
            callback.on_interrupt(ctx, step)
    finally:
        del iterator  # now, not at some later garbage collection
        for callback in callbacks:
            callback.on_train_end(ctx)
        if ctx.writer is not None:
            ctx.writer.flush()
