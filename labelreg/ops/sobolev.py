"""Sobolev smoothing of velocity fields with an identity gradient (learnsim's "Sobolev gradients").

learnsim (Grzech et al., CVPR 2022) smooths every sampled stationary velocity field with a short
separable kernel before integrating it, and lets the gradient through *unsmoothed*: the backward
pass of the smoothing is the identity. The optimiser therefore updates the variational parameters
with the raw gradient while the forward model only ever sees smooth velocities.

The 1-D kernel approximates the Green's function of the operator ``I - lam * Laplacian`` on a
window of ``size = 2 * smoothness + 1`` taps: with ``L`` the ``size x size`` tridiagonal matrix of
the discrete 1-D Laplacian (``-2`` on the diagonal, ``1`` next to it, zero outside the window), the
kernel is the centre column of ``(I - lam L)^-1``, normalised to sum to one. The reference gets
the same column through an eigendecomposition of ``L``; a linear solve gives it directly. With
learnsim's defaults (``s = 3``, ``lambda = 0.5``) the kernel is exactly
``[1, 4, 15, 56, 15, 4, 1] / 96``.

Borders: the reference pads the field by ``smoothness`` voxels on every side with edge values
(PyTorch's "replicate") and convolves without padding, so the output has the input's size and a
constant field stays constant up to the border. :func:`sobolev_smooth` does the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.ops.checks import check_image, check_integer, check_number
from labelreg.ops.filters import separable_filter
from labelreg.ops.padding import crop_border, replicate_pad

__all__ = ["sobolev_kernel_1d", "sobolev_smooth"]


def sobolev_kernel_1d(size: int = 7, smoothness: int = 3, lam: float = 0.5) -> np.ndarray:
    """learnsim's 1-D Sobolev smoothing kernel (``Sobolev_kernel_1D(s, lambda)``).

    ``k = (I - lam L)^-1 e_c / sum((I - lam L)^-1 e_c)``, where ``L`` is the ``size x size``
    discrete 1-D Laplacian (``-2`` on the diagonal, ``1`` on the first off-diagonals, Dirichlet
    outside the window), ``e_c`` the one-hot vector of the centre tap ``c = smoothness``. The kernel
    is symmetric, positive and sums to 1; larger ``lam`` spreads it further. The defaults give
    ``[1, 4, 15, 56, 15, 4, 1] / 96``.

    Args:
        size: number of taps; must equal ``2 * smoothness + 1`` (the reference derives the width
            from ``s``, so the two arguments say the same thing and are checked against each
            other).
        smoothness: the reference's ``s``, the half-width of the kernel (``>= 0``).
        lam: the weight ``lambda >= 0`` of the Laplacian; ``0`` gives a one-hot centre tap (no
            smoothing).

    Returns:
        float32 ``[size]``.

    Raises:
        ValueError: on a negative or non-integer ``smoothness``, ``size != 2 * smoothness + 1``,
            or a negative or non-finite ``lam``.
    """
    smoothness = check_integer(smoothness, "smoothness", 0)
    size = check_integer(size, "size", 1)
    if size != 2 * smoothness + 1:
        raise ValueError(
            f"size must be 2 * smoothness + 1 = {2 * smoothness + 1}; received size={size}, "
            f"smoothness={smoothness}."
        )
    lam = check_number(lam, "lam", 0)
    laplacian = (
        np.diag(np.full(size, -2.0))
        + np.diag(np.ones(size - 1), 1)
        + np.diag(np.ones(size - 1), -1)
    )
    centre = np.zeros(size)
    centre[smoothness] = 1.0
    # I - lam L is symmetric positive definite (L is negative semi-definite), so this is stable.
    column = np.linalg.solve(np.eye(size) - float(lam) * laplacian, centre)
    return (column / column.sum()).astype(np.float32)


def sobolev_smooth(velocity: Any, smoothness: int = 3, lam: float = 0.5) -> tf.Tensor:
    """Smooth every component of a field with the Sobolev kernel; the gradient is the identity.

    Forward: each channel is correlated with :func:`sobolev_kernel_1d` along every spatial axis in
    turn, over the field padded by ``smoothness`` voxels with its edge values (the reference's
    replicate padding), so the output keeps the input's shape. Backward: the upstream gradient is
    returned unchanged, as learnsim's ``SobolevGrad`` does; this is on purpose not the true
    gradient of the forward map (which would be the same smoothing again, the kernel being
    symmetric, except at the borders).

    Args:
        velocity: ``[B, *S, C]`` with 2 or 3 spatial axes, usually ``C = n``.
        smoothness: half-width of the kernel (learnsim's ``s``).
        lam: Laplacian weight of the kernel (learnsim's ``lambda``).

    Returns:
        float32 ``[B, *S, C]``.
    """
    velocity = check_image(velocity, "velocity")
    kernel = sobolev_kernel_1d(2 * check_integer(smoothness, "smoothness", 0) + 1, smoothness, lam)
    pad = int(smoothness)
    if pad == 0:
        return tf.identity(velocity)
    # The zero "SAME" padding of separable_filter only reaches the `pad` voxels of edge padding,
    # which the crop removes: the kept voxels see replicate padding only.
    weights = tf.constant(kernel)

    @tf.custom_gradient
    def smooth(v: tf.Tensor) -> tuple[tf.Tensor, Any]:
        out = crop_border(separable_filter(replicate_pad(v, pad), weights), pad)

        def grad(upstream: tf.Tensor) -> tf.Tensor:
            return upstream

        return out, grad

    return smooth(velocity)
