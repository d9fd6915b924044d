"""The training loop's callbacks one by one, on a fake context (no training), and a method's own
callback through a real run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from labelreg._tf import tf
from labelreg.engine.callbacks import (
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
    interval_means,
)

TRAIN = {"lr_schedule": "constant", "warmup_steps": 0, "keep_best": "none", "validate": True,
         "freq_info_print": 2}


class FakeMethod:
    def __init__(self, validation=None, pictures=None):
        self.cfg = {"Train": dict(TRAIN)}
        self.saved_before = 0
        self.validation = validation or {}
        self.picture_set = pictures or {}

    def before_save(self):
        self.saved_before += 1

    def validate(self):
        return dict(self.validation)

    def pictures(self):
        return dict(self.picture_set)


class FakeManager:
    def __init__(self):
        self.saved: list[int] = []

    def save(self, checkpoint_number):
        self.saved.append(checkpoint_number)
        return f"/run/checkpoints/model.ckpt-{checkpoint_number}"


class FakeWriter:
    def __init__(self):
        self.scalar_calls: list[tuple[int, dict, str]] = []
        self.images: list[tuple[int, str]] = []

    def scalars(self, step, values, prefix=""):
        self.scalar_calls.append((step, dict(values), prefix))

    def image(self, step, tag, picture):
        self.images.append((step, tag))


def _context(tmp_path: Path, method=None, total: int = 10, first_step: int = 0,
             chief: bool = True) -> tuple[TrainContext, list[str]]:
    lines: list[str] = []
    ctx = TrainContext(
        method=method or FakeMethod(), log=lines.append,
        result=TrainResult(run_dir=tmp_path, first_step=first_step, last_step=first_step,
                           checkpoint=None),
        checkpoint=None, manager=FakeManager(), chief=chief, total=total, restarts=[],
        optimizers={}, writer=FakeWriter() if chief else None,
        cases_of=lambda batch: "case01, case02")
    return ctx, lines


def _info(step: int, loss: float = 1.0, skipped: bool = False, guarded: bool = True,
          seconds: float = 0.5, waited: float = 0.1) -> StepInfo:
    return StepInfo(step, {"loss": tf.constant(loss)}, {}, skipped, guarded, seconds, waited)


def test_checkpointing_saves_after_before_save_and_on_interrupt_only_when_unsaved(tmp_path):
    ctx, lines = _context(tmp_path)
    saver = Checkpointing()
    saver.on_checkpoint(ctx, 4)
    assert ctx.manager.saved == [4] and ctx.method.saved_before == 1
    assert ctx.result.checkpoint.endswith("-4") and lines == [f"saved {ctx.result.checkpoint}"]
    saver.on_interrupt(ctx, 4)  # step 4 is saved already
    assert ctx.manager.saved == [4]
    saver.on_interrupt(ctx, 6)
    assert ctx.manager.saved == [4, 6] and lines[-1].startswith("interrupted: saved")
    fresh, _ = _context(tmp_path, first_step=3)
    saver.on_interrupt(fresh, 3)  # nothing trained in this run
    assert fresh.manager.saved == []


def test_non_finite_guard_counts_a_streak_and_stops(tmp_path):
    ctx, lines = _context(tmp_path)
    guard = NonFiniteGuard(max_bad=2)
    guard.on_step_end(ctx, _info(1, skipped=True))
    assert ctx.result.skipped_steps == [1] and "case01, case02" in lines[-1]
    guard.on_step_end(ctx, _info(2))  # a good step ends the streak
    guard.on_step_end(ctx, _info(3, skipped=True))
    with pytest.raises(FloatingPointError, match="2 consecutive training steps"):
        guard.on_step_end(ctx, _info(4, skipped=True))
    assert ctx.result.skipped_steps == [1, 3, 4]


def test_interval_means_ignore_nan_terms_but_not_a_nan_loss():
    steps = [{"loss": tf.constant(1.0), "dice": tf.constant(float("nan"))},
             {"loss": tf.constant(3.0), "dice": tf.constant(0.5)}]
    assert interval_means(steps) == {"loss": 2.0, "dice": 0.5}
    steps.append({"loss": tf.constant(float("nan")), "dice": tf.constant(0.7)})
    means = interval_means(steps)
    assert math.isnan(means["loss"]) and means["dice"] == pytest.approx(0.6)


def test_progress_log_means_rates_and_scalars(tmp_path):
    ctx, lines = _context(tmp_path, total=5)
    progress = ProgressLog(every=2)
    progress.on_train_begin(ctx)
    progress.on_step_end(ctx, _info(1, loss=4.0, seconds=2.0))  # the first step is logged
    progress.on_step_end(ctx, _info(2, loss=1.0, seconds=0.25))
    progress.on_step_end(ctx, _info(3, skipped=True, seconds=0.25))
    progress.on_step_end(ctx, _info(4, loss=3.0, seconds=0.5))
    assert [step for step, _ in ctx.result.history] == [1, 2, 4]
    assert ctx.result.history[-1][1] == {"loss": 3.0, "skipped_steps": 1.0}
    # Steps per second over the steps of the interval (2 in 0.75 s), nothing between them.
    assert "2.67 steps/s" in lines[-1] and lines[-1].startswith("step 4/5")
    assert ctx.writer.scalar_calls[-1] == (4, {"loss": 3.0, "skipped_steps": 1.0}, "")
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 5"):
        progress.on_step_end(ctx, _info(5, loss=float("nan"), guarded=False))


def _validated_at_step_2(tmp_path: Path, values: dict, keep_best: str):
    """A chief's Validation callback with ``keep_best``, begun and run at step 2 on a method
    that validates to ``values``: ``(method, ctx, lines, validation)``."""
    method = FakeMethod(validation=values)
    method.cfg["Train"]["keep_best"] = keep_best
    ctx, lines = _context(tmp_path, method=method)
    ctx.checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    validation = Validation("model.ckpt")
    validation.on_train_begin(ctx)
    validation.on_checkpoint(ctx, 2)
    return method, ctx, lines, validation


def test_validation_logs_writes_history_and_keeps_the_best(tmp_path):
    method, ctx, lines, validation = _validated_at_step_2(
        tmp_path, {"dice": 0.5, "tre_mm": 4.0}, keep_best="dice")
    method.validation = {"dice": 0.4, "tre_mm": 3.0}
    validation.on_checkpoint(ctx, 4)
    assert ctx.result.validation == {"dice": 0.4, "tre_mm": 3.0}
    assert "validation at step 4: dice 0.4000  tre_mm 3.0000" in lines
    assert ctx.result.best["step"] == 2 and ctx.result.best["value"] == 0.5
    assert (tmp_path / "validation.csv").read_text().splitlines()[0] == "step,dice,tre_mm"
    assert [c[2] for c in ctx.writer.scalar_calls] == ["validation", "validation"]
    # Not on a worker that is not the chief.
    worker, worker_lines = _context(tmp_path / "w", method=method, chief=False)
    Validation("model.ckpt").on_checkpoint(worker, 2)
    assert worker_lines == []


def test_keep_best_skips_a_nan_figure_and_says_why(tmp_path):
    """A TRE that could not be computed (every landmark left the image) is NaN: that
    checkpoint is not kept, the warning says the figure is NaN at that step (not that the
    validation lacks it), and a later finite figure is kept."""
    method, ctx, lines, validation = _validated_at_step_2(
        tmp_path, {"dice": 0.0, "tre_mm": float("nan")}, keep_best="tre")
    assert ("warning: [Train] keep_best: the validation tre_mm is nan at step 2; this "
            "checkpoint is not considered") in lines
    assert not any("does not give" in line for line in lines)
    method.validation = {"dice": 0.3, "tre_mm": 9.0}
    validation.on_checkpoint(ctx, 4)
    assert ctx.result.best["step"] == 4 and ctx.result.best["value"] == 9.0


def test_pictures_go_to_tensorboard(tmp_path):
    ctx, _ = _context(tmp_path, method=FakeMethod(pictures={"a": np.zeros((2, 2, 3))}))
    Pictures().on_checkpoint(ctx, 6)
    assert ctx.writer.images == [(6, "a")]


def test_timing_leaves_out_the_first_step_and_says_so(tmp_path):
    ctx, lines = _context(tmp_path)
    timing = Timing()
    timing.on_train_begin(ctx)
    assert "building the training graph" in lines[0]
    timing.on_step_end(ctx, _info(1, seconds=30.0, waited=0.0))
    assert lines[1] == "first step done in 30.0 s (graph building included)"
    for step in (2, 3):
        timing.on_step_end(ctx, _info(step, seconds=0.5, waited=0.1))
    timing.on_train_end(ctx)
    assert ctx.result.seconds_per_step == pytest.approx(0.5)
    assert ctx.result.input_share == pytest.approx(0.2)
    assert lines[-1] == "0.500 s per step, 20.0% of it waiting for input"


def test_a_method_adds_its_own_callback_to_a_real_run(tmp_path):
    from labelreg import config
    from labelreg.engine import train
    from labelreg.methods.label_driven import LabelDriven
    from tests.test_pipeline_e2e import GLOBAL, write_config, write_dataset

    dataset = write_dataset(tmp_path / "data", num_cases=2)
    events: list[tuple[str, int]] = []

    class Recorder(Callback):
        def on_train_begin(self, ctx):
            events.append(("begin", ctx.result.first_step))

        def on_step_end(self, ctx, info):
            events.append(("step", info.step))

        def on_checkpoint(self, ctx, step):
            # Runs after the engine's checkpointing: the checkpoint of this step exists.
            assert ctx.result.checkpoint.endswith(f"-{step}")
            events.append(("checkpoint", step))

        def on_train_end(self, ctx):
            events.append(("end", ctx.result.last_step))

    class Recording(LabelDriven):
        def callbacks(self):
            return [Recorder()]

    ini = write_config(tmp_path / "x.ini", dataset, Network=GLOBAL,
                       Train={"total_iterations": "3", "freq_model_save": "2"})
    result = train(Recording(config.load(ini), log=lambda line: None))
    assert result.last_step == 3
    assert events == [("begin", 0), ("step", 1), ("step", 2), ("checkpoint", 2), ("step", 3),
                      ("checkpoint", 3), ("end", 3)]
