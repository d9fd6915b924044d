"""FusedAdam against Keras's Adam: the same weights and slots step by step, the same checkpoint,
one kernel per variable in the graph, and the same update under a mirrored strategy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from labelreg.engine.adam import FusedAdam
from labelreg.engine.step import make_optimizer

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(3, 3, 3, 2, 4), (4,), (5, 6)]


def _variables(rng: np.random.Generator) -> list[keras.Variable]:
    return [keras.Variable(rng.normal(size=s).astype(np.float32)) for s in SHAPES]


def _gradients(variables):
    # Gradients that change with the weights, so momentum and velocity differ per step.
    return [tf.sin(v) + 0.3 * tf.cos(3.0 * v) for v in variables]


def _run(cls, rng_seed: int, steps: int, compiled: bool, **kwargs):
    variables = _variables(np.random.default_rng(rng_seed))
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.5)
    optimizer = cls(learning_rate=schedule, **kwargs)
    optimizer.build(variables)

    def step():
        optimizer.apply_gradients(zip(_gradients(variables), variables, strict=True))

    fn = tf.function(step, autograph=False) if compiled else step
    for _ in range(steps):
        fn()
    return variables, optimizer


@pytest.mark.parametrize("compiled", [False, True])
def test_weights_and_slots_follow_keras_adam(compiled):
    keras_vars, keras_opt = _run(keras.optimizers.Adam, 0, 6, compiled)
    fused_vars, fused_opt = _run(FusedAdam, 0, 6, compiled)
    assert int(fused_opt.iterations) == 6
    for a, b in zip(keras_vars + keras_opt.variables, fused_vars + fused_opt.variables,
                    strict=True):
        # Weights up to about 3 (one float32 ulp: 2.4e-7) move by up to 0.05 a step; the two
        # forms round differently by 1-2 ulp a step (4.8e-7 after one step, 1.9e-6 after six).
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=3e-6)
    # The same slots in the same order (names carry a per-process counter, kinds do not).
    kinds = [[v.path.rsplit("_", 1)[-1].rsplit("/", 1)[-1] for v in o.variables]
             for o in (keras_opt, fused_opt)]
    assert kinds[0] == kinds[1] and fused_opt.variables[0].path.startswith("adam")


def test_amsgrad_uses_the_keras_update():
    keras_vars, _ = _run(keras.optimizers.Adam, 1, 4, True, amsgrad=True)
    fused_vars, _ = _run(FusedAdam, 1, 4, True, amsgrad=True)
    for a, b in zip(keras_vars, fused_vars, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=3e-6)


def test_one_kernel_per_variable_and_a_smaller_graph():
    def graph(cls):
        variables = _variables(np.random.default_rng(2))
        optimizer = cls(learning_rate=1e-3)
        optimizer.build(variables)
        fn = tf.function(lambda: optimizer.apply_gradients(
            zip(_gradients(variables), variables, strict=True)), autograph=False)
        return fn.get_concrete_function().graph.get_operations()

    fused, plain = graph(FusedAdam), graph(keras.optimizers.Adam)
    assert sum(op.type == "ResourceApplyAdam" for op in fused) == len(SHAPES)
    assert sum(op.type == "Pow" for op in fused) == 2  # the beta powers, built once per call
    assert len(fused) < len(plain) / 2


def test_the_training_optimiser_is_fused():
    assert isinstance(make_optimizer("adam", 1e-3), FusedAdam)


def test_a_keras_adam_checkpoint_resumes_with_the_fused_update(tmp_path):
    # A run saved before the fused update (Keras's Adam) restores into FusedAdam and goes on
    # as Keras's would.
    variables, optimizer = _run(keras.optimizers.Adam, 3, 3, True)
    path = tf.train.Checkpoint(weights=variables, optimizer=optimizer).save(str(tmp_path / "c"))
    runs = {}
    for cls in (keras.optimizers.Adam, FusedAdam):
        restored = _variables(np.random.default_rng(99))
        opt = cls(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.5))
        opt.build(restored)
        tf.train.Checkpoint(weights=restored, optimizer=opt).restore(path).assert_consumed()
        assert int(opt.iterations) == 3
        for _ in range(2):
            opt.apply_gradients(zip(_gradients(restored), restored, strict=True))
        runs[cls] = restored
    for a, b in zip(runs[keras.optimizers.Adam], runs[FusedAdam], strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=3e-6)


MIRRORED_SCRIPT = """
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from labelreg.engine.adam import FusedAdam

def run(cls, strategy):
    with strategy.scope():
        variables = [tf.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4) * (i + 1))
                     for i in range(3)]
        optimizer = cls(learning_rate=0.05)
        optimizer.build(variables)

    @tf.function(autograph=False)
    def step():
        def replica():
            grads = [tf.sin(v) + 0.3 * tf.cos(3.0 * v) for v in variables]
            optimizer.apply_gradients(zip(grads, variables))
        strategy.run(replica)

    for _ in range(4):
        step()
    return np.concatenate([v.numpy().ravel() for v in variables])

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
a = run(keras.optimizers.Adam, mirrored)
b = run(FusedAdam, mirrored)
c = run(FusedAdam, tf.distribute.get_strategy())
print("DIFF", float(np.max(np.abs(a - b))), float(np.max(np.abs(b - c))))
"""


# Two logical devices need a fresh process (make test-slow, with the other distributed cases).
@pytest.mark.slow
def test_mirrored_update_equals_keras_adam_and_one_device(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("DIFF"))
    to_keras, to_one_device = map(float, line.split()[1:])
    # Each replica holds the same gradient; Keras sums them over the two replicas, so both
    # optimisers see twice the one-device gradient: Adam's update is scale-free up to epsilon.
    assert to_keras < 1e-5
    assert to_one_device < 1e-4
