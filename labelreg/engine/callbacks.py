"""The concerns of the training loop, one small object each (in the spirit of Keras ``fit``
callbacks and MONAI's event handlers).

:func:`labelreg.engine.trainer.train` builds the models, optimisers and checkpoint, then runs a
short loop that calls, in order, every callback's

- ``on_train_begin(ctx)`` once, before the first step;
- ``on_step_end(ctx, info)`` after every step (:class:`StepInfo`);
- ``on_checkpoint(ctx, step)`` every ``[Train] freq_model_save`` steps and at the last step;
- ``on_interrupt(ctx, step)`` on Ctrl-C;
- ``on_train_end(ctx)`` always, last (also after an error).

The built-in callbacks: :class:`Checkpointing` (saves; must come first so the others see the
saved checkpoint), :class:`NonFiniteGuard`, :class:`ProgressLog` (progress lines, TensorBoard
scalars, the progress bar), :class:`Validation` (validation figures, ``validation.csv``,
``keep_best``), :class:`Pictures` (TensorBoard pictures) and :class:`Timing`. A method adds its
own with :meth:`labelreg.methods.base.Method.callbacks`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.curves import read_history
from labelreg.engine.checkpoints import BEST_SUBDIR, atomic_write_text
from labelreg.engine.summaries import SummaryWriter, format_line
from labelreg.errors import DataError

__all__ = ["TrainResult", "TrainContext", "StepInfo", "Callback", "Checkpointing",
           "NonFiniteGuard", "ProgressLog", "Validation", "Pictures", "Timing",
           "BestCheckpoint", "ValidationHistory", "BEST_FIGURES", "VALIDATION_CSV",
           "interval_means"]


@dataclass
class TrainResult:
    """What a call to :func:`labelreg.engine.trainer.train` did."""

    run_dir: Path
    first_step: int
    last_step: int
    checkpoint: str | None
    interrupted: bool = False
    last_values: dict[str, float] = field(default_factory=dict)
    validation: dict[str, float] = field(default_factory=dict)
    #: ``(step, values)`` of every logged step.
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    #: Time per training step (the step's computation and its wait for input; not
    #: checkpoints, validation or pictures) and the share of it spent waiting for input, over
    #: the steps after the first (which builds the graph).
    seconds_per_step: float = float("nan")
    input_share: float = float("nan")
    #: Steps whose loss or gradients were not finite (not applied).
    skipped_steps: list[int] = field(default_factory=list)
    #: ``{"metric", "value", "step", "checkpoint"}`` of the best checkpoint (``keep_best``).
    best: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainContext:
    """What the callbacks of one training run share.

    Attributes:
        method: the :class:`~labelreg.methods.base.Method` being trained.
        log: where progress lines go.
        result: the :class:`TrainResult` being filled.
        checkpoint: the ``tf.train.Checkpoint`` of every model, optimiser and the step.
        manager: the ``CheckpointManager`` that saves (a scratch one on non-chief workers).
        chief: whether this process writes the run folder (always, but under multi_worker).
        total: the last step of the run.
        restarts: the steps where the objective changes (the method's phases).
        optimizers: ``{model key: optimizer}``.
        writer: the TensorBoard writer (``None`` on non-chief workers).
        cases_of: ``batch -> "case names"`` for messages.
        replicas: the number of replicas a step runs on.
    """

    method: Any
    log: Callable[[str], None]
    result: TrainResult
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    chief: bool
    total: int
    restarts: list[int]
    optimizers: dict[str, Any]
    writer: SummaryWriter | None = None
    cases_of: Callable[[Any], str] = lambda batch: "cases unknown"
    replicas: int = 1

    @property
    def train_cfg(self) -> Any:
        return self.method.cfg["Train"]

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir

    def save(self, step: int, why: str = "saved") -> str:
        """Run the method's :meth:`before_save`, save a checkpoint numbered ``step`` and log it."""
        self.method.before_save()
        path = self.manager.save(checkpoint_number=step)
        if self.chief:
            self.result.checkpoint = path
            self.log(f"{why} {path}")
        return path


@dataclass
class StepInfo:
    """One finished step.

    Attributes:
        step: its number (1 for the first step of a run).
        values: the step's terms (scalar tensors, read when a line is logged).
        batch: the batch it trained on.
        skipped: its loss or gradients were not finite, so it was not applied.
        guarded: the step reports non-finite values (the engine's step; a method's own step
            does not).
        seconds: time of the step, including its wait for input.
        waited: the part of ``seconds`` spent waiting for the input pipeline.
    """

    step: int
    values: dict[str, tf.Tensor]
    batch: Any
    skipped: bool
    guarded: bool
    seconds: float
    waited: float


class Callback:
    """A concern of the training loop; override the hooks it needs (see the module docstring)."""

    def on_train_begin(self, ctx: TrainContext) -> None:
        """Before the first step."""

    def on_step_end(self, ctx: TrainContext, info: StepInfo) -> None:
        """After every step."""

    def on_checkpoint(self, ctx: TrainContext, step: int) -> None:
        """At every checkpoint step."""

    def on_interrupt(self, ctx: TrainContext, step: int) -> None:
        """On Ctrl-C, after the last finished ``step``."""

    def on_train_end(self, ctx: TrainContext) -> None:
        """Always, last."""


class Checkpointing(Callback):
    """Saves a checkpoint at every checkpoint step, and the last finished step on Ctrl-C."""

    def on_checkpoint(self, ctx: TrainContext, step: int) -> None:
        ctx.save(step)

    def on_interrupt(self, ctx: TrainContext, step: int) -> None:
        if step > ctx.result.first_step and not str(ctx.result.checkpoint or "").endswith(
                f"-{step}"):
            ctx.save(step, "interrupted: saved")


class NonFiniteGuard(Callback):
    """Logs each step whose loss or gradients were not finite (the step left every variable as
    it was) with its cases, and stops the run after ``max_bad`` such steps in a row, keeping the
    last good checkpoint."""

    def __init__(self, max_bad: int) -> None:
        self.max_bad = int(max_bad)
        self.streak = 0

    def on_step_end(self, ctx: TrainContext, info: StepInfo) -> None:
        if not info.skipped:
            self.streak = 0
            return
        self.streak += 1
        ctx.result.skipped_steps.append(info.step)
        ctx.log(f"step {info.step}: non-finite loss or gradients, update skipped "
                f"({self.streak} in a row); batch cases: {ctx.cases_of(info.batch)}")
        if self.streak >= self.max_bad:
            raise FloatingPointError(
                f"{self.streak} consecutive training steps (up to step {info.step}) had a "
                f"non-finite loss or gradients ([Train] max_nonfinite_steps = {self.max_bad}); "
                f"stopped with the last good checkpoint {ctx.result.checkpoint or 'none'} "
                "kept. Lower [Train] learning_rate, set [Train] clip_norm, or check those cases "
                "for extreme values."
            )


def interval_means(values: list[dict[str, tf.Tensor]]) -> dict[str, float]:
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


class ProgressLog(Callback):
    """Every ``every`` steps (and at the first and last): one line of the interval's mean terms
    and steps/s, the same values as TensorBoard scalars, and a progress bar on a terminal. The
    rate counts training steps only (not checkpoints or validation), like :class:`Timing`."""

    def __init__(self, every: int) -> None:
        self.every = int(every)
        self.pending: list[dict[str, tf.Tensor]] = []
        self.skipped = 0
        self.seconds = 0.0

    def on_train_begin(self, ctx: TrainContext) -> None:
        train = ctx.train_cfg
        self.scheduled = train["lr_schedule"] != "constant" or int(train["warmup_steps"]) > 0
        self.progress = keras.utils.Progbar(
            ctx.total, verbose=1 if sys.stdout.isatty() and ctx.chief else 0, unit_name="step")
        self.progress.update(ctx.result.first_step)

    def _rates(self, ctx: TrainContext) -> dict[str, float]:
        # The rate the schedule gives at the optimiser's step (the next update's rate).
        return {("learning_rate" if len(ctx.optimizers) == 1 else f"learning_rate_{key}"):
                float(keras.ops.convert_to_numpy(opt.learning_rate))
                for key, opt in ctx.optimizers.items()}

    def on_step_end(self, ctx: TrainContext, info: StepInfo) -> None:
        step = info.step
        self.seconds += info.seconds
        if info.skipped:
            self.skipped += 1
        else:
            self.pending.append(info.values)  # tensors: read at the next log line
        if step % self.every == 0 or step == ctx.total or step == ctx.result.first_step + 1:
            self._log(ctx, info)
        self.progress.update(step)

    def _log(self, ctx: TrainContext, info: StepInfo) -> None:
        host = interval_means(self.pending)
        if not info.guarded and not math.isfinite(host["loss"]):
            # A method's own step has no skip: stop rather than train on garbage.
            raise FloatingPointError(
                f"non-finite training loss at step {info.step}: {host}; lower [Train] "
                "learning_rate or check the data for extreme values."
            )
        if self.skipped:
            host["skipped_steps"] = float(self.skipped)
        if self.scheduled:
            host.update(self._rates(ctx))
        steps = len(self.pending) + self.skipped
        rate = steps / max(self.seconds, 1e-9)
        ctx.log(format_line(info.step, ctx.total, host, rate, steps=len(self.pending)))
        self.pending, self.skipped, self.seconds = [], 0, 0.0
        if ctx.writer is not None:
            ctx.writer.scalars(info.step, host)
        ctx.result.last_values = host
        ctx.result.history.append((info.step, host))


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
        if value is None:
            if not self.warned:
                self.log(f"warning: [Train] keep_best needs the validation figure "
                         f"{self.key!r}, which this validation does not give "
                         f"({', '.join(values) or 'no validation data'})")
                self.warned = True
            return
        if not math.isfinite(value):
            # A figure the validation gives but could not compute at this step (e.g. a TRE
            # when every landmark left the image): this checkpoint cannot be compared.
            self.log(f"warning: [Train] keep_best: the validation {self.key} is {value} at step "
                     f"{step}; this checkpoint is not considered")
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


class Validation(Callback):
    """At every checkpoint (chief only, ``[Train] validate``): the method's validation figures,
    logged, written to TensorBoard and ``validation.csv``, and offered to the best checkpoint
    (``[Train] keep_best``) once the objective is final (after the last phase change)."""

    def __init__(self, checkpoint_name: str) -> None:
        self.checkpoint_name = checkpoint_name
        self.best: BestCheckpoint | None = None
        self.history: ValidationHistory | None = None

    def on_train_begin(self, ctx: TrainContext) -> None:
        if not ctx.chief:
            return
        if ctx.train_cfg["keep_best"] != "none":
            self.best = BestCheckpoint(ctx.train_cfg["keep_best"], ctx.checkpoint, ctx.run_dir,
                                       self.checkpoint_name, ctx.log)
            ctx.result.best = self.best.record
        self.history = ValidationHistory(ctx.run_dir, ctx.result.first_step, ctx.log)

    def on_checkpoint(self, ctx: TrainContext, step: int) -> None:
        if not ctx.chief or not ctx.train_cfg["validate"]:
            return
        values = ctx.method.validate()
        if values:
            ctx.result.validation = values
            ctx.log(f"validation at step {step}: "
                    + "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
            if ctx.writer is not None:
                ctx.writer.scalars(step, values, prefix="validation")
            if self.history is not None:
                self.history.add(step, values)
        # A checkpoint of an earlier phase is not trained on the final objective.
        if self.best is not None and step > max(ctx.restarts, default=0):
            self.best.offer(step, values)
            ctx.result.best = self.best.record


class Pictures(Callback):
    """At every checkpoint (chief only): the method's pictures as TensorBoard images."""

    def on_checkpoint(self, ctx: TrainContext, step: int) -> None:
        if ctx.chief and ctx.writer is not None:
            for tag, picture in ctx.method.pictures().items():
                ctx.writer.image(step, tag, picture)


class Timing(Callback):
    """Says that the first step builds the graph, and how long that took; at the end, the time
    per training step after the first (the step and its wait for input only) and the share
    spent waiting for input."""

    def __init__(self) -> None:
        self.seconds = self.waited = 0.0
        self.steps = 0
        self.first = True

    def on_train_begin(self, ctx: TrainContext) -> None:
        if ctx.result.first_step < ctx.total:
            ctx.log("building the training graph (the first step takes longer) ...")

    def on_step_end(self, ctx: TrainContext, info: StepInfo) -> None:
        if self.first:
            self.first = False
            ctx.log(f"first step done in {info.seconds:.1f} s (graph building included)")
            return
        self.seconds += info.seconds
        self.waited += info.waited
        self.steps += 1

    def on_train_end(self, ctx: TrainContext) -> None:
        if self.steps == 0:
            return
        result = ctx.result
        result.seconds_per_step = self.seconds / self.steps
        result.input_share = self.waited / max(self.seconds, 1e-12)
        ctx.log(f"{result.seconds_per_step:.3f} s per step, {100 * result.input_share:.1f}% of "
                "it waiting for input")

