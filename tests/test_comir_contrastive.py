"""Tests of comir_tf.contrastive against a loop-based NumPy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from comir_tf.contrastive import (
    CRITICS,
    activation_decay,
    comir_loss_terms,
    contrastive_terms,
    info_nce_loss,
    retrieval_metrics,
    similarity_matrix,
)


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


# Retrieval measures. Six one-pixel points a = [0, 5, 6], b = [1, 9, 6.5] with the mse critic
# and tau = 1, so S[i, k] = -(p_i - p_k)**2. Per anchor (positive's squared distance, hardest
# negative's, margin = hardest - positive):
#   a0: 1    vs a1 25      ->  24     retrieved
#   a1: 16   vs a2 1       -> -15     missed (its own modality's a2 is nearer)
#   a2: 0.25 vs a1 1       ->  0.75   retrieved
#   b0: 1    vs a1 16      ->  15     retrieved
#   b1: 16   vs b2 6.25    -> -9.75   missed (its own modality's b2 is nearer)
#   b2: 0.25 vs a1 2.25    ->  2      retrieved
# top-1 accuracy 4/6, mean margin 17/6. The 12 negative pairs' squared distances sum to 338
# and the 3 positives' to 17.25, so the relative positive MSE is (17.25 / 3) / (338 / 12).
_A = np.array([0.0, 5.0, 6.0], np.float32)
_B = np.array([1.0, 9.0, 6.5], np.float32)


@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 5, 1), (4, 5, 3)])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_retrieval_metrics_match_a_hand_computed_case(shape, tau):
    # Constant maps of any size and channel count have the one-pixel mse.
    a = np.broadcast_to(_A[:, None, None, None], (3, *shape)).astype(np.float32)
    b = np.broadcast_to(_B[:, None, None, None], (3, *shape)).astype(np.float32)
    values = {k: float(v) for k, v in retrieval_metrics(a, b, "mse", tau).items()}
    assert values["top1_accuracy"] == pytest.approx(4 / 6)
    assert values["logit_margin"] == pytest.approx(17 / 6 / tau, rel=1e-5)
    assert values["relative_positive_mse"] == pytest.approx(69 / 338, rel=1e-5)
    # Swapping the modalities changes no anchor's neighbours.
    swapped = {k: float(v) for k, v in retrieval_metrics(b, a, "mse", tau).items()}
    assert swapped == pytest.approx(values, rel=1e-6)


@pytest.mark.parametrize("critic", CRITICS)
def test_retrieval_metrics_match_a_loop_reference(critic):
    rng = np.random.default_rng(11)
    a = rng.normal(size=(3, 4, 4, 2)).astype(np.float32)
    b = (a + 0.8 * rng.normal(size=a.shape)).astype(np.float32)
    tau = 0.7
    _, sim = _info_nce_ref(a, b, critic, tau)
    margins = []
    for i in range(6):
        positive = (i + 3) % 6
        margins.append(sim[i, positive] - max(sim[i, k] for k in range(6)
                                              if k not in (i, positive)))
    values = retrieval_metrics(a, b, critic, tau)
    assert float(values["top1_accuracy"]) == pytest.approx(np.mean(np.array(margins) > 0))
    assert float(values["logit_margin"]) == pytest.approx(np.mean(margins), rel=1e-4, abs=1e-5)


def test_info_nce_is_bounded_by_the_margins():
    """The loss is at least softplus(-margin) (Jensen over anchors), and it vanishes once the
    margin is large: what the printed 0.0000 of a separable batch means."""
    rng = np.random.default_rng(4)
    a = rng.normal(size=(8, 6, 6, 1)).astype(np.float32)
    for noise, scale in ((1.0, 1.0), (0.3, 1.0), (0.3, 4.0)):
        b = a + noise * rng.normal(size=a.shape).astype(np.float32)
        terms = contrastive_terms(scale * a, scale * b)
        margin, nce = float(terms["logit_margin"]), float(terms["info_nce"])
        assert nce >= math.log1p(math.exp(-margin)) - 1e-6
    # The last case is fully separated with a large margin: the loss is far below 1e-4.
    assert float(terms["top1_accuracy"]) == 1.0 and margin > 15.0 and nce < 1e-4


def test_relative_positive_mse_ignores_the_scale_and_positive_mse_does_not():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
    b = (a + 0.5 * rng.normal(size=a.shape)).astype(np.float32)
    small, large = contrastive_terms(a, b), contrastive_terms(3.0 * a, 3.0 * b)
    assert float(large["positive_mse"]) == pytest.approx(9.0 * float(small["positive_mse"]),
                                                         rel=1e-5)
    assert float(large["relative_positive_mse"]) == pytest.approx(
        float(small["relative_positive_mse"]), rel=1e-4)
    # The mse critic's logits grow with the square of the scale, and so does the margin.
    assert float(large["logit_margin"]) == pytest.approx(9.0 * float(small["logit_margin"]),
                                                         rel=1e-4)


def test_metrics_carry_no_gradient_and_the_loss_is_unchanged():
    rng = np.random.default_rng(8)
    a = tf.Variable(rng.normal(size=(3, 4, 4, 1)).astype(np.float32))
    b = tf.constant(rng.normal(size=(3, 4, 4, 1)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        terms = contrastive_terms(a, b, "mse", 0.5)
    for key in ("top1_accuracy", "logit_margin", "relative_positive_mse"):
        assert tape.gradient(terms[key], a) is None
    assert float(terms["info_nce"]) == pytest.approx(float(info_nce_loss(a, b, "mse", 0.5)))


def test_comir_loss_terms_log_the_retrieval_measures():
    # Identity "networks": the terms are those of the inputs themselves.
    def identity(x, training=False):
        return x

    a = np.broadcast_to(_A[:, None, None, None], (3, 4, 4, 1)).astype(np.float32)
    b = np.broadcast_to(_B[:, None, None, None], (3, 4, 4, 1)).astype(np.float32)
    batch = {"a": a, "b": b, "k_a": tf.constant([1, 2, 3]), "k_b": tf.constant([0, 3, 1])}
    terms = comir_loss_terms(identity, identity, batch, tau=1.0)
    assert list(terms) == ["loss", "info_nce", "decay", "positive_mse", "relative_positive_mse",
                           "top1_accuracy", "logit_margin"]
    assert float(terms["top1_accuracy"]) == pytest.approx(4 / 6)
    assert float(terms["logit_margin"]) == pytest.approx(17 / 6, rel=1e-5)
    assert float(terms["positive_mse"]) == pytest.approx(17.25 / 3)
