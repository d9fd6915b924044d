"""``[Train] strategy``: one step on two mirrored logical CPUs equals the single-device step on
the same global batch, and two worker processes on this machine train together
(``multi_worker``) and end with the same weights.

Logical devices must be configured before TensorFlow initialises, so each case runs in a fresh
Python process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labelreg._tf import tf
from labelreg.engine.checkpoints import CHECKPOINT_SUBDIR
from tests.test_pipeline_e2e import write_config, write_dataset

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}

MIRRORED_SCRIPT = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from labelreg.engine import train
from labelreg.methods.registry import get_method, load_config

for ini in sys.argv[1:]:
    name, cfg = load_config(ini)
    result = train(get_method(name)(cfg, log=lambda line: None))
    print("LOSS", result.history[0][1]["loss"])
"""

WORKER_SCRIPT = """
import sys
import numpy as np
from labelreg.engine import train
from labelreg.methods.registry import get_method, load_config

name, cfg = load_config(sys.argv[1])
method = get_method(name)(cfg)
result = train(method)
np.savez(sys.argv[2], *[w for m in method.models.values() for w in m.get_weights()])
print("done: step", result.last_step)
"""


def _variables(run: Path) -> dict[str, np.ndarray]:
    latest = tf.train.latest_checkpoint(str(run / CHECKPOINT_SUBDIR))
    reader = tf.train.load_checkpoint(latest)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(latest)
            if name.startswith("model/") and "OPTIMIZER_SLOT" not in name}


def _config(tmp_path: Path, data: Path, name: str, **train: str) -> Path:
    values = {"total_iterations": "1", "minibatch_size": "4", "freq_info_print": "1",
              "optimizer": "sgd", "momentum": "0", "learning_rate": "0.1",
              "freq_model_save": "1", "validate": "false", "seed": "3",
              "file_model_save": str(tmp_path / name / "model.ckpt"), **train}
    return write_config(tmp_path / f"{name}.ini", data, Train=values)


# Two virtual devices in a fresh process, two trainings: about a minute (make test-slow).
@pytest.mark.slow
def test_mirrored_step_equals_single_device_step(tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=4)
    single = _config(tmp_path, data, "single")
    mirrored = _config(tmp_path, data, "mirrored", strategy="mirrored")
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(single), str(mirrored)],
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [float(line.split()[1]) for line in out.stdout.splitlines()
              if line.startswith("LOSS")]
    assert len(losses) == 2
    # Same batch, same augmentation, batch statistics over the global batch: the loss agrees
    # to float32 rounding of a differently ordered sum.
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    # Plain SGD, so the update is the gradient itself (Adam's first step, g / (|g| + eps),
    # would magnify the rounding of gradients that nearly cancel over the batch): the summed
    # replica gradients equal the one-device gradient to float32 rounding (of sums over
    # thousands of voxels: 1e-4 of each array's largest value; a wrong loss scaling would be
    # off by a factor of two).
    one, two = _variables(tmp_path / "single"), _variables(tmp_path / "mirrored")
    assert one.keys() == two.keys() and one
    for name in one:
        scale = float(np.max(np.abs(one[name]))) or 1.0
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-4 * scale,
                                   err_msg=name)
    # The step moved the weights: the zero-initialised DDF heads are no longer zero, so the
    # comparison is not between two untouched networks.
    assert any(np.any(v != 0) for n, v in one.items() if "ddf" in n and "kernel" in n)


def test_the_global_batch_must_split_over_the_replicas():
    from types import SimpleNamespace

    from labelreg.engine.distribute import check_global_batch
    from labelreg.errors import ConfigError

    check_global_batch(SimpleNamespace(num_replicas_in_sync=2), 4)
    check_global_batch(SimpleNamespace(num_replicas_in_sync=1), 3)
    with pytest.raises(ConfigError, match=r"minibatch_size = 3 must be a multiple of the 2 "
                                          r"replicas.*\[Train\] strategy"):
        check_global_batch(SimpleNamespace(num_replicas_in_sync=2), 3)


# The same error from a real mirrored run, in a fresh process (make test-slow).
@pytest.mark.slow
def test_minibatch_not_divisible_by_replicas_is_a_config_error(tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=4)
    ini = _config(tmp_path, data, "odd", strategy="mirrored", minibatch_size="3")
    out = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(ini)], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "minibatch_size = 3 must be a multiple of the 2 replicas" in out.stderr


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_two_worker_processes_train_together(tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=4)
    ini = _config(tmp_path, data, "cluster", strategy="multi_worker", total_iterations="4",
                  freq_model_save="2")
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(tf_config)}
        log = (tmp_path / f"worker{index}.log").open("w")
        processes.append((subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(ini), str(tmp_path / f"weights{index}")],
            env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for process, log in processes:
        process.wait(timeout=900)
        log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p, _ in processes] == [0, 0], "\n".join(logs)
    assert "2 replicas" in logs[0] and "[worker 1]" in logs[1]
    assert all("done: step 4" in text for text in logs)
    # Only the chief (worker 0) writes the run folder and its checkpoints.
    assert tf.train.latest_checkpoint(str(tmp_path / "cluster" / CHECKPOINT_SUBDIR)).endswith("-4")
    assert not list(tmp_path.glob("cluster/checkpoints/*worker*"))
    weights = [np.load(tmp_path / f"weights{i}.npz") for i in range(2)]
    assert len(weights[0].files) == len(weights[1].files) > 0
    for key in weights[0].files:  # the same weights on both workers, bit for bit
        np.testing.assert_array_equal(weights[1][key], weights[0][key], err_msg=key)
