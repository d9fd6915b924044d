"""learnsim's variational posterior over stationary velocity fields, 2-D and 3-D.

Grzech et al., "A variational Bayesian method for similarity learning in non-rigid image
registration", CVPR 2022, register each image pair by fitting a Gaussian ``q(v)`` to the posterior
of its stationary velocity field ``v`` (``[*S, n]`` in voxel units, channels-last here). The
covariance is diagonal plus rank one,

    ``v = mu + sigma * eps + x * u``,  ``eps ~ N(0, I)`` per voxel and component, ``x ~ N(0, 1)``,

so ``Cov[v] = diag(sigma^2) + u u^T`` over the flattened field of one pair. The per-pair
objective (a negative-ELBO estimate; learnsim's ``_step_q_v``) with two antithetic samples
``v1, v2 = mu +- (sigma * eps + x * u)`` is

    ``(D1 + D2) / 2 + (R1 + R2) / 2 - [entropy() + (Q1 + Q2) / 2]``

with ``Di`` the data term of the image warped by ``transformation(vi)``, ``Ri =
velocity_regulariser(sobolev_smooth(vi), w_reg)`` and ``Qi = quadratic(vi)`` on the *unsmoothed*
sample. ``entropy() + E[quadratic(v)] = entropy() + N / 2`` is the entropy of ``q`` up to the
constant ``N log(2 pi) / 2`` (``N`` the number of entries of one field); the reference estimates
it with the samples, whose gradient also flows through ``v``.

One difference from the reference, on purpose: learnsim draws a single ``x`` for the whole batch
(``torch.randn(1)``), which correlates the pairs of a batch; here every pair gets its own ``x``,
so the pairs are independent as the factorised posterior says. Each pair's marginal is the same.

Randomness is stateless: :meth:`SVFPosterior.sample` takes a seed tensor, so one compiled
``tf.function`` serves every iteration without retracing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.errors import shape_text
from labelreg.ops.checks import check_ddf, check_image, check_number
from labelreg.ops.integrate import integrate_svf
from labelreg.ops.sobolev import sobolev_smooth

__all__ = ["SVFPosterior", "velocity_regulariser", "transformation"]



def _sum_per_pair(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(x, axis=list(range(1, x.shape.rank)))


def _check_seed(seed: Any) -> tf.Tensor:
    """A stateless-RNG seed: an ``int`` becomes ``[seed, 0]``; a tensor must have shape ``[2]``."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return tf.constant([int(seed), 0], tf.int64)
    t = tf.convert_to_tensor(seed)
    if not t.dtype.is_integer or t.shape.rank != 1 or t.shape[0] not in (None, 2):
        raise ValueError(
            "seed must be an integer or an integer tensor of shape [2]; received "
            f"dtype={t.dtype.name}, shape={shape_text(t.shape.as_list() if t.shape.rank else [])}."
        )
    return tf.cast(t, tf.int64)


class SVFPosterior(tf.Module):
    """Diagonal-plus-rank-one Gaussian ``q(v)`` for a batch of pairs, one per pair.

    Holds three trainable float32 variables of shape ``[B, *S, n]`` (``n = len(S)``, 2 or 3):
    ``mu`` (initialised to 0), ``log_var`` (``log sigma_init^2``) and ``u`` (``u_init``, the
    direction of the rank-one term). learnsim's defaults are ``sigma_init = 0.5`` and
    ``u_init = 0.1``. The variables are created once; :meth:`reset` and ``variable.assign`` reuse
    them for the next batch (or a warm start from saved parameters) without retracing.

    Args:
        shape: ``(B, *S, n)``, static.
        sigma_init: initial standard deviation (``> 0``), voxels.
        u_init: initial value of every entry of ``u``.
        name: name of the module.

    Raises:
        ValueError: on an ill shape or a non-positive ``sigma_init``.
    """

    def __init__(
        self,
        shape: Sequence[int],
        sigma_init: float = 0.5,
        u_init: float = 0.1,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        shape = tuple(shape)
        ok = len(shape) in (4, 5) and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in shape
        )
        if not ok or shape[-1] != len(shape) - 2:
            raise ValueError(
                "shape must be (batch, *spatial, n) with 2 or 3 positive spatial sizes and "
                f"n equal to the number of spatial axes; received shape={shape!r}."
            )
        self.shape = tuple(int(d) for d in shape)
        self.sigma_init = check_number(sigma_init, "sigma_init", 0, exclusive_minimum=True)
        ok = isinstance(u_init, (int, float, np.integer, np.floating)) and not isinstance(
            u_init, bool
        )
        if not ok or not np.isfinite(u_init):
            raise ValueError(f"u_init must be a finite number; received u_init={u_init!r}.")
        self.u_init = float(u_init)
        with self.name_scope:
            self.mu = tf.Variable(tf.zeros(self.shape), name="mu")
            self.log_var = tf.Variable(tf.zeros(self.shape), name="log_var")
            self.u = tf.Variable(tf.zeros(self.shape), name="u")
        self.reset()

    def reset(self) -> None:
        """Assign the initial values: ``mu = 0``, ``sigma = sigma_init``, ``u = u_init``."""
        self.mu.assign(tf.zeros(self.shape))
        self.log_var.assign(tf.fill(self.shape, np.float32(2.0 * np.log(self.sigma_init))))
        self.u.assign(tf.fill(self.shape, np.float32(self.u_init)))

    @property
    def sigma(self) -> tf.Tensor:
        """The standard deviation ``exp(log_var / 2)``, ``[B, *S, n]``."""
        return tf.exp(0.5 * self.log_var)

    def sample(self, seed: Any) -> tuple[tf.Tensor, tf.Tensor]:
        """Two antithetic samples ``mu + d`` and ``mu - d``, ``d = sigma * eps + x * u``.

        ``eps`` has one standard normal draw per voxel and component, ``x`` one per pair. Both
        come from ``tf.random.stateless_normal`` with seeds split from ``seed``, so the same seed
        gives the same samples, and a new seed *tensor* under ``tf.function`` does not retrace
        (a Python ``int`` would: pass ``tf.constant([i, 0])``). Differentiable in the variables
        (reparameterisation).

        Args:
            seed: integer tensor of shape ``[2]`` (or a Python ``int`` for eager use).

        Returns:
            ``(v1, v2)``, float32 ``[B, *S, n]`` each; ``(v1 + v2) / 2 == mu`` up to rounding.
        """
        eps_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(_check_seed(seed), 2))
        eps = tf.random.stateless_normal(self.shape, eps_seed)
        x = tf.random.stateless_normal([self.shape[0]] + [1] * (len(self.shape) - 1), x_seed)
        d = self.sigma * eps + x * self.u
        return self.mu + d, self.mu - d

    def entropy(self) -> tf.Tensor:
        """``0.5 (log(1 + sum (u / sigma)^2) + sum log sigma^2)`` per pair, ``[B]``.

        This is ``0.5 log det(diag(sigma^2) + u u^T)`` (matrix determinant lemma), the entropy of
        ``q`` without its constant ``N (1 + log 2 pi) / 2``, ``N`` the entries of one field (as
        learnsim's ``EntropyMultivariateNormal``).
        """
        u_n = self.u / self.sigma
        return 0.5 * (tf.math.log1p(_sum_per_pair(tf.square(u_n))) + _sum_per_pair(self.log_var))

    def quadratic(self, v: Any) -> tf.Tensor:
        """``0.5 (v - mu)^T Cov^-1 (v - mu)`` per pair, ``[B]``, by Sherman-Morrison.

        With ``r = (v - mu) / sigma`` and ``w = u / sigma``:
        ``0.5 (|r|^2 - (r . w)^2 / (1 + |w|^2))``. learnsim evaluates it on the unsmoothed samples.

        Args:
            v: ``[B, *S, n]``, the shape of the posterior.

        Raises:
            ValueError: when ``v`` does not have the posterior's shape.
        """
        v = check_ddf(v, "v")
        if v.shape.is_fully_defined() and tuple(v.shape) != self.shape:
            raise ValueError(
                f"v must have the posterior's shape {shape_text(self.shape)}; received shape "
                f"{shape_text(v.shape)}."
            )
        sigma = self.sigma
        r = (v - self.mu) / sigma
        w = self.u / sigma
        projection = _sum_per_pair(r * w)
        return 0.5 * (
            _sum_per_pair(tf.square(r))
            - tf.square(projection) / (1.0 + _sum_per_pair(tf.square(w)))
        )


def velocity_regulariser(v: Any, weight: Any) -> tf.Tensor:
    """``0.5 * weight * sum |grad v|^2`` per pair, ``[B]`` (learnsim's ``RegLoss_L2``).

    The gradient is taken with forward differences ``v[i + 1] - v[i]`` along every spatial axis, in
    voxel units, and the difference field is padded at the far end with a copy of its last slice
    (the reference's replicate padding of ``GradientOperator``), so the last difference of every
    line counts twice. The squares are **summed** (not averaged) over components, axes and voxels,
    as the reference sums over every non-batch axis; the value grows with the image size. learnsim
    applies it to the Sobolev-smoothed velocity, with ``weight`` 1.8 (SSD) or 2.8 (LCC) for SVF.

    Args:
        v: ``[B, *S, C]`` with 2 or 3 spatial axes.
        weight: ``w_reg >= 0``, a number or a scalar tensor.

    Returns:
        float32 ``[B]``.

    Raises:
        ValueError: on an ill shape or a negative number as ``weight``.
    """
    v = check_image(v, "v")
    if not tf.is_tensor(weight):
        weight = check_number(weight, "weight", 0)
    total = 0.0
    for axis in range(1, v.shape.rank - 1):
        lead = (slice(None),) * axis
        diff = v[lead + (slice(1, None),)] - v[lead + (slice(None, -1),)]
        # The replicated last difference (empty when the axis has a single voxel).
        last = diff[lead + (slice(-1, None),)]
        total += _sum_per_pair(tf.square(diff)) + _sum_per_pair(tf.square(last))
    return 0.5 * tf.cast(weight, tf.float32) * total


def transformation(
    v: Any, steps: int = 12, smooth: bool = True, smoothness: int = 3, lam: float = 0.5
) -> tf.Tensor:
    """The displacement of a velocity sample: Sobolev smoothing, then scaling and squaring.

    ``integrate_svf(sobolev_smooth(v), steps)``; the smoothing's gradient is the identity (see
    :func:`labelreg.ops.sobolev.sobolev_smooth`). learnsim uses 12 squarings, ``s = 3`` and
    ``lambda = 0.5``. Pass ``smooth=False`` when ``v`` is already smoothed (e.g. shared with
    :func:`velocity_regulariser`).

    Args:
        v: velocity ``[B, *S, n]`` in voxel units.
        steps: number of squarings.
        smooth: whether to smooth ``v`` first.
        smoothness: half-width of the Sobolev kernel.
        lam: Laplacian weight of the Sobolev kernel.

    Returns:
        float32 displacement ``[B, *S, n]`` in voxel units.
    """
    v = check_ddf(v, "v")
    if smooth:
        v = sobolev_smooth(v, smoothness, lam)
    return integrate_svf(v, steps)
