"""Optimisers and the compiled training step shared by every method.

The step takes the gradient of the method's ``loss`` with respect to every trained model's
variables in one backward pass, then, per model: clips the gradients to a global norm
(``[Train] clip_norm``), adds weight decay ``g + wd * w`` (``[Train] weight_decay``, PyTorch's
SGD convention) and applies that model's own optimiser. Per-sample terms ``[B]`` are averaged
over the global batch (``tf.nn.compute_average_loss``, correct under ``tf.distribute``); a
scalar loss is divided by the number of replicas so that the summed replica gradients equal
the single-device gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras

from labelreg._tf import tf

__all__ = ["make_optimizer", "optimizer_key", "nan_mean", "make_train_step"]

Batch = dict[str, tf.Tensor]


def make_optimizer(kind: str, learning_rate: float, momentum: float = 0.9
                   ) -> keras.optimizers.Optimizer:
    """``adam`` or ``sgd`` (with momentum), as ``[Train] optimizer`` names them."""
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if kind == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)
    raise ValueError(f"optimizer must be 'adam' or 'sgd'; received optimizer={kind!r}.")


def optimizer_key(model_key: str) -> str:
    """Checkpoint key of a model's optimiser: ``model`` -> ``optimizer``, ``model_a`` ->
    ``optimizer_a`` (the names label-reg and CoMIR checkpoints have always used)."""
    return "optimizer" + model_key[len("model"):] if model_key.startswith("model") else \
        f"optimizer_{model_key}"


def nan_mean(values: tf.Tensor) -> tf.Tensor:
    """Mean over the finite entries (a centroid distance is NaN when a warped landmark
    vanishes); NaN when there are none. A scalar is returned as is."""
    values = tf.cast(values, tf.float32)
    finite = tf.math.is_finite(values)
    count = tf.reduce_sum(tf.cast(finite, values.dtype))
    total = tf.reduce_sum(tf.where(finite, values, tf.zeros_like(values)))
    return tf.where(count > 0, total / tf.maximum(count, 1.0), tf.constant(float("nan")))


def _replica_loss(loss: tf.Tensor, global_batch_size: int | None,
                  strategy: tf.distribute.Strategy) -> tf.Tensor:
    if loss.shape.rank == 0:
        return loss / strategy.num_replicas_in_sync
    return tf.nn.compute_average_loss(loss, global_batch_size=global_batch_size)


def make_train_step(
    loss_terms: Callable[[Batch], dict[str, tf.Tensor]],
    groups: Mapping[str, tuple[keras.optimizers.Optimizer, list[Any]]],
    *,
    preprocess: Callable[[Batch], Batch] | None = None,
    clip_norm: float = 0.0,
    weight_decay: float = 0.0,
    global_batch_size: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[Batch], dict[str, tf.Tensor]]:
    """A compiled training step.

    Args:
        loss_terms: ``batch -> {"loss": [B] or scalar, other terms}`` in training mode.
        groups: ``{name: (optimizer, variables)}``, one per trained model; each group is
            clipped and updated on its own.
        preprocess: per-batch work outside the gradient tape (e.g. augmentation).
        clip_norm: global-norm clipping per group; 0 = none.
        weight_decay: ``g + wd * w`` after clipping; 0 = none.
        global_batch_size: the batch over all replicas, for averaging per-sample losses.
        strategy: the ``tf.distribute`` strategy the variables were created under.

    Returns:
        ``step(batch) -> {term: scalar}``: every term averaged over the batch (ignoring NaN
        entries) and the replicas, plus ``grad_norm`` (before clipping) per group when there
        are several groups.
    """
    strategy = strategy or tf.distribute.get_strategy()
    names = list(groups)
    variables = [v for name in names for v in groups[name][1]]
    splits = [len(groups[name][1]) for name in names]

    def replica_step(batch: Batch) -> dict[str, tf.Tensor]:
        if preprocess is not None:
            batch = preprocess(batch)
        with tf.GradientTape() as tape:
            terms = loss_terms(batch)
            loss = _replica_loss(terms["loss"], global_batch_size, strategy)
        # One backward pass for every model (one call per model would repeat the loss's).
        grads = tape.gradient(loss, variables)
        out = {name: nan_mean(value) for name, value in terms.items()}
        start = 0
        for name, size in zip(names, splits, strict=True):
            optimizer, group_vars = groups[name]
            group_grads = grads[start:start + size]
            start += size
            if clip_norm > 0:
                group_grads, norm = tf.clip_by_global_norm(group_grads, clip_norm)
            else:
                norm = tf.linalg.global_norm(group_grads)
            if weight_decay > 0:
                group_grads = [g + weight_decay * v
                               for g, v in zip(group_grads, group_vars, strict=True)]
            optimizer.apply_gradients(zip(group_grads, group_vars, strict=True))
            if len(names) > 1:
                out[f"grad_norm_{name}"] = norm
        return out

    # No autograph: the step has no tensor-dependent Python control flow, and converting every
    # Keras layer's call() would multiply the tracing time.
    @tf.function(autograph=False)
    def step(batch: Batch) -> dict[str, tf.Tensor]:
        per_replica = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in per_replica.items()}

    return step
