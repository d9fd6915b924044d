"""Tests of comir_tf.contrastive against a loop-based NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from comir_tf.contrastive import CRITICS, activation_decay, info_nce_loss, similarity_matrix


def _critic_ref(x: np.ndarray, y: np.ndarray, critic: str) -> float:
    """The critics written pixel by pixel for one pair of [H, W, C] maps."""
    h, w, _ = x.shape
    per_pixel = []
    for i in range(h):
        for j in range(w):
            a, b = x[i, j].astype(np.float64), y[i, j].astype(np.float64)
            d = a - b
            if critic == "mse":
                per_pixel.append(-np.mean(d**2))
            elif critic == "cosine":
                per_pixel.append(a @ b / (max(np.linalg.norm(a), 1e-8)
                                          * max(np.linalg.norm(b), 1e-8)))
            elif critic == "l1":
                per_pixel.append(-np.sum(np.abs(d)))
            elif critic == "l2":
                per_pixel.append(-math.sqrt(np.sum(d**2)))
            elif critic == "linf":
                per_pixel.append(-np.max(np.abs(d)))
            elif critic == "huber":
                per_pixel.append(-np.mean(np.sqrt(1 + d**2)))
            elif critic == "corr":
                per_pixel.append(a @ b)
    return float(np.mean(per_pixel))  # every pixel has C elements, so this is the mean


def _info_nce_ref(a: np.ndarray, b: np.ndarray, critic: str, tau: float) -> tuple[float, np.ndarray]:
    points = np.concatenate([a, b])
    m, n = len(points), len(a)
    sim = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            sim[i, j] = _critic_ref(points[i], points[j], critic) / tau
    losses = []
    for i in range(m):
        others = [sim[i, k] for k in range(m) if k != i]
        top = max(others)
        lse = top + math.log(sum(math.exp(s - top) for s in others))
        losses.append(-sim[i, (i + n) % m] + lse)
    return float(np.mean(losses)), sim


@pytest.mark.parametrize("critic", CRITICS)
@pytest.mark.parametrize("channels", [1, 3])
def test_info_nce_matches_loop_reference(critic, channels):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 5, 4, channels)).astype(np.float32)
    b = (a + 0.5 * rng.normal(size=a.shape)).astype(np.float32)
    tau = 0.7
    expected, sim = _info_nce_ref(a, b, critic, tau)
    np.testing.assert_allclose(similarity_matrix(a, b, critic, tau).numpy(), sim,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(info_nce_loss(a, b, critic, tau)), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("critic", CRITICS)
def test_loss_is_lower_for_true_partners_than_for_shuffled(critic):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 8, 8, 2)).astype(np.float32)
    b = a.copy()
    shuffled = b[[1, 2, 3, 4, 5, 0]]
    assert float(info_nce_loss(a, b, critic)) < float(info_nce_loss(a, shuffled, critic))


def test_identical_patches_give_log_of_negatives():
    x = np.ones((4, 6, 6, 1), np.float32)
    for critic in CRITICS:
        assert float(info_nce_loss(x, x, critic)) == pytest.approx(math.log(7), rel=1e-5)


@pytest.mark.parametrize("critic", CRITICS)
def test_gradients_are_finite_even_for_identical_patches(critic):
    """A patch compared with itself (the excluded diagonal) must not give NaN gradients."""
    rng = np.random.default_rng(5)
    a = tf.Variable(rng.normal(size=(2, 4, 4, 2)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = info_nce_loss(a, tf.identity(a), critic)
    grad = tape.gradient(loss, a).numpy()
    assert np.all(np.isfinite(grad))


def test_mse_gradient_matches_finite_differences():
    rng = np.random.default_rng(9)
    a = rng.normal(size=(2, 3, 3, 1))
    b = rng.normal(size=(2, 3, 3, 1))
    var = tf.Variable(a.astype(np.float64))

    def loss_of(x):
        return float(info_nce_loss(x.astype(np.float32), b.astype(np.float32), "mse", 0.5))

    with tf.GradientTape() as tape:
        loss = info_nce_loss(tf.cast(var, tf.float32), b, "mse", 0.5)
    grad = tape.gradient(loss, var).numpy()
    eps = 1e-2
    for index in [(0, 0, 0, 0), (1, 2, 1, 0), (0, 1, 2, 0)]:
        plus, minus = a.copy(), a.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss_of(plus) - loss_of(minus)) / (2 * eps)
        assert grad[index] == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def test_activation_decay_formula():
    x = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    y = np.array([3.0, -1.0], np.float32)
    assert float(activation_decay([x, y], 1.0)) == pytest.approx((1 + 7.5) / 6)
    assert float(activation_decay([x, y], 2.0)) == pytest.approx((1 + 15.25) / 6)


def test_bad_arguments_raise():
    a = np.zeros((2, 4, 4, 1), np.float32)
    with pytest.raises(ValueError, match="critic must be one of"):
        info_nce_loss(a, a, "dot")
    with pytest.raises(ValueError, match="tau must be positive"):
        info_nce_loss(a, a, "mse", tau=0.0)
    with pytest.raises(ValueError, match="same shape"):
        info_nce_loss(a, np.zeros((2, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        info_nce_loss(a[..., 0], a[..., 0])
