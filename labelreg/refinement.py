"""Test-time refinement of a predicted DDF: a few Adam steps per pair that align two
segmentations under a bending-energy penalty.

A network trained from labels predicts the DDF of a new pair in one pass; its error is partly
systematic for that pair (a gland boundary a few voxels off). When the network also segments the
structure in both images (:class:`~labelreg.networks.CentroidAlignNet`), those segmentations
give a per-pair objective that needs no label: warp the moving segmentation by the DDF and
compare it with the fixed one. :func:`refine_ddf` minimises

    L(δ) = multi-scale soft Dice loss(p_fixed, warp(p_moving, u₀ + δ)) + w · bending(δ)

over a correction ``δ`` of the network's DDF ``u₀`` (fixed-grid voxels), starting from
``δ = 0``, with Adam (β₁ = 0.9, β₂ = 0.999, ε = 1e-7, as Keras) for ``steps`` steps. The
penalty acts on the correction only: the network's own deformation is kept and a smooth
correction is added. Each pair of a batch is refined on its own (the loss is summed over the
batch, so a pair's steps do not depend on the others).

The whole loop runs in one ``tf.function`` (a ``tf.while_loop``), traced once per input shape
(inference sees few shapes; a generalised trace would lose the rank the warp needs).
"""

from __future__ import annotations

from collections.abc import Sequence

from labelreg import ops
from labelreg._tf import tf
from labelreg.losses.deform import bending_energy
from labelreg.losses.label import multi_scale_dice_loss

__all__ = ["DEFAULT_SCALES", "refinement_loss", "refine_ddf"]

#: Gaussian scales (voxels) of the multi-scale Dice: the coarse ones reach a boundary a few
#: voxels away, the fine ones place it.
DEFAULT_SCALES = (0.0, 1.0, 2.0, 4.0)

_BETA_1, _BETA_2, _EPSILON = 0.9, 0.999, 1e-7


def refinement_loss(delta: tf.Tensor, ddf: tf.Tensor, moving_segmentation: tf.Tensor,
                    fixed_segmentation: tf.Tensor, bending_weight: float,
                    scales: Sequence[float] = DEFAULT_SCALES) -> tf.Tensor:
    """``L(δ)`` of the module docstring per pair, ``[B]``.

    Args:
        delta: ``[B, *S_fix, n]`` the correction (voxels).
        ddf: ``[B, *S_fix, n]`` the network's DDF.
        moving_segmentation: ``[B, *S_mov, 1]`` probabilities on the moving grid.
        fixed_segmentation: ``[B, *S_fix, 1]`` probabilities on the fixed grid.
        bending_weight: ``w``.
        scales: Gaussian scales of the Dice.
    """
    warped = ops.warp(moving_segmentation, ddf + delta)
    loss = multi_scale_dice_loss(fixed_segmentation, warped, scales=tuple(scales))
    if bending_weight > 0:
        loss = loss + bending_weight * bending_energy(delta)
    return loss


# No AutoGraph: the loop is an explicit tf.while_loop, and converting every nested call (the
# warp, the Gaussian filters) would only slow the tracing.
@tf.function(autograph=False)
def _adam(ddf: tf.Tensor, moving_segmentation: tf.Tensor, fixed_segmentation: tf.Tensor,
          steps: tf.Tensor, learning_rate: tf.Tensor, bending_weight: float,
          scales: tuple[float, ...]) -> tf.Tensor:
    def step(i, delta, m, v):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            loss = tf.reduce_sum(refinement_loss(delta, ddf, moving_segmentation,
                                                 fixed_segmentation, bending_weight, scales))
        grad = tape.gradient(loss, delta)
        # The XLA-compiled warp and bending energy reuse a trace made for an unknown batch size
        # (a training step's), whose gradient has no static batch size; the loop needs the
        # same shape on every turn.
        grad.set_shape(delta.shape)
        m = _BETA_1 * m + (1.0 - _BETA_1) * grad
        v = _BETA_2 * v + (1.0 - _BETA_2) * tf.square(grad)
        t = tf.cast(i + 1, tf.float32)
        m_hat = m / (1.0 - _BETA_1**t)
        v_hat = v / (1.0 - _BETA_2**t)
        return i + 1, delta - learning_rate * m_hat / (tf.sqrt(v_hat) + _EPSILON), m, v

    zero = tf.zeros_like(ddf)
    _, delta, _, _ = tf.while_loop(lambda i, *_: i < steps, step,
                                   (tf.constant(0), zero, zero, zero))
    return ddf + delta


def refine_ddf(ddf: tf.Tensor, moving_segmentation: tf.Tensor, fixed_segmentation: tf.Tensor,
               steps: int, learning_rate: float = 0.1, bending_weight: float = 0.5,
               scales: Sequence[float] = DEFAULT_SCALES) -> tf.Tensor:
    """The network's DDF plus the correction of ``steps`` Adam steps on
    :func:`refinement_loss`; ``ddf`` itself when ``steps`` is 0.

    Args:
        ddf: ``[B, *S_fix, n]`` float32, fixed-grid voxels.
        moving_segmentation: ``[B, *S_mov, 1]`` in [0, 1].
        fixed_segmentation: ``[B, *S_fix, 1]`` in [0, 1].
        steps: Adam steps (>= 0).
        learning_rate: Adam's step size (voxels: the first step moves each component by about
            this much).
        bending_weight: weight of the bending energy of the correction (voxel⁻²).
        scales: Gaussian scales (voxels) of the multi-scale Dice.

    Returns:
        ``[B, *S_fix, n]`` float32.

    Raises:
        ValueError: ``steps`` < 0, a non-positive learning rate or a negative weight.
    """
    if int(steps) < 0 or not float(learning_rate) > 0 or not float(bending_weight) >= 0:
        raise ValueError(f"expected steps >= 0, learning_rate > 0 and bending_weight >= 0; "
                         f"received steps={steps!r}, learning_rate={learning_rate!r}, "
                         f"bending_weight={bending_weight!r}.")
    ddf = tf.convert_to_tensor(ddf, tf.float32)
    if int(steps) == 0:
        return ddf
    return _adam(ddf, tf.convert_to_tensor(moving_segmentation, tf.float32),
                 tf.convert_to_tensor(fixed_segmentation, tf.float32),
                 tf.constant(int(steps)), tf.constant(float(learning_rate)),
                 float(bending_weight), tuple(float(s) for s in scales))
