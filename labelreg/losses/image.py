"""Image dissimilarities between a fixed image and a warped moving image (lower is better).

Every function takes ``fixed`` and ``warped`` of the same shape ``[B, *S, C]`` (2-D or 3-D),
returns one value per sample ``[B]`` (float32) and is differentiable in both images.

Flat images and windows. A similarity normalised by the image contrast (``lncc``, ``gncc``) is
0/0 where an image is constant. Such a region carries no evidence of a match, so it scores as
*no* match (zero correlation), never as a perfect one: otherwise a network could lower the loss
by warping the moving image out of view (an all-zero warped image). The normalisations divide
by ``max(var_f var_w, eps)``, with ``eps`` relative to the images' own scale so that every loss
stays invariant to a gain of either image, and set well above the float32 rounding left in the
variance of a constant window or image (see :func:`lncc` and :func:`gncc`). Two all-zero
images fall back to a tiny absolute floor: every term is then an exact 0 / floor = 0.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from labelreg._tf import tf
from labelreg.losses.label import check_pair
from labelreg.ops import separable_filter
from labelreg.ops.checks import check_integer, check_number

__all__ = ["ssd", "lncc", "gncc", "nmi", "mind_ssc"]

_NAMES = ("fixed", "warped")
# Flatness thresholds on the product of two variances: for lncc relative to the product of the
# images' global variances, for gncc relative to the product of their mean squares (the choices
# are explained in their docstrings). The absolute floor keeps 0 / 0 at 0 for all-zero images.
_LOCAL_FLAT = 1e-5
_GLOBAL_FLAT = 1e-12
_FLOOR = 1e-30


def _mean(x: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(x, axis=list(range(1, x.shape.rank)))


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
    """Local squared normalised cross-correlation, ``1 - mean(cc)`` (DeepSim's ``ncc2``).

    Over each cubic window ``W`` of ``window`` voxels per side centred on every voxel, with
    ``<.>`` the mean over the voxels of ``W`` inside the image (window sums with zero padding,
    divided by the number of in-image voxels of the window):

    ``cross = <fw> - <f><w>``, ``var_f = max(<f²> - <f>², 0)``, likewise ``var_w``,
    ``cc = min(cross² / max(var_f var_w, eps), 1)``, ``eps = 1e-5 Var[f] Var[w]``

    with ``Var`` the variance over the whole image, per sample and channel (floored at 1e-30
    for two flat images). ``cc`` is the squared Pearson correlation of the window, in [0, 1]
    and blind to the sign of the contrast. A window where either image is flat gives
    ``cc = 0``: it counts as a mismatch, so a constant or all-zero warped image scores 1, the
    worst value, with a zero gradient and never NaN. (DeepReg's ``(cross² + eps) / (var_f var_w
    + eps)`` made such windows perfect matches instead.) "Flat" means that the product of the
    window's two standard deviations is below about 3e-3 times the product of the images'
    global ones (``sqrt(1e-5)``); above that, ``cc`` is exact, and below it, it fades out as
    ``var_f var_w / eps``. The threshold is relative so that the loss stays invariant to a gain
    of either image. It sits well above the float32 rounding of the window variances of a flat
    region (``1e-7`` to ``1e-6 Var`` each, after the centring below): with 1e-6, that rounding left
    a spurious gradient in the flat part of a half-flat image of a few percent of the gradient
    in its textured part, 0.3% with 1e-5; and it sits well below real texture, whose windows
    have standard deviations of the order of the global ones. As a consequence, when the images
    have flat regions (e.g. a zero background), even identical images score the fraction of
    flat windows rather than 0; that offset has no gradient.

    Border windows are clipped to the image rather than counted as ``window**n`` voxels with
    zeros outside (DeepSim, DeepReg): the zeros would give every border window of a constant
    image a step, correlated with the fixed image's own step to the padding, i.e. a partial
    reward for a flat image. Clipped windows also make the loss invariant to ``a f + b`` and
    ``a w + b`` (``a != 0``), which lets each image be centred on its global mean first, so the
    window moments are computed without the float32 cancellation of a large offset.

    The clamp of the variances removes the small negatives that rounding leaves in flat
    windows; the clamp of ``cc`` to 1 removes its rounding excess (Cauchy-Schwarz).

    Args:
        fixed, warped: ``[B, *S, C]``.
        window: odd side of the window, in voxels.

    Returns:
        float32 ``[B]`` in [0, 1]: ``1 - mean(cc)`` over voxels and channels; 0 for
        ``warped = a fixed + b`` (``a != 0``) when no window is flat.

    Raises:
        ValueError: for mismatched shapes or a ``window`` that is not an odd integer >= 1.
    """
    window = check_integer(window, "window", 1, odd=True)
    f, w = check_pair(fixed, warped, _NAMES)
    spatial = list(range(1, f.shape.rank - 1))
    f = f - tf.reduce_mean(f, spatial, keepdims=True)
    w = w - tf.reduce_mean(w, spatial, keepdims=True)
    eps = tf.maximum(_LOCAL_FLAT * tf.reduce_mean(f * f, spatial, keepdims=True)
                     * tf.reduce_mean(w * w, spatial, keepdims=True), _FLOOR)
    # In-image voxels of each window: the same for every sample and channel.
    count = _box_sum(tf.ones_like(f[:1, ..., :1]), window)
    # One filtering pass for the five window means, stacked on the batch axis.
    means = _box_sum(tf.concat([f, w, f * f, w * w, f * w], axis=0), window) / count
    mean_f, mean_w, mean_ff, mean_ww, mean_fw = tf.split(means, 5, axis=0)
    cross = mean_fw - mean_f * mean_w
    var_f = tf.maximum(mean_ff - tf.square(mean_f), 0.0)
    var_w = tf.maximum(mean_ww - tf.square(mean_w), 0.0)
    cc = tf.minimum(tf.square(cross) / tf.maximum(var_f * var_w, eps), 1.0)
    return 1.0 - _mean(cc)


def gncc(fixed: Any, warped: Any) -> tf.Tensor:
    """Global normalised cross-correlation, ``1 - ncc`` per sample.

    ``ncc = E[f' w'] / sqrt(max(p, eps)) * min(p / eps, 1)`` with ``f' = f - E[f]``,
    ``w' = w - E[w]``, ``p = E[f'²] E[w'²]``, ``E`` the mean over all non-batch axes
    (channels pooled) and ``eps = 1e-12 E[f²] E[w²]`` (floored at 1e-30 for two all-zero
    images). The images are centred before the products, so the variances are accurate down
    to about 1e-7 of the RMS intensity: an image counts as flat when the product of the two
    standard deviations is below 1e-6 times the product of the RMS intensities, which keeps
    the loss invariant to ``a w + b`` for any practical offset. Below that threshold the
    correlation fades out as ``(p / eps)^1.5`` (continuous, ``|ncc| <= 1`` still), so a
    constant (or all-zero) image gives ``ncc = 0`` *and* a zero gradient: loss 1, as for
    uncorrelated images, never NaN, rather than the unbounded ``f' / (N sqrt(eps))`` gradient
    of the plain ``max``.

    Args:
        fixed, warped: ``[B, *S, C]``.

    Returns:
        float32 ``[B]`` in [0, 2]: 0 for ``warped = a fixed + b`` with ``a > 0``, 1 for
        uncorrelated images, 2 for ``a < 0``.

    Raises:
        ValueError: for mismatched shapes.
    """
    f, w = check_pair(fixed, warped, _NAMES)
    axes = list(range(1, f.shape.rank))
    centred_f = f - tf.reduce_mean(f, axes, keepdims=True)
    centred_w = w - tf.reduce_mean(w, axes, keepdims=True)
    # The corrected two-pass formulas: the centred values of a constant image are all equal to
    # the rounding error of its mean, and subtracting their own mean again makes its variance
    # and covariances vanish to rounding instead of leaving that error squared.
    mean_f, mean_w = _mean(centred_f), _mean(centred_w)
    cov = _mean(centred_f * centred_w) - mean_f * mean_w
    var_f = tf.maximum(_mean(tf.square(centred_f)) - tf.square(mean_f), 0.0)
    var_w = tf.maximum(_mean(tf.square(centred_w)) - tf.square(mean_w), 0.0)
    product = var_f * var_w
    eps = tf.maximum(_GLOBAL_FLAT * _mean(f * f) * _mean(w * w), _FLOOR)
    ncc = cov / tf.sqrt(tf.maximum(product, eps)) * tf.minimum(product / eps, 1.0)
    # Rounding can take |ncc| a hair above 1.
    return 1.0 - tf.clip_by_value(ncc, -1.0, 1.0)


def _entropy(p: tf.Tensor, axes: list[int]) -> tf.Tensor:
    # p log p -> 0 as p -> 0; the epsilon keeps the log (and its gradient) finite at p = 0.
    return -tf.reduce_sum(p * tf.math.log(p + 1e-10), axis=axes)


def nmi(
    fixed: Any,
    warped: Any,
    bins: int = 64,
    sigma: float | None = None,
    sample_fraction: float = 1.0,
    seed: int = 0,
    vmax: float = 1.0,
) -> tf.Tensor:
    """Negative normalised mutual information ``-(H(f) + H(w)) / H(f, w)``, Parzen windows.

    Intensities are clipped to [0, ``vmax``] (scale the images there first) and every voxel
    contributes to all ``bins`` bins, centred on ``linspace(0, vmax, bins)``, with Gaussian
    weights of standard deviation ``sigma`` (default: full width at half maximum one bin,
    ``bin_width / (2 sqrt(2 ln 2))`` with ``bin_width = vmax / (bins - 1)``), normalised to sum
    1 per voxel (a softmax over the bins, so even a tiny ``sigma`` cannot make it 0 / 0). That
    soft assignment is what makes the histogram differentiable. The channels are pooled: each
    (voxel, channel) is one sample of the joint distribution. Memory is
    ``B x samples x bins`` floats per image.

    With ``sample_fraction < 1`` only ``round(sample_fraction x voxels)`` voxels (at least
    one), the same for both images and all samples of the batch, enter the histograms: a
    random subset drawn without replacement from ``seed``, hence the same at every call with
    the same seed and image shape (pass a different seed to draw another subset). That saves
    memory and time in 3-D; the default uses every voxel.

    ``NMI`` lies in [1, 2]: 1 for independent images (a constant image included), up to 2 for
    identical ones (slightly less because of the Parzen blur). A small epsilon in the numerator
    and denominator makes two constant images give 1 instead of 0/0. Being a function of the
    joint histogram only, it is unchanged by an intensity map that maps the bin centres onto
    each other (e.g. ``vmax - x``), and changes only through the bin quantisation under another
    invertible map inside [0, vmax] (by a few hundredths for ``0.6 x + 0.2``).

    Args:
        fixed, warped: ``[B, *S, C]`` intensities, expected in [0, ``vmax``].
        bins: number of histogram bins, >= 2.
        sigma: Gaussian standard deviation in intensity units (> 0), or ``None`` for one bin
            FWHM.
        sample_fraction: fraction of the voxels used, in (0, 1].
        seed: integer >= 0 choosing the voxel subset when ``sample_fraction < 1``.
        vmax: upper end of the intensity range (> 0); the bins span [0, vmax].

    Returns:
        float32 ``[B]`` in about [-2, -1]; lower is better.

    Raises:
        ValueError: for mismatched shapes or an invalid option.
    """
    bins = check_integer(bins, "bins", 2)
    vmax = check_number(vmax, "vmax", 0, exclusive_minimum=True)
    if sigma is None:
        sigma = (vmax / (bins - 1)) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma = check_number(sigma, "sigma", 0, exclusive_minimum=True)
    sample_fraction = check_number(sample_fraction, "sample_fraction", 0, 1.0, exclusive_minimum=True)
    seed = check_integer(seed, "seed", 0)
    f, w = check_pair(fixed, warped, _NAMES)

    def flatten(x: tf.Tensor) -> tf.Tensor:  # [B, *S, C] -> [B, voxels, C]
        return tf.reshape(x, [tf.shape(x)[0], -1, tf.shape(x)[-1]])

    f, w = flatten(f), flatten(w)
    if sample_fraction < 1.0:
        voxels = tf.shape(f)[1]
        count = tf.cast(tf.round(sample_fraction * tf.cast(voxels, tf.float32)), tf.int32)
        order = tf.random.experimental.stateless_shuffle(tf.range(voxels), seed=[seed, 0])
        index = order[: tf.maximum(count, 1)]
        f, w = tf.gather(f, index, axis=1), tf.gather(w, index, axis=1)

    centres = tf.linspace(0.0, vmax, bins)

    def parzen(x: tf.Tensor) -> tf.Tensor:  # [B, n, C] -> [B, n C, bins]
        x = tf.reshape(tf.clip_by_value(x, 0.0, vmax), [tf.shape(x)[0], -1, 1])
        return tf.nn.softmax(-tf.square(x - centres) / (2.0 * sigma**2), axis=-1)

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
    radius = check_integer(radius, "radius", 0)
    dilation = check_integer(dilation, "dilation", 1)
    f, w = check_pair(fixed, warped, _NAMES)
    difference = _mind_descriptor(f, radius, dilation) - _mind_descriptor(w, radius, dilation)
    return _mean(tf.square(difference))
