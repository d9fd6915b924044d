"""Tests of comir_tf.equivariance: per-sample quarter turns and learned C4 equivariance."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from comir_tf.data import PairSet, make_patch_dataset
from comir_tf.equivariance import random_quarter_turns, rot90
from comir_tf.synthetic import render_pair
from comir_tf.tiramisu import Tiramisu
from labelreg.methods.comir import make_train_step


@pytest.mark.parametrize("k", [[0, 1, 2, 3], [-1, 5, -2, 7], [3, 3, 0, 1]])
def test_rot90_matches_numpy_per_sample(k):
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 2)).astype(np.float32)
    out = rot90(x, k).numpy()
    for i, turns in enumerate(k):
        np.testing.assert_array_equal(out[i], np.rot90(x[i], turns, axes=(0, 1)))


@pytest.mark.parametrize("k", [[0, 1, 2, 3], [1, 1, 3, 2]])
def test_rot90_inverse_is_identity(k):
    x = np.random.default_rng(1).normal(size=(4, 5, 5, 3)).astype(np.float32)
    np.testing.assert_array_equal(rot90(rot90(x, k), np.negative(k)).numpy(), x)


def test_rot90_scalar_turn_and_errors():
    x = np.random.default_rng(2).normal(size=(2, 3, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(rot90(x, 1).numpy(), np.rot90(x, 1, axes=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        rot90(x, [0, 1])
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        rot90(x[0], [1])


def test_random_quarter_turns_are_uniform_and_seeded():
    k = random_quarter_turns(4000, [3, 4]).numpy()
    np.testing.assert_array_equal(k, random_quarter_turns(4000, [3, 4]).numpy())
    counts = np.bincount(k, minlength=4)
    assert counts.min() > 900 and counts.max() < 1100


def _equivariance(model: keras.Model, images: np.ndarray) -> float:
    """Mean correlation of model(rot(x)) turned back with model(x), over the three turns."""
    base = model(images, training=False).numpy()
    scores = []
    for turns in (1, 2, 3):
        k = np.full(len(images), turns)
        back = rot90(model(rot90(images, k), training=False), -k).numpy()
        for b, r in zip(base, back, strict=True):
            scores.append(np.corrcoef(b.ravel(), r.ravel())[0, 1])
    return float(np.mean(scores))


# Two trainings of 60 steps, 15-25 s (make test-slow).
@pytest.mark.slow
def test_c4_training_makes_a_toy_model_more_equivariant():
    """The same toy networks trained with and without random C4 turns, from the same start:
    the C4-trained pair commutes better with quarter turns on held-out images."""
    rendered = [render_pair(64, seed) for seed in range(3)]
    pairs = PairSet(["a", "b", "c"], [r[0] for r in rendered], [r[1] for r in rendered])
    held_out = [render_pair(64, seed) for seed in (98, 99)]
    held_out = [np.stack([h[m][:32, :32] for h in held_out]) for m in (0, 1)]
    deviation = {}
    for equivariance in (False, True):
        keras.utils.set_random_seed(0)
        models = [Tiramisu(c, 1, init_filters=6, down_blocks=(1,), up_blocks=(1,),
                           bottleneck_layers=1, growth_rate=6, dropout=0.0) for c in (1, 3)]
        optimizers = []
        for model in models:
            model.build((None, None, None, model.in_channels))
            optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
            optimizer.build(model.trainable_variables)
            optimizers.append(optimizer)
        step = make_train_step(*models, *optimizers, equivariance=equivariance, l2_decay=0.05)
        for batch in make_patch_dataset(pairs, 32, 8, seed=1, stop_step=60):
            step(batch)
        # 1 - correlation, averaged over both networks: 0 for a perfectly C4-equivariant pair.
        deviation[equivariance] = np.mean(
            [1.0 - _equivariance(model, images) for model, images in zip(models, held_out, strict=True)])
    assert deviation[True] < 0.75 * deviation[False], deviation
