"""Learning-rate schedules (``[Train] lr_schedule``, ``warmup_steps``): the rate at each step
against the closed forms, the weights a scheduled SGD run reaches against a hand-run recursion,
the rate in the progress lines, an exact resume, and the config check."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from labelreg import config
from labelreg.engine import train
from labelreg.engine.step import learning_rate_schedule
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
