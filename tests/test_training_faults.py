"""Faults during training: non-finite steps are skipped and named, too many stop the run with the
last good checkpoint kept, a SIGKILLed run resumes to the same weights, and unreadable data or
a bad strategy setting fail before a run folder exists."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from labelreg import config
from labelreg._tf import tf
from labelreg.cli import train_main
from labelreg.config import Key, method_section, parse, train_section
from labelreg.engine import train
from labelreg.engine.checkpoints import CHECKPOINT_SUBDIR
from labelreg.methods.base import Method
from labelreg.methods.registry import METHODS, register_method
from tests.test_pipeline_e2e import write_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# A toy method whose loss (or only its gradient) turns NaN at chosen steps.
# --------------------------------------------------------------------------------------------


class Faulty(Method):
    """Fits one weight to 3 by least squares; at ``[Toy] bad_steps`` the loss is NaN, at
    ``[Toy] bad_gradient_steps`` the loss is finite but its gradient is not."""

    name = "faulty-test"

    @classmethod
    def load_config(cls, path, overrides=()):
        schema = {
            "Method": method_section(cls.name),
            "Toy": {"bad_steps": Key("int_list", (), "Steps with a NaN loss."),
                    "bad_gradient_steps": Key("int_list", (), "Steps with a NaN gradient."),
                    "validation": Key("float_list", (), "Validation figure at each check.")},
            "Train": train_section(learning_rate=0.1, minibatch_size=2, freq_info_print=1,
                                   freq_model_save=2, total_iterations=6),
        }
        cfg = parse(path, schema, overrides)
        config.derive_run_paths(cfg)
        config.check_train(cfg)
        return cfg

    def build(self):
        model = keras.Sequential([keras.layers.Dense(1, use_bias=False,
                                                     kernel_initializer="zeros")])
        model(np.ones((1, 1), np.float32))
        return {"model": model}

    def validate(self):
        scripted = self.cfg["Toy"]["validation"]
        if not scripted:
            return {}
        self.checks = getattr(self, "checks", 0) + 1
        value = scripted[self.checks - 1]
        return {"dice": value, "tre_mm": value}

    def case_names(self, indices):
        return [("left.nii.gz", "right.nii.gz")[i] for i in indices]

    def train_dataset(self, seed, start_step, total_steps):
        return tf.data.Dataset.range(start_step + 1, total_steps + 1).map(
            lambda step: {"x": tf.ones([2, 1]), "case_index": tf.constant([0, 1]), "step": step})

    def loss_terms(self, batch):
        y = self.models["model"](batch["x"])[:, 0]
        loss = tf.square(y - 3.0)
        toy = self.cfg["Toy"]
        if toy["bad_steps"]:
            bad = tf.reduce_any(tf.equal(batch["step"], tf.constant(toy["bad_steps"], tf.int64)))
            loss = tf.where(bad, tf.fill(tf.shape(loss), np.nan), loss)
        if toy["bad_gradient_steps"]:
            bad = tf.reduce_any(tf.equal(batch["step"],
                                         tf.constant(toy["bad_gradient_steps"], tf.int64)))
            # sqrt(0) is finite, its gradient is not.
            loss += tf.where(bad, tf.sqrt(tf.square(y - y)), tf.zeros_like(y))
        return {"loss": loss}


@pytest.fixture(autouse=True, scope="module")
def _faulty_method():
    register_method(Faulty)
    yield
    METHODS.remove(Faulty.name)


def _toy_config(tmp_path: Path, **train: object) -> config.Config:
    toy = {k: train.pop(k) for k in ("bad_steps", "bad_gradient_steps", "validation")
           if k in train}
    lines = "".join(f"{k} = {v}\n" for k, v in train.items())
    toy_lines = "".join(f"{k} = {v}\n" for k, v in toy.items())
    tmp_path.mkdir(parents=True, exist_ok=True)
    ini = tmp_path / "toy.ini"
    ini.write_text(f"[Method]\nname = faulty-test\n\n[Toy]\n{toy_lines}\n[Train]\n"
                   f"dir_run = {tmp_path / 'run'}\n{lines}")
    return Faulty.load_config(ini)


def _weights(result) -> tuple[np.ndarray, int]:
    reader = tf.train.load_checkpoint(result.checkpoint)
    names = [n for n, _ in tf.train.list_variables(result.checkpoint)]
    kernel = next(n for n in names if n.startswith("model/") and "kernel" in n
                  and "OPTIMIZER" not in n)
    iterations = next(n for n in names if n.startswith("optimizer/") and "iteration" in n)
    return reader.get_tensor(kernel), int(reader.get_tensor(iterations))


def test_nonfinite_step_is_skipped_and_named(tmp_path):
    lines: list[str] = []
    bad = train(Faulty(_toy_config(tmp_path / "a", total_iterations=3, bad_steps="[3]"),
                       log=lines.append))
    clean = train(Faulty(_toy_config(tmp_path / "b", total_iterations=2), log=print))
    assert bad.skipped_steps == [3] and bad.last_step == 3
    kernel_bad, iterations_bad = _weights(bad)
    kernel_clean, iterations_clean = _weights(clean)
    # The skipped step changed nothing: not the weights, not Adam's step count.
    np.testing.assert_array_equal(kernel_bad, kernel_clean)
    assert iterations_bad == iterations_clean == 2
    named = [line for line in lines if "update skipped" in line]
    assert len(named) == 1 and "step 3" in named[0]
    assert "left.nii.gz, right.nii.gz" in named[0]
    assert any("skipped_steps 1" in line for line in lines)


def test_nonfinite_gradient_with_finite_loss_is_skipped(tmp_path):
    lines: list[str] = []
    result = train(Faulty(_toy_config(tmp_path, total_iterations=4, bad_gradient_steps="[2]"),
                          log=lines.append))
    assert result.skipped_steps == [2]
    assert np.isfinite(result.last_values["loss"])
    assert _weights(result)[1] == 3


def test_consecutive_nonfinite_steps_stop_and_keep_last_good_checkpoint(tmp_path):
    cfg = _toy_config(tmp_path, total_iterations=8, bad_steps="[3, 4, 5, 6]",
                      max_nonfinite_steps=3)
    lines: list[str] = []
    with pytest.raises(FloatingPointError, match=r"3 consecutive .*step 5.*max_nonfinite_steps"):
        train(Faulty(cfg, log=lines.append))
    checkpoints = tf.train.get_checkpoint_state(str(tmp_path / "run" / CHECKPOINT_SUBDIR))
    # Saved at step 2; step 4 (all skipped since 2) may be saved too, with step-2 weights.
    latest = checkpoints.model_checkpoint_path
    assert latest.endswith(("-2", "-4"))
    reader = tf.train.load_checkpoint(latest)
    iterations = [n for n, _ in tf.train.list_variables(latest)
                  if n.startswith("optimizer/") and "iteration" in n]
    assert int(reader.get_tensor(iterations[0])) == 2
    assert sum("update skipped" in line for line in lines) == 3


def test_cli_reports_the_stop_with_exit_code_2(tmp_path, capsys):
    cfg = _toy_config(tmp_path, total_iterations=4, bad_steps="[1, 2]", max_nonfinite_steps=2)
    assert train_main([str(cfg.path)]) == 2
    assert "max_nonfinite_steps" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# keep_best: the checkpoint with the best validation figure is kept beside the latest ones.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("choice", "best_step"), [("dice", 4), ("tre", 2)])
def test_keep_best_keeps_the_best_validated_checkpoint(tmp_path, choice, best_step):
    # Checks at steps 2, 4, 6 score 0.5, 0.8, 0.6: dice keeps step 4, tre (lower) step 2.
    cfg = _toy_config(tmp_path, total_iterations=6, validation="[0.5, 0.8, 0.6]",
                      keep_best=choice)
    result = train(Faulty(cfg, log=print))
    assert result.best["step"] == best_step
    best_dir = tmp_path / "run" / "best"
    record = json.loads((best_dir / "best.json").read_text())
    assert record["step"] == best_step and record["value"] == (0.8 if choice == "dice" else 0.5)
    kept = tf.train.latest_checkpoint(str(best_dir))
    regular = str(tmp_path / "run" / CHECKPOINT_SUBDIR / f"model.ckpt-{best_step}")
    for name, _ in tf.train.list_variables(kept):
        if name.startswith("model/"):
            np.testing.assert_array_equal(tf.train.load_checkpoint(kept).get_tensor(name),
                                          tf.train.load_checkpoint(regular).get_tensor(name))
    # The best folder is a checkpoint a user can name for inference or export.
    from labelreg.engine.checkpoints import resolve_checkpoint

    assert resolve_checkpoint(best_dir) == (kept, tmp_path / "run")


def test_keep_best_survives_a_resume(tmp_path):
    cfg = _toy_config(tmp_path, total_iterations=4, validation="[0.9, 0.7]", keep_best="dice")
    train(Faulty(cfg, log=print))
    longer = _toy_config(tmp_path, total_iterations=6, validation="[0.8]", keep_best="dice")
    result = train(Faulty(longer, log=print))  # resumes at 4; its one check scores 0.8
    assert result.best["step"] == 2 and result.best["value"] == 0.9
    # validation.csv holds every validated checkpoint of both commands, for learning curves.
    from labelreg.curves import read_history

    history = read_history(tmp_path / "run")
    assert history["step"] == [2.0, 4.0, 6.0]
    assert history["dice"] == [0.9, 0.7, 0.8]


def test_validation_history_drops_rows_after_the_resumed_checkpoint(tmp_path):
    from labelreg.engine.callbacks import ValidationHistory

    lines: list[str] = []
    first = ValidationHistory(tmp_path, 0, lines.append)
    for step, dice in ((2, 0.5), (4, 0.6), (6, 0.7)):
        first.add(step, {"dice": dice, "tre_mm": 10.0 - step})
    # A run killed after validating step 6 but resumed from the step-4 checkpoint.
    again = ValidationHistory(tmp_path, 4, lines.append)
    again.add(6, {"dice": 0.65, "tre_mm": 3.5})
    text = (tmp_path / "validation.csv").read_text()
    assert text.splitlines() == ["step,dice,tre_mm", "2,0.5,8.0", "4,0.6,6.0", "6,0.65,3.5"]
    (tmp_path / "validation.csv").write_bytes(b"\x00\xff garbage")
    ValidationHistory(tmp_path, 4, lines.append)
    assert any("validation.csv is unreadable" in line for line in lines)


def test_keep_best_without_validation_is_a_config_error(tmp_path):
    with pytest.raises(config.ConfigError, match="keep_best"):
        _toy_config(tmp_path, keep_best="dice", validate="false")


# --------------------------------------------------------------------------------------------
# Data and settings that fail before any run folder exists.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


def _copy_dataset(source: Path, target: Path) -> Path:
    for folder in source.iterdir():
        (target / folder.name).mkdir(parents=True)
        for file in folder.iterdir():
            (target / folder.name / file.name).write_bytes(file.read_bytes())
    return target


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_training_data_leave_no_run_folder(tmp_path, dataset, capsys, damage):
    data = _copy_dataset(dataset, tmp_path / "data")
    victim = data / "fixed_images" / "case02.nii.gz"
    raw = victim.read_bytes()
    # Truncated: a valid header, then the compressed stream stops; garbage: not gzip at all.
    victim.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"not a volume" * 50)
    ini = write_config(tmp_path / "cfg" / "run.ini", data)
    assert train_main([str(ini)]) == 2
    err = capsys.readouterr().err
    assert "case02.nii.gz" in err
    assert not (tmp_path / "cfg" / "run").exists()


def test_multi_worker_without_tf_config_is_a_config_error(tmp_path, dataset, capsys,
                                                          monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    ini = write_config(tmp_path / "run.ini", dataset, Train={"strategy": "multi_worker"})
    assert train_main([str(ini)]) == 2
    assert "TF_CONFIG" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_tf_config_is_named(tmp_path, dataset, capsys, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    ini = write_config(tmp_path / "run.ini", dataset, Train={"strategy": "multi_worker"})
    assert train_main([str(ini)]) == 2
    assert "TF_CONFIG" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# SIGKILL at a random step, rerun: the same final weights as an uninterrupted run.
# --------------------------------------------------------------------------------------------


def _final_variables(run: Path) -> dict[str, np.ndarray]:
    latest = tf.train.latest_checkpoint(str(run / CHECKPOINT_SUBDIR))
    reader = tf.train.load_checkpoint(latest)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(latest)
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH" and not name.startswith("save_counter")}


def _sigkill_config(tmp_path: Path, dataset: Path, name: str) -> Path:
    return write_config(tmp_path / name / "run.ini", dataset, Train={
        "total_iterations": "10", "freq_model_save": "3", "freq_info_print": "1",
        "deterministic": "true", "seed": "5", "validate": "false",
        "file_model_save": str(tmp_path / name / "run" / "model.ckpt")})


# Three training.py processes, one killed mid-run: about 40 s (make test-slow).
@pytest.mark.slow
def test_sigkill_then_rerun_reaches_the_uninterrupted_weights(tmp_path, dataset):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "training.py")]
    whole = _sigkill_config(tmp_path, dataset, "whole")
    subprocess.run([*command, str(whole)], check=True, env=env, capture_output=True)

    killed = _sigkill_config(tmp_path, dataset, "killed")
    kill_at = random.Random(os.getpid()).randint(4, 8)  # after the step-3 checkpoint
    process = subprocess.Popen([*command, str(killed)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(f"step {kill_at}/") or f"step {kill_at} " in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    rerun = subprocess.run([*command, str(killed)], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from" in rerun.stdout
    expected, actual = _final_variables(whole.parent / "run"), _final_variables(
        killed.parent / "run")
    assert expected.keys() == actual.keys()
    for name in expected:  # bitwise: deterministic ops, data and augmentation from (seed, step)
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)

