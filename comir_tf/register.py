"""Rigid 2-D registration of two images (CoMIRs or raw images) written with TF ops.

Convention. Pixel coordinates are ``(x, y) = (column, row)`` with pixel centres at integers and
``(0, 0)`` the centre of the top-left pixel. The transform maps a point ``p_a`` of image A
(the reference) to the point of image B that shows the same content:

    p_b = R(angle) (p_a - c_a) + c_b + t,     R(angle) = [[cos, -sin], [sin, cos]]

with ``c = ((W - 1) / 2, (H - 1) / 2)`` each image's centre and ``t = (t_x, t_y)`` in pixels. As a
matrix, ``p_b = M @ (x_a, y_a, 1)`` with ``M = [R | c_b + t - R c_a]`` (2x3). Sampling B at
``M @ (x, y, 1)`` for every pixel ``(x, y)`` of A (:func:`warp_rigid`) gives B aligned onto A.
Since ``y`` points down, a positive angle turns B's sampling grid clockwise on screen, i.e. it
undoes a counter-clockwise (as displayed) rotation of the content of B.

Optimisation (:func:`register_rigid`): an image pyramid; at the coarsest level a batch of starts
(every ``angle_step`` degrees times a small grid of translations) is optimised at once by Adam on
the chosen cost; the best few are refined level by level down to full resolution, and the best
final one is returned. All starts of a level run as one batched TF computation.

Costs (lower is better), computed over the part of A whose sampled B point lies inside B:
``"mse"`` the mean squared difference (for CoMIRs, which share intensities by construction), and
``"mi"`` minus the mutual information of Parzen-window histograms (for raw images of different
modalities; images are reduced to one channel by averaging).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from labelreg import ops
from labelreg._tf import tf
from labelreg.errors import DataError

__all__ = [
    "RigidTransform",
    "rigid_matrix",
    "warp_rigid",
    "register_rigid",
    "register_sift",
    "corner_error",
    "COSTS",
]

COSTS = ("mse", "mi")


@dataclass(frozen=True)
class RigidTransform:
    """A rigid 2-D transform in the module's convention, and the cost it reached.

    Attributes:
        angle: rotation in degrees.
        translation: ``(t_x, t_y)`` in pixels of B.
        matrix: float64 ``[2, 3]`` mapping ``(x_a, y_a, 1)`` to ``(x_b, y_b)``.
        cost: the final cost at full resolution (``mse``: mean squared difference; ``mi``:
            minus the mutual information in nats).
    """

    angle: float
    translation: tuple[float, float]
    matrix: np.ndarray
    cost: float


def _centre(shape: tuple[int, int]) -> np.ndarray:
    return np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])


def rigid_matrix(angle: float, translation: tuple[float, float], shape_a: tuple[int, int],
                 shape_b: tuple[int, int] | None = None) -> np.ndarray:
    """The ``[2, 3]`` matrix of ``(angle in degrees, translation in pixels)`` for images of
    spatial shapes ``shape_a`` and ``shape_b`` (``(H, W)``; B defaults to A's shape)."""
    shape_b = shape_a if shape_b is None else shape_b
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    offset = _centre(shape_b) + np.asarray(translation, float) - rot @ _centre(shape_a)
    return np.concatenate([rot, offset[:, None]], axis=1)


def _as_image(x: Any, name: str) -> tf.Tensor:
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank == 2:
        x = x[..., None]
    if x.shape.rank != 3 or not x.shape.is_fully_defined():
        raise ValueError(
            f"{name} must be a 2-D image [H, W] or [H, W, C] of known shape; received shape "
            f"{tuple(x.shape)}."
        )
    if min(x.shape[:2]) < 8:
        raise ValueError(f"{name} must be at least 8x8 pixels; received shape {tuple(x.shape)}.")
    ops.check_finite(x, name)
    return x


def warp_rigid(image: Any, matrix: Any, output_shape: tuple[int, int],
               fill_mode: str = "constant") -> tf.Tensor:
    """Sample ``image`` ``[H, W, C]`` at ``matrix @ (x, y, 1)`` for every pixel of an output grid
    of shape ``output_shape`` (bilinear, ``fill_mode`` as for :func:`labelreg.ops.warp`).

    Returns:
        float32 ``[*output_shape, C]``.
    """
    image = _as_image(image, "image")
    m = tf.constant(np.asarray(matrix, np.float64), tf.float32)
    ys, xs = tf.meshgrid(tf.range(output_shape[0], dtype=tf.float32),
                         tf.range(output_shape[1], dtype=tf.float32), indexing="ij")
    xb = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    yb = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    coords = tf.stack([yb, xb], axis=-1)[None]
    return ops.sample(image[None], coords, fill_mode=fill_mode)[0]


def corner_error(matrix_estimated: Any, matrix_true: Any, shape_a: tuple[int, int]) -> float:
    """Mean distance (pixels) between where two transforms send the four corner pixels of A:
    the CoMIR paper's registration error."""
    h, w = shape_a
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
    diff = np.asarray(matrix_estimated) @ corners - np.asarray(matrix_true) @ corners
    return float(np.mean(np.linalg.norm(diff, axis=0)))


# ------------------------------------------------------------------------------------------
# Pyramid and costs
# ------------------------------------------------------------------------------------------


def _blur(x: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of ``[B, H, W, C]`` with symmetric padding (no dark border)."""
    kernel = ops.gaussian_kernel1d(sigma)
    radius = len(kernel) // 2
    if radius == 0:
        return x
    channels = x.shape[-1]
    k = tf.constant(kernel, tf.float32)
    radius = min(radius, min(x.shape[1], x.shape[2]) - 1)
    k = k[len(kernel) // 2 - radius: len(kernel) // 2 + radius + 1]
    k = k / tf.reduce_sum(k)
    x = tf.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, channels, 1])
    kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, ky, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, kx, [1, 1, 1, 1], "VALID")


def _level(image: tf.Tensor, level: int) -> tf.Tensor:
    """Blurred (sigma = 2**level full-resolution pixels) and resized copy ``[1, h, w, C]``."""
    factor = 2**level
    x = _blur(image[None], float(factor))
    if level == 0:
        return x
    shape = [max(int(round(s / factor)), 4) for s in image.shape[:2]]
    return ops.resize(x, shape)


def _grid_full(shape_level: tuple[int, int], shape_full: tuple[int, int]) -> tf.Tensor:
    """Full-resolution ``(x, y)`` of the pixel centres of a level's grid, ``[h, w, 2]``
    (half-pixel-centre resizing: ``x_full = (x_level + 0.5) * W / w - 0.5``)."""
    sy = shape_full[0] / shape_level[0]
    sx = shape_full[1] / shape_level[1]
    ys = (tf.range(shape_level[0], dtype=tf.float32) + 0.5) * sy - 0.5
    xs = (tf.range(shape_level[1], dtype=tf.float32) + 0.5) * sx - 0.5
    gy, gx = tf.meshgrid(ys, xs, indexing="ij")
    return tf.stack([gx, gy], axis=-1)


def _parzen(values: tf.Tensor, bins: int) -> tf.Tensor:
    """Gaussian Parzen weights ``[..., bins]`` of values in [0, 1] (sigma = one bin width)."""
    centres = (tf.range(bins, dtype=tf.float32) + 0.5) / bins
    d = (tf.clip_by_value(values, 0.0, 1.0)[..., None] - centres) * bins
    w = tf.exp(-0.5 * d * d)
    return w / tf.reduce_sum(w, axis=-1, keepdims=True)


def _transform_coords(params: tf.Tensor, grid: tf.Tensor, centre_a: tf.Tensor,
                      centre_b: tf.Tensor, scale_b: tf.Tensor) -> tf.Tensor:
    """(row, column) coordinates in B's level grid of A's level grid ``[h, w, 2]`` (full-
    resolution ``(x, y)``) under ``params [S, 3]`` = (angle in radians, t_x, t_y)."""
    cos = tf.cos(params[:, 0])[:, None, None]
    sin = tf.sin(params[:, 0])[:, None, None]
    d = grid - centre_a
    dx, dy = d[None, ..., 0], d[None, ..., 1]
    xb = cos * dx - sin * dy + centre_b[0] + params[:, 1, None, None]
    yb = sin * dx + cos * dy + centre_b[1] + params[:, 2, None, None]
    return tf.stack([(yb + 0.5) / scale_b[1] - 0.5, (xb + 0.5) / scale_b[0] - 0.5], axis=-1)


def _costs(params: tf.Tensor, a: tf.Tensor, b: tf.Tensor, geometry: tuple[tf.Tensor, ...],
           cost: str, weights_a: tf.Tensor, bins: int) -> tf.Tensor:
    """``[S]`` costs of the transforms ``params [S, 3]`` between A ``[1, h, w, C]`` and B
    ``[1, h_b, w_b, C + 1]`` (last channel all ones: it measures the overlap)."""
    coords = _transform_coords(params, *geometry)
    moving = tf.tile(b, tf.stack([tf.shape(params)[0], 1, 1, 1]))
    sampled = ops.sample(moving, coords)  # [S, h, w, C + 1]
    mask = sampled[..., -1]
    values = sampled[..., :-1]
    area = tf.maximum(tf.reduce_sum(mask, axis=[1, 2]), 1.0)
    if cost == "mse":
        # Border pixels count with the fraction of B they overlap: smooth in the parameters.
        residual = mask[..., None] * a - values
        return tf.reduce_sum(tf.reduce_mean(residual**2, axis=-1), axis=[1, 2]) / area
    b_values = tf.reduce_mean(values, axis=-1) / tf.maximum(mask, 1e-6)
    weights_b = _parzen(b_values, bins) * mask[..., None]  # [S, h, w, bins]
    joint = tf.einsum("hwi,shwj->sij", weights_a, weights_b) / area[:, None, None]
    p_a = tf.reduce_sum(joint, axis=2, keepdims=True)
    p_b = tf.reduce_sum(joint, axis=1, keepdims=True)
    ratio = joint / tf.maximum(p_a * p_b, 1e-12)
    return -tf.reduce_sum(joint * tf.math.log(tf.maximum(ratio, 1e-12)), axis=[1, 2])


@tf.function(reduce_retracing=True, autograph=False)
def _optimise(params: tf.Tensor, a: tf.Tensor, b: tf.Tensor, geometry: tuple[tf.Tensor, ...],
              weights_a: tf.Tensor, iterations: tf.Tensor, lr: tf.Tensor, limit: tf.Tensor,
              cost: str, bins: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Adam on every start at once with cosine-decayed steps ``lr`` (per parameter);
    translations clipped to +-``limit``. Returns the final parameters and their costs.

    Written as an explicit ``tf.while_loop`` without autograph, which would otherwise convert
    every function the cost calls and multiply the tracing time.
    """
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    total_steps = tf.cast(iterations, tf.float32)

    def body(i: tf.Tensor, params: tf.Tensor, m: tf.Tensor, v: tf.Tensor) -> tuple:
        with tf.GradientTape() as tape:
            tape.watch(params)
            total = tf.reduce_sum(_costs(params, a, b, geometry, cost, weights_a, bins))
        g = tape.gradient(total, params)
        t = tf.cast(i + 1, tf.float32)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1**t)
        v_hat = v / (1.0 - beta2**t)
        decay = 0.02 + 0.49 * (1.0 + tf.cos(math.pi * tf.cast(i, tf.float32) / total_steps))
        params = params - decay * lr * m_hat / (tf.sqrt(v_hat) + eps)
        params = tf.concat([params[:, :1], tf.clip_by_value(params[:, 1:], -limit, limit)], axis=1)
        return i + 1, params, m, v

    _, params, _, _ = tf.while_loop(
        lambda i, *_: i < iterations, body,
        (tf.constant(0), params, tf.zeros_like(params), tf.zeros_like(params)))
    return params, _costs(params, a, b, geometry, cost, weights_a, bins)


def _level_problem(a: tf.Tensor, b: tf.Tensor, level: int, shape_a: tuple[int, int],
                   shape_b: tuple[int, int], cost: str, bins: int
                   ) -> tuple[tf.Tensor, tf.Tensor, tuple[tf.Tensor, ...], tf.Tensor]:
    """A's and B's images at a pyramid level and the geometry tensors of :func:`_costs`."""
    a_l = _level(a, level)
    b_l = _level(b, level)
    b_l = tf.concat([b_l, tf.ones_like(b_l[..., :1])], axis=-1)
    geometry = (
        _grid_full(tuple(a_l.shape[1:3]), shape_a),
        tf.constant(_centre(shape_a), tf.float32),
        tf.constant(_centre(shape_b), tf.float32),
        tf.constant([shape_b[1] / b_l.shape[2], shape_b[0] / b_l.shape[1]], tf.float32),
    )
    weights_a = (_parzen(tf.reduce_mean(a_l[0], axis=-1), bins) if cost == "mi"
                 else tf.zeros([1, 1, 1]))
    return a_l, b_l, geometry, weights_a


def register_rigid(
    comir_a: Any,
    comir_b: Any,
    cost: str = "mse",
    angle_step: float = 30.0,
    levels: int | None = None,
    translation_starts: int = 3,
    translation_range: float = 0.2,
    iterations: int = 100,
    keep: int = 3,
    bins: int = 32,
    max_translation: float = 0.5,
) -> RigidTransform:
    """Rigid transform aligning ``comir_b`` onto ``comir_a`` (see the module docstring for the
    convention), by multi-start, coarse-to-fine gradient descent on ``cost``.

    Args:
        comir_a: reference image ``[H_a, W_a]`` or ``[H_a, W_a, C]``.
        comir_b: moving image ``[H_b, W_b(, C)]``, same channel count.
        cost: ``"mse"`` (CoMIRs) or ``"mi"`` (mutual information of raw images; values are
            expected in [0, 1]).
        angle_step: start angles every ``angle_step`` degrees over the full circle (<= 30 for
            the paper's setting).
        levels: pyramid levels, each halving the size; ``None`` picks the number that gives
            a coarsest side of 32 to 63 pixels. The coarsest side is kept >= 16 pixels.
        translation_starts: start translations per axis at the coarsest level (1 = none).
        translation_range: the start translations span +-``translation_range`` of the side.
        iterations: Adam iterations at the coarsest level (half as many at each finer level).
        keep: starts carried from one level to the next.
        bins: histogram bins of the ``mi`` cost.
        max_translation: translations are kept within +-``max_translation`` of B's side.

    Returns:
        A :class:`RigidTransform`.

    Raises:
        ValueError: ill-shaped inputs, channel mismatch, NaN/Inf values or bad options.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}; received cost={cost!r}.")
    if not 0.0 < angle_step <= 180.0:
        raise ValueError(f"angle_step must be in (0, 180] degrees; received {angle_step!r}.")
    bad_levels = levels is not None and levels < 1
    if bad_levels or translation_starts < 1 or iterations < 1 or keep < 1 or bins < 2:
        raise ValueError(
            "levels, translation_starts, iterations and keep must be >= 1 and bins >= 2; "
            f"received levels={levels}, translation_starts={translation_starts}, "
            f"iterations={iterations}, keep={keep}, bins={bins}."
        )
    a = _as_image(comir_a, "comir_a")
    b = _as_image(comir_b, "comir_b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            "comir_a and comir_b must have the same number of channels; received shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}."
        )
    shape_a, shape_b = tuple(a.shape[:2]), tuple(b.shape[:2])
    if levels is None:
        # A coarsest side of 32 to 63 pixels: smaller ones leave too few pixels for the mutual
        # information's histogram and for a reliable multi-start search.
        levels = 1 + max(0, math.floor(math.log2(min(shape_a) / 32.0)))
    while levels > 1 and min(min(shape_a), min(shape_b)) / 2 ** (levels - 1) < 16:
        levels -= 1
    side = float(max(shape_b))
    limit = tf.constant(max_translation * side, tf.float32)

    angles = np.deg2rad(np.arange(0.0, 360.0, angle_step))
    angles = np.where(angles > np.pi, angles - 2 * np.pi, angles)
    offsets = (np.linspace(-translation_range, translation_range, translation_starts) * side
               if translation_starts > 1 else np.zeros(1))
    starts = np.array([(t, x, y) for t in angles for y in offsets for x in offsets], np.float32)
    params = tf.constant(starts)

    for level in reversed(range(levels)):
        a_l, b_l, geometry, weights_a = _level_problem(a, b, level, shape_a, shape_b, cost, bins)
        factor = 2.0**level
        # Steps of about one level pixel: in translation, and in angle at the image border.
        angle_lr = 2.0 * factor / max(shape_a)
        lr = tf.constant([angle_lr, factor, factor], tf.float32)
        its = tf.constant(max(iterations // 2 ** (levels - 1 - level), 20))
        params, costs = _optimise(params, a_l, b_l, geometry, weights_a, its, lr, limit, cost,
                                  bins)
        params = tf.gather(params, tf.argsort(costs)[:keep])
    # The final cost on the unblurred full-resolution images.
    b_full = tf.concat([b, tf.ones_like(b[..., :1])], axis=-1)[None]
    weights_a = (_parzen(tf.reduce_mean(a, axis=-1), bins) if cost == "mi"
                 else tf.zeros([1, 1, 1]))
    geometry = (_grid_full(shape_a, shape_a), tf.constant(_centre(shape_a), tf.float32),
                tf.constant(_centre(shape_b), tf.float32), tf.constant([1.0, 1.0]))
    costs = _costs(params, a[None], b_full, geometry, cost, weights_a, bins)
    best = int(tf.argmin(costs))
    angle, tx, ty = (float(v) for v in params[best].numpy())
    angle = math.degrees(math.atan2(math.sin(angle), math.cos(angle)))
    matrix = rigid_matrix(angle, (tx, ty), shape_a, shape_b)
    return RigidTransform(angle, (tx, ty), matrix, float(costs[best]))


def register_sift(comir_a: Any, comir_b: Any, ratio: float = 0.9,
                  ransac_threshold: float = 10.0) -> RigidTransform:
    """Rigid alignment by SIFT features and RANSAC on the CoMIRs, through OpenCV (optional).

    The CoMIRs' first channels are scaled to 8 bits, SIFT key points matched with Lowe's ratio
    test, and a rotation + translation (+ uniform scale, then discarded) fitted by RANSAC.

    Raises:
        ImportError: OpenCV is not installed (``pip install 'labelreg[opencv]'``).
        DataError: too few matches for a model.
    """
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "register_sift needs OpenCV, which is not installed; install the extra with "
            "`pip install 'labelreg[opencv]'` (opencv-python-headless) or use register_rigid."
        ) from err
    a = _as_image(comir_a, "comir_a").numpy()
    b = _as_image(comir_b, "comir_b").numpy()

    def to_uint8(x: np.ndarray) -> np.ndarray:
        x = x[..., 0]
        lo, hi = float(x.min()), float(x.max())
        return np.uint8(np.round(255 * (x - lo) / (hi - lo))) if hi > lo else np.zeros(
            x.shape, np.uint8)

    sift = cv2.SIFT_create()
    keys_a, desc_a = sift.detectAndCompute(to_uint8(a), None)
    keys_b, desc_b = sift.detectAndCompute(to_uint8(b), None)
    if desc_a is None or desc_b is None or len(keys_a) < 3 or len(keys_b) < 3:
        raise DataError("register_sift: fewer than 3 SIFT key points in a CoMIR.")
    matches = [m for m, n in (pair for pair in cv2.BFMatcher().knnMatch(desc_a, desc_b, k=2)
                              if len(pair) == 2) if m.distance < ratio * n.distance]
    if len(matches) < 3:
        raise DataError(f"register_sift: only {len(matches)} SIFT matches pass the ratio test.")
    pts_a = np.float32([keys_a[m.queryIdx].pt for m in matches])
    pts_b = np.float32([keys_b[m.trainIdx].pt for m in matches])
    model, _ = cv2.estimateAffinePartial2D(pts_a, pts_b, method=cv2.RANSAC,
                                           ransacReprojThreshold=ransac_threshold)
    if model is None:
        raise DataError("register_sift: RANSAC found no transform consistent with the matches.")
    angle = math.degrees(math.atan2(model[1, 0], model[0, 0]))
    rot = rigid_matrix(angle, (0.0, 0.0), a.shape[:2], b.shape[:2])
    translation = model[:, 2] - rot[:, 2]
    matrix = rigid_matrix(angle, tuple(translation), a.shape[:2], b.shape[:2])
    warped = warp_rigid(b, matrix, a.shape[:2])
    cost = float(tf.reduce_mean((warped - a) ** 2))
    return RigidTransform(angle, (float(translation[0]), float(translation[1])), matrix, cost)
