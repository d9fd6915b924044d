"""C4 (90-degree rotation) equivariance trick of CoMIR.

During training each sample of each modality is rotated by its own random multiple of 90 degrees
before its network, and the output is rotated back before the loss. Since the two modalities get
independent rotations, a positive pair can only match if both networks commute with the
rotations: C4 equivariance is learned without an extra loss term or hyper-parameter.
"""

from __future__ import annotations

from typing import Any

from labelreg._tf import tf

__all__ = ["rot90", "random_quarter_turns"]


def rot90(x: Any, k: Any) -> tf.Tensor:
    """Rotate each sample by ``k[i] * 90`` degrees in the spatial plane.

    The direction is NumPy's: ``rot90(x, k)[i] == np.rot90(x[i], k[i], axes=(0, 1))`` (counter-
    clockwise as displayed with row 0 on top), and ``rot90(rot90(x, k), -k)`` is ``x``.

    Args:
        x: ``[B, H, W, C]``; ``H == W`` unless every ``k`` is even (a batch must keep one shape).
        k: ``[B]`` integers (any sign; taken modulo 4), or a scalar for the whole batch.

    Returns:
        float32 ``[B, H, W, C]`` (``[B, W, H, C]`` for a scalar odd ``k`` on non-square maps).

    Raises:
        ValueError: if ``x`` is not 4-D, or ``k`` is per-sample on non-square maps.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 4:
        raise ValueError(f"x must have shape [B, H, W, C]; received x shape {tuple(x.shape)}.")
    k = tf.math.floormod(tf.cast(tf.convert_to_tensor(k), tf.int32), 4)
    if k.shape.rank == 0:
        return tf.image.rot90(x, k)
    h, w = x.shape[1], x.shape[2]
    if h is not None and w is not None and h != w:
        raise ValueError(
            "per-sample rotations need square maps (a batch must keep one shape); received x "
            f"shape {tuple(x.shape)}."
        )
    # tf.image.rot90 turns counter-clockwise like np.rot90. All four turns are computed for the
    # whole batch and each sample picks its own: a gather instead of a per-sample loop.
    turns = tf.stack([x, tf.image.rot90(x, 1), tf.image.rot90(x, 2), tf.image.rot90(x, 3)],
                     axis=1)  # [B, 4, H, W, C]
    return tf.gather(turns, k, axis=1, batch_dims=1)


def random_quarter_turns(batch: int | tf.Tensor, seed: Any) -> tf.Tensor:
    """``[batch]`` independent integers uniform in {0, 1, 2, 3}, a pure function of ``seed``.

    Args:
        batch: number of draws.
        seed: ``[2]`` integer seed (stateless draw, so a resumed run repeats it).
    """
    return tf.random.stateless_uniform(tf.reshape(batch, [1]), seed, 0, 4, dtype=tf.int32)
