"""labelreg.networks.activations: leaky_relu equals TensorFlow's and keeps the training graph
free of Grappler's remapper failure."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from labelreg._tf import tf
from labelreg.networks.activations import leaky_relu


@pytest.mark.parametrize("slope", [0.0, 0.2, 0.5])
def test_values_and_gradients_equal_tf_leaky_relu(rng, slope):
    x = tf.constant(rng.normal(size=(3, 5, 4, 2)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = leaky_relu(x, slope), tf.nn.leaky_relu(x, alpha=slope)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(tape.gradient(ours, x).numpy(), tape.gradient(theirs, x).numpy())
    # Slope 1 or more is no leaky ReLU (max(x, s x) would be s x for positive x).
    with pytest.raises(ValueError, match="slope"):
        leaky_relu(x, 1.0)


def test_bfloat16_inputs_keep_their_dtype():
    x = tf.constant([-2.0, 0.0, 3.0], tf.bfloat16)
    out = leaky_relu(x, 0.2)
    assert out.dtype == tf.bfloat16
    np.testing.assert_allclose(out.numpy().astype(np.float32), [-0.4, 0.0, 3.0], rtol=1e-2)


REMAPPER_SCRIPT = """
import numpy as np, tensorflow as tf
from labelreg.networks.learnsim import SimilarityEncoder
encoder = SimilarityEncoder(ndim=3)
x = tf.constant(np.random.default_rng(0).random((1, 12, 12, 12, 1)), tf.float32)
encoder(x)
optimizer = tf.keras.optimizers.Adam(1e-3)

@tf.function
def step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(encoder(x) - 0.5))
    grads = tape.gradient(loss, encoder.trainable_variables)
    optimizer.apply_gradients(zip(grads, encoder.trainable_variables))
    return loss

print(float(step()))
"""


def test_a_training_step_logs_no_remapper_failure():
    # Conv + bias + LeakyRelu made Grappler's remapper fail with an ERROR line on every
    # training run of learnsim and DeepSim; the line is TensorFlow's C++ log, so a child
    # process shows it.
    env = {"TF_CPP_MIN_LOG_LEVEL": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", REMAPPER_SCRIPT], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.isfinite(float(done.stdout.split()[-1]))
    assert "remapper failed" not in done.stderr, done.stderr[-3000:]
