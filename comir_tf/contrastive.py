"""CoMIR's contrastive objective: InfoNCE over whole patches, critics and activation decay.

A batch holds ``N`` aligned patch pairs ``(a_i, b_i)``. The ``2N`` representations
``p = [a_1..a_N, b_1..b_N]`` are compared pairwise with a *critic* (a similarity, higher is more
alike), divided by the temperature ``tau``:

    S[i, j] = critic(p_i, p_j) / tau

The positive of anchor ``i`` is the same patch in the other modality, ``pos(i) = (i + N) mod 2N``;
every other patch of either modality is a negative and only the anchor itself is left out:

    l_i = -S[i, pos(i)] + log sum_{k != i} exp(S[i, k]),      loss = mean_i l_i

Critics (``x``, ``y`` are ``[H, W, C]`` maps; "per pixel" quantities are taken over the channel
axis and then averaged over the ``H * W`` pixels):

=========  ===========================================================
``mse``    ``-mean((x - y)**2)`` over all elements (the paper's critic)
``cosine`` mean over pixels of the cosine of ``x_p`` and ``y_p``
``l1``     ``-mean_p sum_c |x - y|``
``l2``     ``-mean_p sqrt(sum_c (x - y)**2)`` (euclidean)
``linf``   ``-mean_p max_c |x - y|``
``huber``  ``-mean(sqrt(1 + (x - y)**2))`` over all elements (pseudo-Huber)
``corr``   ``mean_p sum_c x * y``
=========  ===========================================================

The reference code takes the per-pixel norms and the cosine along the image-row axis of a
``(C, H, W)`` tensor (a quirk); here they are taken along the channel axis as the paper intends.

Monitoring (:func:`retrieval_metrics`, logged during training and validation). The loss alone
is hard to read once the positives are well separated: with the largest similarity gap ``g``
between a positive and the hardest negative, ``l_i`` lies between ``log(1 + exp(-g_i))`` and
``log(1 + (2N - 2) exp(-g_i))``, so for a batch of 8 a gap of 20 already gives a loss below
``3e-8``, printed as ``0.0000``. The retrieval measures stay readable:

- ``top1_accuracy``: the fraction of the ``2N`` anchors whose positive is strictly the most
  similar of the ``2N - 1`` other points (the candidates of the loss's softmax);
- ``logit_margin``: the mean over anchors of ``S[i, pos(i)] - max_{k != i, pos(i)} S[i, k]``,
  in the loss's units (critic / tau); positive when the positive is retrieved;
- ``relative_positive_mse``: the positive pairs' mean squared difference divided by that of
  the negative pairs; unlike ``positive_mse`` it does not change when the CoMIRs are scaled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from comir_tf.config import CRITICS
from comir_tf.equivariance import rot90
from labelreg._tf import tf

__all__ = ["CRITICS", "similarity_matrix", "info_nce_loss", "retrieval_metrics",
           "contrastive_terms", "activation_decay", "comir_loss_terms"]


_EPS = 1e-8


def _flat(points: tf.Tensor) -> tf.Tensor:
    """``[M, H, W, C]`` -> ``[M, H*W*C]``."""
    return tf.reshape(points, [tf.shape(points)[0], -1])


def _gram_mse(points: tf.Tensor) -> tf.Tensor:
    # ||x - y||^2 = |x|^2 + |y|^2 - 2 x.y: one matrix product instead of M^2 differences.
    flat = _flat(points)
    sq = tf.reduce_sum(flat * flat, axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(flat, flat, transpose_b=True)
    numel = tf.cast(tf.shape(flat)[1], points.dtype)
    return -tf.maximum(dist, 0.0) / numel


def _gram_corr(points: tf.Tensor) -> tf.Tensor:
    flat = _flat(points)
    pixels = tf.cast(tf.reduce_prod(tf.shape(points)[1:3]), points.dtype)
    return tf.matmul(flat, flat, transpose_b=True) / pixels


def _gram_cosine(points: tf.Tensor) -> tf.Tensor:
    norm = tf.sqrt(tf.reduce_sum(points * points, axis=-1, keepdims=True))
    unit = points / tf.maximum(norm, _EPS)
    return _gram_corr(unit)


def _safe_sqrt(x: tf.Tensor) -> tf.Tensor:
    # sqrt has an infinite slope at 0 (a patch against itself); give it a zero gradient there.
    positive = x > 0.0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, 1.0)), 0.0)


_ROW_CRITICS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    # Each maps the differences d = x - y [M, H, W, C] of one anchor against all M points to [M].
    "l1": lambda d: -tf.reduce_mean(tf.reduce_sum(tf.abs(d), axis=-1), axis=[1, 2]),
    "l2": lambda d: -tf.reduce_mean(_safe_sqrt(tf.reduce_sum(d * d, axis=-1)), axis=[1, 2]),
    "linf": lambda d: -tf.reduce_mean(tf.reduce_max(tf.abs(d), axis=-1), axis=[1, 2]),
    "huber": lambda d: -tf.reduce_mean(tf.sqrt(1.0 + d * d), axis=[1, 2, 3]),
}


def _row_wise(points: tf.Tensor, per_row: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    # One anchor at a time against all points: memory O(M * H * W * C) instead of O(M^2 ...).
    return tf.map_fn(lambda anchor: per_row(anchor[None] - points), points,
                     fn_output_signature=tf.TensorSpec([None], points.dtype))


def _check_pair(a: Any, b: Any) -> tuple[tf.Tensor, tf.Tensor]:
    a = tf.convert_to_tensor(a, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    if a.shape.rank != 4 or b.shape.rank != 4:
        raise ValueError(
            "a and b must be batches of 2-D maps [N, H, W, C]; received a shape "
            f"{tuple(a.shape)} and b shape {tuple(b.shape)}."
        )
    if a.shape.is_fully_defined() and b.shape.is_fully_defined() and a.shape != b.shape:
        raise ValueError(
            "a and b must have the same shape (aligned pairs of CoMIRs); received a shape "
            f"{tuple(a.shape)} and b shape {tuple(b.shape)}."
        )
    return a, b


def similarity_matrix(a: Any, b: Any, critic: str = "mse", tau: float = 0.5) -> tf.Tensor:
    """The ``[2N, 2N]`` matrix ``S[i, j] = critic(p_i, p_j) / tau`` with ``p = [a, b]``.

    Args:
        a: modality-A representations ``[N, H, W, C]``.
        b: modality-B representations, same shape, ``b[i]`` aligned with ``a[i]``.
        critic: one of :data:`CRITICS`.
        tau: temperature, > 0.

    Returns:
        float32 ``[2N, 2N]``, symmetric.

    Raises:
        ValueError: unknown critic, non-positive tau, or ill-shaped inputs.
    """
    if critic not in CRITICS:
        raise ValueError(f"critic must be one of {CRITICS}; received critic={critic!r}.")
    if not float(tau) > 0.0:
        raise ValueError(f"tau must be positive; received tau={tau!r}.")
    a, b = _check_pair(a, b)
    points = tf.concat([a, b], axis=0)
    if critic == "mse":
        sim = _gram_mse(points)
    elif critic == "corr":
        sim = _gram_corr(points)
    elif critic == "cosine":
        sim = _gram_cosine(points)
    else:
        sim = _row_wise(points, _ROW_CRITICS[critic])
    return sim / float(tau)


def _positive_index(m: tf.Tensor) -> tf.Tensor:
    """``pos(i) = (i + N) mod 2N`` for the ``m = 2N`` points."""
    return (tf.range(m) + m // 2) % m


def _negative_mask(m: tf.Tensor) -> tf.Tensor:
    """``[m, m]`` bool: ``True`` at every ``(i, k)`` with ``k != i, pos(i)`` (the negatives)."""
    excluded = tf.logical_or(tf.eye(m, dtype=tf.bool),
                             tf.cast(tf.one_hot(_positive_index(m), m), tf.bool))
    return tf.logical_not(excluded)


def _info_nce_from_similarity(sim: tf.Tensor) -> tf.Tensor:
    m = tf.shape(sim)[0]
    eye = tf.eye(m, dtype=tf.bool)
    others = tf.where(eye, tf.constant(-float("inf"), sim.dtype), sim)
    positives = tf.gather(sim, _positive_index(m), axis=1, batch_dims=1)
    return tf.reduce_mean(tf.reduce_logsumexp(others, axis=1) - positives)


def info_nce_loss(a: Any, b: Any, critic: str = "mse", tau: float = 0.5) -> tf.Tensor:
    """CoMIR's InfoNCE loss over the ``2N`` patches of a batch of aligned pairs.

    Args:
        a: modality-A CoMIRs ``[N, H, W, C]`` (``N >= 1``).
        b: modality-B CoMIRs of the same patches, same shape.
        critic: one of :data:`CRITICS` (``"mse"`` is the paper's).
        tau: temperature (0.5 in the paper's biomedical experiments).

    Returns:
        float32 scalar, ``mean_i (-S[i, pos(i)] + logsumexp_{k != i} S[i, k])``; at least
        ``log(2N - 1)`` minus the largest similarity gap, and ``log(2N - 1)`` when all patches
        are identical. Once every positive is ahead of every negative by a gap ``g`` the loss
        is at most ``log(1 + (2N - 2) exp(-g))`` (see :func:`retrieval_metrics`); in float32
        it rounds to exactly 0 once it is below the rounding step of the similarities (about
        1e-7 for similarities of order 1 to 10).

    Raises:
        ValueError: unknown critic, non-positive tau, or ill-shaped inputs.
    """
    return _info_nce_from_similarity(similarity_matrix(a, b, critic, tau))


def _retrieval_from_similarity(sim: tf.Tensor) -> dict[str, tf.Tensor]:
    sim = tf.stop_gradient(sim)
    m = tf.shape(sim)[0]
    positives = tf.gather(sim, _positive_index(m), axis=1, batch_dims=1)
    negatives = tf.where(_negative_mask(m), sim, tf.constant(-float("inf"), sim.dtype))
    hardest = tf.reduce_max(negatives, axis=1)
    margin = positives - hardest
    return {"top1_accuracy": tf.reduce_mean(tf.cast(margin > 0.0, sim.dtype)),
            "logit_margin": tf.reduce_mean(margin)}


def _relative_positive_mse(points: tf.Tensor, positive_mse: tf.Tensor) -> tf.Tensor:
    # Mean squared difference of the negative pairs, from the same Gram matrix as the mse critic.
    dist = -tf.stop_gradient(_gram_mse(points))
    negatives = tf.boolean_mask(dist, _negative_mask(tf.shape(dist)[0]))
    return tf.stop_gradient(positive_mse) / tf.reduce_mean(negatives)


def retrieval_metrics(a: Any, b: Any, critic: str = "mse", tau: float = 0.5
                      ) -> dict[str, tf.Tensor]:
    """How well each patch finds its partner among the ``2N`` patches of a batch.

    Every one of the ``2N`` points ``p = [a_1..a_N, b_1..b_N]`` is an anchor; its candidates are
    the ``2N - 1`` other points (the same as in :func:`info_nce_loss`), its positive is
    ``pos(i) = (i + N) mod 2N`` and its hardest negative the most similar candidate other than
    the positive.

    Args:
        a: modality-A CoMIRs ``[N, H, W, C]``, ``N >= 2`` (with ``N = 1`` there is no negative:
            the accuracy is 1, the margin ``inf`` and the relative MSE NaN).
        b: modality-B CoMIRs of the same patches, same shape.
        critic, tau: the similarity ``S = critic / tau`` of :func:`similarity_matrix`.

    Returns:
        float32 scalars (no gradient):

        - ``top1_accuracy``: fraction of the ``2N`` anchors whose positive is strictly more
          similar than every other candidate, in [0, 1];
        - ``logit_margin``: mean over anchors of ``S[i, pos(i)] - max_{k != i, pos(i)} S[i, k]``
          (> 0 for a retrieved positive); the anchor's loss term lies between
          ``log(1 + exp(-margin))`` and ``log(1 + (2N - 2) exp(-margin))``;
        - ``relative_positive_mse``: mean squared difference of the ``N`` positive pairs over
          that of the negative pairs (every ``(i, k)`` with ``k != i, pos(i)``); near 1 when
          positives are no closer than negatives, 0 when they are identical, and unchanged
          when both CoMIRs are multiplied by the same factor.

    Raises:
        ValueError: unknown critic, non-positive tau, or ill-shaped inputs.
    """
    terms = contrastive_terms(a, b, critic, tau)
    return {key: tf.stop_gradient(terms[key])
            for key in ("top1_accuracy", "logit_margin", "relative_positive_mse")}


def contrastive_terms(a: Any, b: Any, critic: str = "mse", tau: float = 0.5
                      ) -> dict[str, tf.Tensor]:
    """The InfoNCE loss and what is logged beside it, from one similarity matrix.

    Args:
        a, b: the two modalities' CoMIRs ``[N, H, W, C]`` (aligned pairs).
        critic, tau: of :func:`similarity_matrix`.

    Returns:
        float32 scalars ``{"info_nce", "positive_mse", "relative_positive_mse",
        "top1_accuracy", "logit_margin"}``; only ``info_nce`` and ``positive_mse`` carry
        gradients. ``positive_mse`` is the mean squared difference of the positive pairs'
        CoMIRs; the others are those of :func:`retrieval_metrics`.
    """
    sim = similarity_matrix(a, b, critic, tau)
    a, b = _check_pair(a, b)
    positive_mse = tf.reduce_mean(tf.square(a - b))
    terms = {"info_nce": _info_nce_from_similarity(sim), "positive_mse": positive_mse,
             "relative_positive_mse": _relative_positive_mse(tf.concat([a, b], axis=0),
                                                             positive_mse)}
    terms.update(_retrieval_from_similarity(sim))
    return terms


def activation_decay(outputs: Sequence[Any], p: float) -> tf.Tensor:
    """CoMIR's activation regulariser ``(1 + sum |x|**p) / numel`` over all the given maps.

    Args:
        outputs: tensors (e.g. the two modalities' CoMIRs); sum and element count run over all.
        p: the exponent (1 for the L1 term, 2 for the L2 term).

    Returns:
        float32 scalar.
    """
    total = tf.constant(1.0, tf.float32)
    numel = tf.constant(0.0, tf.float32)
    for x in outputs:
        x = tf.convert_to_tensor(x, tf.float32)
        total += tf.reduce_sum(tf.abs(x) ** p)
        numel += tf.cast(tf.size(x), tf.float32)
    return total / numel


def comir_loss_terms(
    model_a: Any,
    model_b: Any,
    batch: dict[str, tf.Tensor],
    critic: str = "mse",
    tau: float = 0.5,
    l1_decay: float = 1e-4,
    l2_decay: float = 1e-4,
    equivariance: bool = True,
    training: bool = True,
) -> dict[str, tf.Tensor]:
    """CoMIR's training objective on a batch of aligned patch pairs.

    With ``equivariance`` each patch is turned by its own multiple of 90 degrees (``batch["k_a"]``,
    ``batch["k_b"]``) before its network and turned back after, so the loss asks the networks to
    commute with quarter turns (C4 equivariance).

    Args:
        model_a, model_b: the two modalities' networks.
        batch: ``{"a": [N, H, W, C_a], "b": [N, H, W, C_b], "k_a": [N], "k_b": [N]}``.
        critic, tau: of :func:`info_nce_loss`.
        l1_decay, l2_decay: weights of the :func:`activation_decay` terms.
        equivariance: train with the random C4 turns.
        training: the networks' mode (dropout, batch statistics).

    Returns:
        Scalars ``{"loss": info_nce + decay, "info_nce", "decay", "positive_mse",
        "relative_positive_mse", "top1_accuracy", "logit_margin"}`` (see
        :func:`contrastive_terms`; only ``loss`` is differentiated).
    """
    def forward(model: Any, x: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        if equivariance:
            return rot90(model(rot90(x, k), training=training), -k)
        return model(x, training=training)

    z_a = forward(model_a, batch["a"], batch["k_a"])
    z_b = forward(model_b, batch["b"], batch["k_b"])
    terms = contrastive_terms(z_a, z_b, critic=critic, tau=tau)
    decay = l1_decay * activation_decay([z_a, z_b], 1.0) + l2_decay * activation_decay(
        [z_a, z_b], 2.0)
    return {"loss": terms["info_nce"] + decay, "info_nce": terms["info_nce"], "decay": decay,
            **{key: value for key, value in terms.items() if key != "info_nce"}}
