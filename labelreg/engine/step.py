"""Optimisers and the compiled training step shared by every method.

The step takes the gradient of the method's ``loss`` with respect to every trained model's
variables in one backward pass. When the loss or a gradient is NaN or inf it changes nothing
(neither weights nor optimiser state) and says so (``nonfinite``); otherwise, per model, it
clips the gradients to a global norm (``[Train] clip_norm``), adds weight decay ``g + wd * w``
(``[Train] weight_decay``, PyTorch's SGD convention) and applies that model's own optimiser,
whose learning rate may follow a schedule (``[Train] lr_schedule``, ``warmup_steps``).
Per-sample terms ``[B]`` are averaged over the global batch (``tf.nn.compute_average_loss``,
correct under ``tf.distribute``); a scalar loss is divided by the number of replicas so that
the summed replica gradients equal the single-device gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras

from labelreg._tf import tf
from labelreg.engine.adam import FusedAdam

__all__ = [
    "learning_rate_schedule",
    "PhasedSchedule",
    "make_optimizer",
    "optimizer_key",
    "nan_mean",
    "make_train_step",
]

Batch = dict[str, tf.Tensor]
#: A learning rate: a number, or a function of the optimiser's step.
Rate = float | keras.optimizers.schedules.LearningRateSchedule


def learning_rate_schedule(learning_rate: float, schedule: str = "constant",
                           warmup_steps: int = 0, total_steps: int | None = None,
                           restarts: Sequence[int] = ()) -> Rate:
    """The learning rate as a function of the optimiser's step (``[Train] lr_schedule``,
    ``warmup_steps``), or the plain number when it is constant.

    ``constant`` with a warm-up rises linearly from 0 to ``learning_rate`` over
    ``warmup_steps`` and then stays there; ``cosine`` does the same warm-up, then follows a
    half cosine from ``learning_rate`` down to 0 at ``total_steps``. The step is the
    optimiser's ``iterations``, which checkpoints keep, so a resumed run continues the schedule.

    ``restarts`` (steps in ``(0, total_steps)``) cut the run into phases, each of which runs
    the whole schedule on its own (warm-up, then the decay to 0 at the phase's end): a method
    whose objective changes at a step (:meth:`labelreg.methods.base.Method.schedule_restarts`)
    starts its new objective at the full rate rather than at what is left of one decay.
    """
    bounds = sorted({int(step) for step in restarts})
    if bounds:
        if total_steps is None or not 0 < bounds[0] <= bounds[-1] < total_steps:
            raise ValueError(f"restarts must lie in (0, total_steps); received restarts="
                             f"{list(restarts)}, total_steps={total_steps}.")
        if schedule == "constant" and warmup_steps <= 0:
            return learning_rate  # nothing to restart
        edges = [0, *bounds, total_steps]
        phases = [learning_rate_schedule(learning_rate, schedule, warmup_steps, end - start)
                  for start, end in zip(edges[:-1], edges[1:], strict=True)]
        return PhasedSchedule(phases, bounds)
    schedules = keras.optimizers.schedules
    if schedule == "constant":
        if warmup_steps <= 0:
            return learning_rate
        # Polynomial decay from 0 "down" to the rate, power 1: a linear ramp, then constant.
        return schedules.PolynomialDecay(0.0, warmup_steps, end_learning_rate=learning_rate,
                                         power=1.0)
    if schedule == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(f"a cosine schedule needs total_steps > warmup_steps; received "
                             f"total_steps={total_steps}, warmup_steps={warmup_steps}.")
        if warmup_steps <= 0:
            return schedules.CosineDecay(learning_rate, total_steps)
        return schedules.CosineDecay(0.0, total_steps - warmup_steps,
                                     warmup_target=learning_rate, warmup_steps=warmup_steps)
    raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; received {schedule!r}.")


@keras.saving.register_keras_serializable(package="labelreg")
class PhasedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Schedule ``k`` of ``phases`` from step ``boundaries[k-1]`` on, fed the step counted
    from there: ``rate(step) = phases[k](step - boundaries[k-1])`` (``boundaries[-1] = 0``).

    Args:
        phases: ``len(boundaries) + 1`` schedules (or numbers).
        boundaries: increasing steps at which the next phase starts.
    """

    def __init__(self, phases: Sequence[Rate], boundaries: Sequence[int]) -> None:
        if len(phases) != len(boundaries) + 1:
            raise ValueError(f"PhasedSchedule needs one phase more than boundaries; received "
                             f"{len(phases)} phases and {len(boundaries)} boundaries.")
        self.phases = list(phases)
        self.boundaries = [int(b) for b in boundaries]

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        rate = _rate_at(self.phases[0], step)
        for start, phase in zip(self.boundaries, self.phases[1:], strict=True):
            rate = tf.where(step >= start, _rate_at(phase, step - start), rate)
        return rate

    def get_config(self) -> dict[str, Any]:
        return {"phases": [keras.saving.serialize_keras_object(p) for p in self.phases],
                "boundaries": self.boundaries}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PhasedSchedule:
        return cls([keras.saving.deserialize_keras_object(p) for p in config["phases"]],
                   config["boundaries"])


def _rate_at(rate: Rate, step: tf.Tensor) -> tf.Tensor:
    if callable(rate):
        return tf.cast(rate(step), tf.float32)
    return tf.constant(float(rate), tf.float32)


def make_optimizer(kind: str, learning_rate: Rate, momentum: float = 0.9
                   ) -> keras.optimizers.Optimizer:
    """``adam`` or ``sgd`` (with momentum), as ``[Train] optimizer`` names them; the learning
    rate may be a schedule (:func:`learning_rate_schedule`)."""
    if kind == "adam":
        return FusedAdam(learning_rate=learning_rate)
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
        entries) and the replicas, ``grad_norm`` (before clipping) per group when there are
        several groups, and ``nonfinite``: 1.0 when the loss or a gradient had a NaN or inf
        on any replica, in which case no variable (weights, optimiser state) was changed.
        A variable the loss does not reach (``None`` gradient) is not updated, unless its
        group reaches none: such a group is updated with zero gradients, so its optimiser
        still counts the step.

    Under several replicas each replica's gradients are summed over the replicas first (the
    losses are already scaled by the global batch, so the sum is the gradient of the global
    batch's loss); clipping and weight decay then act on that global gradient, as on one device.
    """
    strategy = strategy or tf.distribute.get_strategy()
    variables = [v for _, group_vars in groups.values() for v in group_vars]
    replicas = strategy.num_replicas_in_sync
    reached: list[bool] = [True] * len(variables)

    def replica_gradients(batch: Batch) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        terms, loss, grads = _gradients(loss_terms, preprocess, batch, variables,
                                        global_batch_size, strategy)
        # Known when the step is traced: which variables this objective reaches at all.
        reached[:] = [g is not None for g in grads]
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, variables, strict=True)]
        bad = _nonfinite_flag(loss, grads)
        if replicas > 1:
            context = tf.distribute.get_replica_context()
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
        out = {name: nan_mean(value) for name, value in terms.items()}
        out["nonfinite"] = tf.cast(bad > 0, tf.float32)
        grads, norms = _clip_and_decay(grads, groups, clip_norm, weight_decay)
        if len(groups) > 1:
            out.update({f"grad_norm_{name}": norm for name, norm in norms.items()})
        return grads, out

    # No autograph: the step has no tensor-dependent Python control flow, and converting every
    # Keras layer's call() would multiply the tracing time.
    @tf.function(autograph=False)
    def step(batch: Batch) -> dict[str, tf.Tensor]:
        grads, per_replica = strategy.run(replica_gradients, args=(batch,))
        # Every replica holds the same all-reduced flag; the branch is taken in cross-replica
        # context because an optimiser's update may need a merge_call, which a replica-context
        # cond does not allow.
        finite = tf.equal(strategy.experimental_local_results(per_replica["nonfinite"])[0], 0.0)

        def apply() -> tf.Tensor:
            strategy.run(lambda g: _apply_groups(g, groups, reached, replicas), args=(grads,))
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                for k, v in per_replica.items()}

    return step


def _gradients(loss_terms: Callable[[Batch], dict[str, tf.Tensor]],
               preprocess: Callable[[Batch], Batch] | None, batch: Batch, variables: list[Any],
               global_batch_size: int | None, strategy: tf.distribute.Strategy
               ) -> tuple[dict[str, tf.Tensor], tf.Tensor, list[tf.Tensor | None]]:
    """The terms, this replica's scaled loss and its gradients (``None`` for a variable the
    loss does not reach), from one backward pass for every model (one call per model would
    repeat the loss's)."""
    if preprocess is not None:
        batch = preprocess(batch)
    with tf.GradientTape() as tape:
        terms = loss_terms(batch)
        loss = _replica_loss(terms["loss"], global_batch_size, strategy)
    return terms, loss, tape.gradient(loss, variables)


def _nonfinite_flag(loss: tf.Tensor, grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """1.0 when the loss or any gradient tensor holds a NaN or inf, else 0.0 (a float32 scalar;
    summed over replicas, it counts the replicas that saw one)."""
    # Two operations per gradient (is_finite, reduce_all) and one reduction over their flags:
    # a network has a few hundred gradient tensors, and every graph operation costs tracing
    # time (a per-tensor cast and sum tripled the count).
    flags = [tf.math.is_finite(loss)] + [tf.reduce_all(tf.math.is_finite(g)) for g in grads]
    return 1.0 - tf.cast(tf.reduce_all(tf.stack(flags)), tf.float32)


def _clip_and_decay(grads: list[tf.Tensor],
                    groups: Mapping[str, tuple[keras.optimizers.Optimizer, list[Any]]],
                    clip_norm: float, weight_decay: float
                    ) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
    """Each group's gradients clipped to ``clip_norm`` (global norm; 0 = none), then ``g + wd *
    w``; returns them (in the order of ``grads``) and each group's norm before clipping."""
    out, norms, start = [], {}, 0
    for name, (_, group_vars) in groups.items():
        group_grads = grads[start:start + len(group_vars)]
        if clip_norm > 0:
            group_grads, norms[name] = tf.clip_by_global_norm(group_grads, clip_norm)
        else:
            norms[name] = tf.linalg.global_norm(group_grads)
        if weight_decay > 0:
            group_grads = [g + weight_decay * v
                           for g, v in zip(group_grads, group_vars, strict=True)]
        out.extend(group_grads)
        start += len(group_vars)
    return out, norms


def _apply_groups(grads: list[tf.Tensor],
                  groups: Mapping[str, tuple[keras.optimizers.Optimizer, list[Any]]],
                  reached: Sequence[bool], replicas: int) -> None:
    """Apply each group's gradients with its own optimiser."""
    start = 0
    for optimizer, group_vars in groups.values():
        size = len(group_vars)
        # The optimiser sums its gradients over the replicas again; every replica already
        # holds the global gradient, so each passes its share (exact for 2^k replicas).
        group_grads = [g / replicas for g in grads[start:start + size]] if replicas > 1 \
            else grads[start:start + size]
        pairs = list(zip(group_grads, group_vars, strict=True))
        # A variable the objective does not reach (a frozen part, or a part a phase does not
        # run) is left alone, as Keras does: a zero gradient would still move it by the
        # optimiser's momentum. A group reached nowhere still counts the step, so its
        # learning-rate schedule keeps time.
        hits = reached[start:start + size]
        if any(hits):
            pairs = [pair for pair, hit in zip(pairs, hits, strict=True) if hit]
        optimizer.apply_gradients(pairs)
        start += size
