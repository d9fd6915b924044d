"""Dense warping: sample a moving image at the fixed grid displaced by a DDF.

One vectorised N-linear sampler serves 2-D and 3-D, any channel count and moving and fixed grids
of different shapes. The ``2**n`` corners of every sample are gathered from the flattened batch in
one ``tf.gather`` each, with no per-sample ``map_fn``.
"""

from __future__ import annotations

import itertools
from typing import Any

from labelreg._tf import tf
from labelreg.ops.checks import check_ddf, check_image
from labelreg.ops.grid import reference_grid
from labelreg.ops.jit import maybe_compiled

__all__ = ["warp", "sample"]

_INTERPOLATIONS = ("linear", "nearest")
_FILL_MODES = ("constant", "nearest")
_FLOAT32_MAX = 3.4028234663852886e38


def _validate_options(interpolation: str, fill_mode: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {_INTERPOLATIONS}; received interpolation={interpolation!r}."
        )
    if fill_mode not in _FILL_MODES:
        raise ValueError(f"fill_mode must be one of {_FILL_MODES}; received fill_mode={fill_mode!r}.")


def _sample(
    image: tf.Tensor, coords: tf.Tensor, interpolation: str, fill_mode: str, fill_value: float
) -> tf.Tensor:
    """Sample ``image [B, *S_in, C]`` at voxel coordinates ``coords [B, *S_out, n]``.

    Where a coordinate is NaN or infinite the output is NaN: such a point has no place in the
    image, and the clamping below would otherwise turn it into the fill value or a border voxel,
    a plausible-looking number that would hide the bad displacement.
    """
    n = coords.shape[-1]
    finite = tf.reduce_all(tf.abs(coords) <= _FLOAT32_MAX, axis=-1, keepdims=True)
    in_shape = tf.shape(image)
    batch = in_shape[0]
    channels = in_shape[-1]
    sizes = [in_shape[1 + d] for d in range(n)]

    # Row-major strides of the flattened [B * prod(S_in), C] image.
    strides = [None] * n
    step = tf.constant(1, tf.int32)
    for d in reversed(range(n)):
        strides[d] = step
        step = step * sizes[d]
    voxels_per_image = step
    flat = tf.reshape(image, [-1, channels])
    batch_offset = tf.reshape(tf.range(batch) * voxels_per_image, [-1] + [1] * n)

    if interpolation == "nearest":
        index = batch_offset
        valid = None
        for d in range(n):
            size_f = tf.cast(sizes[d], coords.dtype)
            x = coords[..., d]
            if fill_mode == "nearest":
                x = tf.clip_by_value(x, 0.0, size_f - 1.0)
            i = tf.floor(x + 0.5)
            if fill_mode == "constant":
                inside = (i >= 0.0) & (i <= size_f - 1.0)
                valid = inside if valid is None else valid & inside
                i = tf.clip_by_value(i, 0.0, size_f - 1.0)
            index = index + tf.cast(i, tf.int32) * strides[d]
        values = tf.gather(flat, index)
        if valid is not None:
            values = tf.where(valid[..., None], values, tf.cast(fill_value, values.dtype))
        return _nan_unless(finite, values)

    # Linear: per axis, the lower corner index, and the weights of the lower and upper
    # corners. In constant mode a corner outside the grid keeps its weight out of the sum and the
    # missing weight goes to fill_value (scipy's "grid-constant"); in nearest mode the coordinate
    # is clamped to the grid first, which replicates the border (scipy's "nearest").
    lower, weights = [], []
    for d in range(n):
        size_f = tf.cast(sizes[d], coords.dtype)
        x = coords[..., d]
        if fill_mode == "nearest":
            x = tf.clip_by_value(x, 0.0, size_f - 1.0)
        x0 = tf.stop_gradient(tf.floor(x))
        t = x - x0
        w0, w1 = 1.0 - t, t
        x1 = x0 + 1.0
        if fill_mode == "constant":
            w0 = w0 * tf.cast((x0 >= 0.0) & (x0 <= size_f - 1.0), w0.dtype)
            w1 = w1 * tf.cast((x1 >= 0.0) & (x1 <= size_f - 1.0), w1.dtype)
        i0 = tf.cast(tf.clip_by_value(x0, 0.0, size_f - 1.0), tf.int32)
        i1 = tf.cast(tf.clip_by_value(x1, 0.0, size_f - 1.0), tf.int32)
        lower.append((i0 * strides[d], i1 * strides[d]))
        weights.append((w0, w1))

    result = None
    total_weight = None
    for corner in itertools.product((0, 1), repeat=n):
        index = batch_offset
        weight = None
        for d, bit in enumerate(corner):
            index = index + lower[d][bit]
            weight = weights[d][bit] if weight is None else weight * weights[d][bit]
        term = tf.gather(flat, index) * weight[..., None]
        result = term if result is None else result + term
        if fill_mode == "constant" and fill_value != 0.0:
            total_weight = weight if total_weight is None else total_weight + weight
    if total_weight is not None:
        result = result + fill_value * (1.0 - total_weight)[..., None]
    return _nan_unless(finite, result)


def _nan_unless(finite: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """``values [B, *S, C]`` with NaN wherever ``finite [B, *S, 1]`` is false."""
    return tf.where(finite, values, tf.constant(float("nan"), values.dtype))


def _warp(
    image: tf.Tensor, ddf: tf.Tensor, interpolation: str, fill_mode: str, fill_value: float
) -> tf.Tensor:
    coords = ddf + reference_grid(tf.shape(ddf)[1:-1])
    return _sample(image, coords, interpolation, fill_mode, fill_value)




def sample(
    image: Any,
    coords: Any,
    interpolation: str = "linear",
    fill_mode: str = "constant",
    fill_value: float = 0.0,
) -> tf.Tensor:
    """Sample ``image`` at arbitrary voxel coordinates.

    Args:
        image: ``[B, *S_in, C]``.
        coords: ``[B, *S_out, n]`` voxel coordinates into ``image`` (``ij`` order).
        interpolation, fill_mode, fill_value: as for :func:`warp`.

    Returns:
        float32 ``[B, *S_out, C]``.
    """
    _validate_options(interpolation, fill_mode)
    image = check_image(image, "image")
    coords = check_image(coords, "coords")
    n = image.shape.rank - 2
    if coords.shape.rank != n + 2 or coords.shape[-1] != n:
        raise ValueError(
            f"coords must have shape [batch, *spatial, {n}] for a {n}-D image; received coords "
            f"shape {tuple(coords.shape)} and image shape {tuple(image.shape)}."
        )
    fn = maybe_compiled(_sample, image.shape.rank)
    return fn(image, coords, interpolation, fill_mode, float(fill_value))


def warp(
    image: Any,
    ddf: Any,
    interpolation: str = "linear",
    fill_mode: str = "constant",
    fill_value: float = 0.0,
) -> tf.Tensor:
    """Warp a moving image onto the fixed grid by a dense displacement field.

    ``out[b, x] = image[b](x + ddf[b, x])`` for every voxel index ``x`` of the fixed grid (``ij``
    order); the displacement is in voxel units of the moving image, so moving and fixed grids
    may differ in shape (label-reg's convention). With ``interpolation="linear"`` the result
    equals ``scipy.ndimage.map_coordinates(order=1)`` with ``mode="grid-constant"`` (zero-padded
    and continuous at the border, ``fill_mode="constant"``) or ``mode="nearest"`` (border
    replicated, ``fill_mode="nearest"``). ``interpolation="nearest"`` rounds to the closest voxel,
    for label maps at inference. Differentiable in ``image`` and ``ddf`` (linear). Compiled with
    XLA unless inside :func:`labelreg.ops.xla_disabled`.

    Args:
        image: moving image ``[B, *S_mov, C]``, any channel count.
        ddf: displacement ``[B, *S_fix, n]``, ``n = len(S_fix) = len(S_mov)``.
        interpolation: ``"linear"`` or ``"nearest"``.
        fill_mode: ``"constant"`` (outside is ``fill_value``) or ``"nearest"`` (border value).
        fill_value: value outside the moving grid in constant mode.

    Returns:
        float32 ``[B, *S_fix, C]``.

    Raises:
        ValueError: on an unknown option, a DDF whose last axis differs from its spatial rank, or
            image and DDF of different spatial ranks or batch sizes.
    """
    _validate_options(interpolation, fill_mode)
    image = check_image(image, "image")
    ddf = check_ddf(ddf, "ddf")
    if image.shape.rank != ddf.shape.rank:
        raise ValueError(
            f"image and ddf must have the same number of spatial axes; received image shape "
            f"{tuple(image.shape)} ({image.shape.rank - 2}-D) and ddf shape {tuple(ddf.shape)} "
            f"({ddf.shape.rank - 2}-D)."
        )
    b_img, b_ddf = image.shape[0], ddf.shape[0]
    if b_img is not None and b_ddf is not None and b_img != b_ddf:
        raise ValueError(
            f"image and ddf must have the same batch size; received image shape "
            f"{tuple(image.shape)} and ddf shape {tuple(ddf.shape)}."
        )
    fn = maybe_compiled(_warp, image.shape.rank)
    return fn(image, ddf, interpolation, fill_mode, float(fill_value))
