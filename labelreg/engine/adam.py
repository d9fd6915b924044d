"""Adam whose per-variable update is TensorFlow's fused ``ResourceApplyAdam`` kernel.

Keras 3's Adam writes its update as about forty graph operations per variable (casts, powers,
the two moment updates, the step), so building the update of a network with 150 variables costs
several thousand operations: 2 s of Python and another second of graph optimisation before the
first training step, each time a step is traced. The kernel does the same arithmetic in one
operation per variable:

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m <- m + (g - m) * (1 - beta_1)
    v <- v + (g^2 - v) * (1 - beta_2)
    w <- w - alpha * m / (sqrt(v) + epsilon)

which is Keras's formula (epsilon outside the square root), so the weights follow Keras's
Adam within float32 rounding. Everything else is Keras's: the slot variables (names, checkpoint
layout), the learning-rate schedule, the step count and the ``tf.distribute`` update path. Only
the plain form is fused; ``amsgrad`` falls back to Keras's update.
"""

from __future__ import annotations

from typing import Any

import keras

from labelreg._tf import tf

__all__ = ["FusedAdam"]


class FusedAdam(keras.optimizers.Adam):
    """:class:`keras.optimizers.Adam` with the update of each variable fused into one kernel
    (same arguments, same state, same checkpoints)."""

    def __init__(self, *args: Any, name: str = "adam", **kwargs: Any) -> None:
        # Keras's name, so the slot variables keep their paths (``adam/..._momentum``).
        super().__init__(*args, name=name, **kwargs)
        # The scalars every variable's update shares (learning rate, beta powers), built once
        # per apply() and dtype rather than once per variable. Held in a plain object: Keras
        # would track a dict attribute of an optimiser as part of its state.
        self._per_apply = _PerApply()

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._per_apply.scalars.clear()  # they belong to this call's graph

    def _scalars(self, learning_rate: Any, dtype: tf.DType) -> tuple[tf.Tensor, ...]:
        cache = self._per_apply.scalars
        if dtype not in cache:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1 = tf.constant(self.beta_1, dtype)
            beta_2 = tf.constant(self.beta_2, dtype)
            cache[dtype] = (tf.cast(learning_rate, dtype), tf.pow(beta_1, step),
                            tf.pow(beta_2, step), beta_1, beta_2,
                            tf.constant(self.epsilon, dtype))
        return cache[dtype]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        # ``variable`` is the tf.Variable (on one device under tf.distribute); the slots are
        # Keras variables around tf.Variables.
        index = self._get_variable_index(variable)
        m = self._momentums[index].value
        v = self._velocities[index].value
        lr, beta_1_power, beta_2_power, beta_1, beta_2, epsilon = self._scalars(
            learning_rate, variable.dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle, beta1_power=beta_1_power,
            beta2_power=beta_2_power, lr=lr, beta1=beta_1, beta2=beta_2, epsilon=epsilon,
            grad=tf.cast(gradient, variable.dtype))
        return None


class _PerApply:
    """What one :meth:`FusedAdam.apply` call shares between its variables' updates."""

    def __init__(self) -> None:
        self.scalars: dict[tf.DType, tuple[tf.Tensor, ...]] = {}
