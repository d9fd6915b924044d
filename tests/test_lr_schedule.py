"""Learning-rate schedules (``[Train] lr_schedule``, ``warmup_steps``): the rate at each step
against the closed forms, the weights a scheduled SGD run reaches against a hand-run recursion,
the rate in the progress lines, an exact resume, and the config check; and a method's phases
(``schedule_restarts``, ``phase_loss_terms``): a schedule that starts again at each restart, one
objective per phase, and a best checkpoint taken from the last phase only."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from labelreg import config
from labelreg.engine import train
from labelreg.engine.step import PhasedSchedule, learning_rate_schedule
from tests.test_training_faults import Faulty, _faulty_method, _toy_config, _weights  # noqa: F401


def _rate(schedule, step: int) -> float:
    if isinstance(schedule, float):
        return schedule
    return float(keras.ops.convert_to_numpy(schedule(step)))


def _expected(step: int, peak: float, kind: str, warmup: int, total: int) -> float:
    """The schedule written out: linear warm-up from 0, then constant or a half cosine to 0."""
    if step < warmup:
        return peak * step / warmup
    if kind == "constant":
        return peak
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize(("kind", "warmup"), [("constant", 0), ("constant", 4), ("cosine", 0),
                                              ("cosine", 5)])
def test_rate_at_each_step_follows_the_closed_form(kind, warmup):
    total, peak = 20, 3e-4
    schedule = learning_rate_schedule(peak, kind, warmup, total)
    if kind == "constant" and warmup == 0:
        assert schedule == peak  # a plain number: the optimiser is exactly as before
    for step in range(total + 1):
        assert _rate(schedule, step) == pytest.approx(_expected(step, peak, kind, warmup, total),
                                                      rel=1e-5, abs=1e-12), step
    if kind == "cosine":
        assert _rate(schedule, total) == pytest.approx(0.0, abs=1e-12)
        assert _rate(schedule, warmup) == pytest.approx(peak, rel=1e-6)


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        learning_rate_schedule(1e-3, "cosine", 10, 10)
    with pytest.raises(ValueError, match="'constant' or 'cosine'"):
        learning_rate_schedule(1e-3, "linear", 0, 10)


def _sgd_run(tmp_path, **train_keys):
    lines: list[str] = []
    cfg = _toy_config(tmp_path, optimizer="sgd", momentum=0.0, learning_rate=0.2,
                      freq_model_save=3, **train_keys)
    return train(Faulty(cfg, log=lines.append)), lines


@pytest.mark.parametrize(("kind", "warmup"), [("constant", 2), ("cosine", 0), ("cosine", 2)])
def test_scheduled_sgd_reaches_the_hand_run_weights(tmp_path, kind, warmup):
    # The toy fits w to 3 with loss (w - 3)^2: plain SGD updates w -= rate_k * 2 (w - 3).
    total = 6
    result, lines = _sgd_run(tmp_path, total_iterations=total, lr_schedule=kind,
                             warmup_steps=warmup)
    w = 0.0
    for k in range(total):
        w -= _expected(k, 0.2, kind, warmup, total) * 2.0 * (w - 3.0)
    kernel, iterations = _weights(result)
    assert iterations == total
    np.testing.assert_allclose(kernel.ravel(), [w], rtol=1e-5)
    # Each progress line shows the rate of the next update.
    for step in range(1, total + 1):
        line = next(text for text in lines if text.startswith(f"step {step}/"))
        shown = float(line.split("learning_rate ")[1].split()[0])
        assert shown == pytest.approx(_expected(step, 0.2, kind, warmup, total), rel=3e-3,
                                      abs=1e-9), line


def test_constant_rate_adds_nothing_to_the_progress_lines(tmp_path):
    _, lines = _sgd_run(tmp_path, total_iterations=2)
    assert lines and not any("learning_rate" in line for line in lines)


def test_interrupted_scheduled_run_resumes_on_its_schedule(tmp_path):
    straight, _ = _sgd_run(tmp_path / "a", total_iterations=6, lr_schedule="cosine",
                           warmup_steps=2)

    def interrupt(line: str) -> None:
        if line.startswith("step 4/"):
            raise KeyboardInterrupt

    cfg = _toy_config(tmp_path / "b", optimizer="sgd", momentum=0.0, learning_rate=0.2,
                      freq_model_save=3, total_iterations=6, lr_schedule="cosine",
                      warmup_steps=2)
    assert train(Faulty(cfg, log=interrupt)).interrupted
    resumed = train(Faulty(cfg, log=print))
    assert resumed.first_step == 4 and resumed.last_step == 6
    np.testing.assert_allclose(_weights(resumed)[0], _weights(straight)[0], rtol=1e-6)


def test_warmup_must_be_shorter_than_the_run(tmp_path):
    with pytest.raises(config.ConfigError, match=r"warmup_steps.*total_iterations \(6\)"):
        _toy_config(tmp_path, total_iterations=6, warmup_steps=6)
    with pytest.raises(config.ConfigError, match="lr_schedule"):
        _toy_config(tmp_path, lr_schedule="step")


# ---- phases: the schedule starts again at each restart, one objective per phase --------------


@pytest.mark.parametrize(("kind", "warmup"), [("constant", 3), ("cosine", 0), ("cosine", 2)])
def test_restarted_schedule_runs_the_schedule_in_each_phase(kind, warmup):
    peak, total, restarts = 1e-3, 24, (10, 17)
    schedule = learning_rate_schedule(peak, kind, warmup, total, restarts=restarts)
    assert isinstance(schedule, PhasedSchedule)
    edges = [0, *restarts, total]
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        for step in range(start, end):
            expected = _expected(step - start, peak, kind, warmup, end - start)
            assert _rate(schedule, step) == pytest.approx(expected, rel=1e-5, abs=1e-12), step
    # Serialised with the optimiser's config and read back, it gives the same rates.
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    for step in range(total):
        assert _rate(copy, step) == pytest.approx(_rate(schedule, step), rel=1e-6)


def test_restarts_of_a_constant_rate_and_bad_restarts():
    assert learning_rate_schedule(1e-3, "constant", 0, 10, restarts=(4,)) == 1e-3
    for bad in ((0,), (10,), (12,)):
        with pytest.raises(ValueError, match="restarts must lie in"):
            learning_rate_schedule(1e-3, "cosine", 0, 10, restarts=bad)
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        learning_rate_schedule(1e-3, "cosine", 3, 10, restarts=(2,))  # a 2-step phase
    with pytest.raises(ValueError, match="one phase more"):
        PhasedSchedule([1e-3], [4])


class Phased(Faulty):
    """The toy in two phases: up to step 3 it fits its weight to 1, then to 3."""

    def schedule_restarts(self):
        return (3,)

    def phase_loss_terms(self, phase):
        if phase == 0:
            return lambda batch: {"loss": tf.square(self.models["model"](batch["x"])[:, 0]
                                                    - 1.0)}
        return self.loss_terms


def test_phases_train_their_own_objectives_on_restarted_rates(tmp_path):
    total, restart = 6, 3
    cfg = _toy_config(tmp_path, optimizer="sgd", momentum=0.0, learning_rate=0.2,
                      total_iterations=total, lr_schedule="cosine", warmup_steps=1)
    result = train(Phased(cfg, log=print))
    w = 0.0
    for k in range(total):
        start, end, target = (0, restart, 1.0) if k < restart else (restart, total, 3.0)
        w -= _expected(k - start, 0.2, "cosine", 1, end - start) * 2.0 * (w - target)
    kernel, iterations = _weights(result)
    assert iterations == total
    np.testing.assert_allclose(kernel.ravel(), [w], rtol=1e-5)


def test_interrupted_phased_run_resumes_in_its_phase(tmp_path):
    keys = dict(optimizer="sgd", momentum=0.0, learning_rate=0.2, total_iterations=6,
                lr_schedule="cosine", warmup_steps=1, freq_model_save=2)
    straight = train(Phased(_toy_config(tmp_path / "a", **keys), log=print))

    def interrupt(line: str) -> None:
        if line.startswith("step 2/"):  # inside the first phase
            raise KeyboardInterrupt

    cfg = _toy_config(tmp_path / "b", **keys)
    assert train(Phased(cfg, log=interrupt)).interrupted
    resumed = train(Phased(cfg, log=print))
    assert resumed.first_step == 2 and resumed.last_step == 6
    np.testing.assert_allclose(_weights(resumed)[0], _weights(straight)[0], rtol=1e-6)


def test_best_checkpoint_is_taken_from_the_last_phase(tmp_path):
    # Checks at steps 2, 4, 6 score 0.9, 0.5, 0.6: step 2 is the highest but precedes the
    # restart at 3, so keep_best = dice keeps step 6.
    cfg = _toy_config(tmp_path, total_iterations=6, validation="[0.9, 0.5, 0.6]",
                      keep_best="dice")
    result = train(Phased(cfg, log=print))
    assert result.best["step"] == 6
    record = json.loads((tmp_path / "run" / "best" / "best.json").read_text())
    assert record["step"] == 6 and record["value"] == 0.6
