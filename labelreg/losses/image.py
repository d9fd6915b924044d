"""Image dissimilarities between a fixed image and a warped moving image (lower is better).

Every function takes ``fixed`` and ``warped`` of the same shape ``[B, *S, C]`` (2-D or 3-D),
returns one value per sample ``[B]`` (float32) and is differentiable in both images.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.losses.label import check_pair

# The Gaussian filter's separable zero-padded convolution serves any 1-D kernel; a public
from labelreg.ops import separable_filter

__all__ = ["ssd", "lncc", "nmi", "mind_ssc"]

_NAMES = ("fixed", "warped")


def _mean(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(x, axis=list(range(1, x.shape.rank)))


def _check_int(value: Any, name: str, minimum: int, odd: bool = False) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= minimum
    if not ok or (odd and value % 2 == 0):
        kind = "an odd integer" if odd else "an integer"
        raise ValueError(f"{name} must be {kind} >= {minimum}; received {name}={value!r}.")
    return int(value)


def ssd(fixed: Any, warped: Any) -> tf.Tensor:
    """Mean squared intensity difference ``mean((f - w)²)`` over all non-batch axes.

    Args:
        fixed, warped: ``[B, *S, C]``.

    Returns:
        float32 ``[B]`` in squared intensity units.
    """
    f, w = check_pair(fixed, warped, _NAMES)
    return _mean(tf.square(f - w))


def _box_sum(x: tf.Tensor, window: int) -> tf.Tensor:
    """Sum of each channel over a centred cubic window, zero padding outside the image."""
    return separable_filter(x, tf.ones([window], tf.float32))


def lncc(fixed: Any, warped: Any, window: int = 9) -> tf.Tensor:
    """Negative local squared normalised cross-correlation (DeepReg's ``lncc``).

    Over each cubic window ``W`` of ``window`` voxels per side (zero padding at the borders, the
    window always counted as ``window**n`` voxels), with ``Σ`` the window sums and ``N = |W|``:

    ``cross = Σfw - Σf Σw / N``, ``var_f = max(Σf² - (Σf)² / N, 0)``, likewise ``var_w``,
    ``lncc = (cross² + 1e-5) / (var_f var_w + 1e-5)``.

    The clamp removes the small negative variances that float32 cancellation leaves in flat
    patches, and the epsilon turns the 0/0 of a patch that is constant in either image into 1
    (DeepReg's choice, the fix of the NaN/Inf of its issue #690), so such patches neither
    reward nor penalise a change of the other image. Identical images give exactly -1.

    Args:
        fixed, warped: ``[B, *S, C]``.
        window: odd side of the window, in voxels.

    Returns:
        float32 ``[B]``: ``-mean(lncc)`` over voxels and channels, in [-1, 0] up to the epsilon.

    Raises:
        ValueError: for mismatched shapes or a ``window`` that is not an odd integer >= 1.
    """
    window = _check_int(window, "window", 1, odd=True)
    f, w = check_pair(fixed, warped, _NAMES)
    volume = float(window ** (f.shape.rank - 2))
    # One filtering pass for the five window sums, stacked on the batch axis.
    sums = _box_sum(tf.concat([f, w, f * f, w * w, f * w], axis=0), window)
    sum_f, sum_w, sum_ff, sum_ww, sum_fw = tf.split(sums, 5, axis=0)
    cross = sum_fw - sum_f * sum_w / volume
    var_f = tf.maximum(sum_ff - sum_f * sum_f / volume, 0.0)
    var_w = tf.maximum(sum_ww - sum_w * sum_w / volume, 0.0)
    eps = 1e-5
    return -_mean((tf.square(cross) + eps) / (var_f * var_w + eps))


def _entropy(p: tf.Tensor, axes: list[int]) -> tf.Tensor:
    # p log p -> 0 as p -> 0; the epsilon keeps the log (and its gradient) finite at p = 0.
    return -tf.reduce_sum(p * tf.math.log(p + 1e-10), axis=axes)


def nmi(fixed: Any, warped: Any, bins: int = 64) -> tf.Tensor:
    """Negative normalised mutual information ``-(H(f) + H(w)) / H(f, w)``, Parzen windows.

    Intensities are clipped to [0, 1] (scale the images there first) and every voxel
    contributes to all ``bins`` bins, centred on ``linspace(0, 1, bins)``, with Gaussian weights
    of full width at half maximum one bin (``sigma = bin_width / (2 sqrt(2 ln 2))``), normalised
    to sum 1 per voxel. That soft assignment is what makes the histogram differentiable. The
    channels are pooled: each (voxel, channel) is one sample of the joint distribution. No
    voxels are subsampled, so the result is deterministic; memory is ``B x voxels x bins``
    floats per image.

    ``NMI`` lies in [1, 2]: 1 for independent images, up to 2 for identical ones (slightly less
    because of the Parzen blur). A small epsilon in the numerator and denominator makes two
    constant images give 1 instead of 0/0.

    Args:
        fixed, warped: ``[B, *S, C]`` intensities, expected in [0, 1].
        bins: number of histogram bins, >= 2.

    Returns:
        float32 ``[B]`` in about [-2, -1].

    Raises:
        ValueError: for mismatched shapes or ``bins`` not an integer >= 2.
    """
    bins = _check_int(bins, "bins", 2)
    f, w = check_pair(fixed, warped, _NAMES)
    centres = tf.linspace(0.0, 1.0, bins)
    sigma = (1.0 / (bins - 1)) / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    def parzen(x: tf.Tensor) -> tf.Tensor:  # [B, *S, C] -> [B, N, bins]
        x = tf.reshape(tf.clip_by_value(x, 0.0, 1.0), [tf.shape(x)[0], -1, 1])
        weights = tf.exp(-tf.square(x - centres) / (2.0 * sigma**2))
        return weights / tf.reduce_sum(weights, axis=-1, keepdims=True)

    weights_f, weights_w = parzen(f), parzen(w)
    samples = tf.cast(tf.shape(weights_f)[1], tf.float32)
    joint = tf.einsum("bni,bnj->bij", weights_f, weights_w) / samples
    h_f = _entropy(tf.reduce_mean(weights_f, axis=1), [1])
    h_w = _entropy(tf.reduce_mean(weights_w, axis=1), [1])
    h_joint = _entropy(joint, [1, 2])
    eps = 1e-6
    return -(h_f + h_w + eps) / (h_joint + eps)


def _edge_pad(x: tf.Tensor, pad: int) -> tf.Tensor:
    """Pad every spatial axis of ``[B, *S, C]`` by ``pad`` voxels that repeat the edge value."""
    for axis in range(1, x.shape.rank - 1):
        size = tf.shape(x)[axis]
        index = tf.clip_by_value(tf.range(-pad, size + pad), 0, size - 1)
        x = tf.gather(x, index, axis=axis)
    return x


def _ssc_pairs(n: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Neighbour pairs of the self-similarity context.

    The neighbours are the ``2n`` face neighbours ``±e_i`` of the centre; SSC compares every
    two of them that lie ``sqrt(2)`` apart, i.e. on different axes: 4 pairs in 2-D, 12 in 3-D.
    The centre itself is never used, which makes the descriptor robust to noise at the centre.
    """
    pairs = []
    for i, j in itertools.combinations(range(n), 2):
        for si, sj in itertools.product((-1, 1), repeat=2):
            a, b = [0] * n, [0] * n
            a[i], b[j] = si, sj
            pairs.append((tuple(a), tuple(b)))
    return pairs


def _mind_descriptor(image: tf.Tensor, radius: int, dilation: int) -> tf.Tensor:
    """MIND-SSC descriptor ``[B, *S, C, K]`` of ``[B, *S, C]``, K = 4 (2-D) or 12 (3-D)."""
    n = image.shape.rank - 2
    padded = _edge_pad(image, dilation)

    def shifted(offset: tuple[int, ...]) -> tf.Tensor:  # out[x] = image[x + dilation * offset]
        index = [slice(None)]
        for o in offset:
            start = dilation * (1 + o)
            stop = start - 2 * dilation
            index.append(slice(start, stop if stop < 0 else None))
        return padded[tuple(index)]

    squared = tf.stack([tf.square(shifted(a) - shifted(b)) for a, b in _ssc_pairs(n)], axis=-1)
    # Patch distance: mean of the squared differences over a (2r+1)^n patch, edges repeated.
    flat = tf.reshape(squared, tf.concat([tf.shape(squared)[:-2], [-1]], axis=0))
    # One 1-D pool per axis: the box is separable, and this is ~6x faster than one cubic pool
    # (forward and backward) for the default radius. An explicit data_format: without it the
    # eager gradient of a 3-D pool fails (TF 2.21).
    layout = "NHWC" if n == 2 else "NDHWC"
    patch = _edge_pad(flat, radius)
    for d in range(n):
        window = [1] * n
        window[d] = 2 * radius + 1
        patch = tf.nn.avg_pool(patch, window, 1, "VALID", data_format=layout)
    distance = tf.reshape(patch, tf.shape(squared))

    # Local variance estimate: the mean patch distance over the pairs, clamped around its mean
    # over the image (per sample and channel) so flat regions do not divide by ~0 and strong
    # edges do not flatten everything else.
    variance = tf.reduce_mean(distance, axis=-1, keepdims=True)
    global_mean = tf.reduce_mean(variance, axis=list(range(1, n + 1)), keepdims=True)
    # The tiny floor only matters for a constant image (V = 0), whose descriptor is then 1.
    variance = tf.clip_by_value(variance, 1e-3 * global_mean, 1e3 * global_mean) + 1e-9
    # Subtracting the smallest distance normalises the largest entry to exp(0) = 1.
    nearest = tf.reduce_min(distance, axis=-1, keepdims=True)
    return tf.exp(-(distance - nearest) / variance)


def mind_ssc(fixed: Any, warped: Any, radius: int = 2, dilation: int = 2) -> tf.Tensor:
    """Mean squared difference of MIND-SSC descriptors (Heinrich et al., MICCAI 2013).

    For each pair ``(a, b)`` of face neighbours on different axes (4 pairs in 2-D, 12 in 3-D),
    the patch distance ``D(x) = mean_{p in P} (I(x + p + dilation a) - I(x + p + dilation b))²``
    averages over a cubic patch ``P`` of side ``2 radius + 1``. The descriptor is
    ``exp(-(D - min D) / V)`` with ``V`` the mean of ``D`` over the pairs, clamped to
    [1e-3, 1e3] times its mean over the image. Out-of-image values repeat the edge voxel.
    Because ``D`` and ``V`` both scale with the square of the contrast, the descriptor, and so
    the loss, is invariant to an affine intensity change ``a I + b``, which is what makes it a
    multi-modal similarity. Channels are described independently.

    Args:
        fixed, warped: ``[B, *S, C]``.
        radius: half-side of the patch, in voxels (>= 0); 0 compares single voxels.
        dilation: distance of the neighbours from the centre, in voxels (>= 1).

    Returns:
        float32 ``[B]`` in [0, 1]: ``mean((MIND_f - MIND_w)²)`` over voxels, channels, pairs;
        0 for identical images.

    Raises:
        ValueError: for mismatched shapes or invalid ``radius``/``dilation``.
    """
    radius = _check_int(radius, "radius", 0)
    dilation = _check_int(dilation, "dilation", 1)
    f, w = check_pair(fixed, warped, _NAMES)
    difference = _mind_descriptor(f, radius, dilation) - _mind_descriptor(w, radius, dilation)
    return _mean(tf.square(difference))
