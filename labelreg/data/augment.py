"""Random affine augmentation of training pairs, in TensorFlow ops.

label-reg augments each moving and each fixed image with its own random affine (the corners of
``[-1, 1]^n`` moved inward by ``U(0, scale)``, solved exactly; see
:func:`labelreg.ops.random_affine`), and applies an image's affine to its label too, so image and
label stay aligned. The matrices act on voxel indices with the origin at voxel 0, like label-reg.

The draws are *stateless*: the same ``seed`` tensor gives the same transforms, inside or outside
a ``tf.function``, so a training step seeded with ``step_seed(seed, step)`` is reproducible and
resumable without any generator state.

A training pair may also be mirrored along chosen axes (:func:`flip_affines`): both images
and their labels at once, so the pair stays a plausible one, which doubles the cases a network
sees when the anatomy is roughly symmetric about that axis (the left-right axis of the prostate).

Each image may also get a random intensity transform after its affine (a gamma curve over its
own range and additive Gaussian noise; :func:`random_intensity`), which its labels never see:
scanners, sessions and probe settings change the brightness and texture of the same anatomy,
and a network fitted to a few dozen cases otherwise learns their particular contrast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labelreg._tf import tf
from labelreg.ops import check_image, random_affine, resample_affine

__all__ = ["step_seed", "apply_affine", "flip_affines", "random_intensity", "augment_batch"]


def step_seed(seed: Any, step: Any) -> tf.Tensor:
    """The stateless seed ``[seed, step]`` (int64 ``[2]``) of one training step."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])


def apply_affine(image: Any, label: Any | None, theta: Any) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Resample an image and its label through the same affine (linear, zero outside).

    The two are stacked on the channel axis and sampled together, so they see exactly the same
    sampling positions.

    Args:
        image: ``[B, *S, C]``.
        label: ``[B, *S, C']`` or ``None``.
        theta: ``[B, n, n+1]`` mapping output voxel indices to input voxel indices.

    Returns:
        ``(image, label)`` resampled on the same grid ``S`` (label ``None`` if not given).
    """
    image = check_image(image, "image")
    if label is None:
        return resample_affine(image, theta), None
    label = check_image(label, "label")
    if image.shape[1:-1] != label.shape[1:-1]:
        raise ValueError(
            f"image and label must share their spatial shape; received image shape "
            f"{tuple(image.shape)} and label shape {tuple(label.shape)}."
        )
    channels = image.shape[-1]
    both = resample_affine(tf.concat([image, label], axis=-1), theta)
    return both[..., :channels], both[..., channels:]


def _draw(count: Any, ndim: int, scale: float, translation: float, seed: Any) -> tf.Tensor:
    """``count`` random affines: label-reg's corner draw, plus a uniform shift in
    ``[-translation, translation]`` voxels per axis (from a stream of its own, so the affine
    part is the same whatever ``translation`` is)."""
    theta = random_affine(count, ndim, scale, seed=seed)
    if translation <= 0.0:
        return theta
    shift_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 1)
    shift = tf.random.stateless_uniform(tf.stack([tf.cast(count, tf.int32), ndim]), shift_seed,
                                        -translation, translation)
    return tf.concat([theta[..., :ndim], theta[..., ndim:] + shift[..., None]], axis=-1)


def flip_affines(theta: Any, flips: Any, shape: Any) -> tf.Tensor:
    """Compose affines with mirrors: mirror the output grid first, then apply ``theta``.

    A mirror along axis ``a`` of a grid of ``S_a`` voxels maps index ``x_a`` to
    ``S_a - 1 - x_a``; the composed affine is ``x -> A (D x + e) + b``, with ``D`` the diagonal
    of signs and ``e`` the offsets, so the image is resampled once.

    Args:
        theta: ``[B, n, n+1]`` output-to-input voxel affines.
        flips: ``[B, n]`` booleans, axis ``a`` of sample ``b`` mirrored where true.
        shape: the ``n`` spatial sizes of the grid.

    Returns:
        float32 ``[B, n, n+1]``.
    """
    theta = tf.cast(theta, tf.float32)
    ndim = theta.shape[1]
    flips = tf.cast(flips, tf.float32)
    sizes = tf.cast(tf.reshape(shape, [1, ndim]), tf.float32)
    signs = 1.0 - 2.0 * flips  # [B, n]
    offsets = flips * (sizes - 1.0)  # [B, n]
    matrix = theta[..., :ndim]
    shift = theta[..., ndim] + tf.linalg.matvec(matrix, offsets)
    return tf.concat([matrix * signs[:, None, :], shift[..., None]], axis=-1)


def _flip_draws(count: Any, axes: tuple[int, ...], ndim: int, seed: Any) -> tf.Tensor:
    """``[count, ndim]`` booleans: each axis of ``axes`` true with probability 1/2, others
    false."""
    coins = tf.random.stateless_uniform(tf.stack([tf.cast(count, tf.int32), ndim]), seed) < 0.5
    chosen = tf.constant([axis in axes for axis in range(ndim)])
    return tf.logical_and(coins, chosen[None])


def random_intensity(image: Any, log_gamma: Any, noise: Any, normal: Any) -> tf.Tensor:
    """A gamma curve over each image's own range, plus Gaussian noise.

    Per sample ``b``, with ``lo`` and ``hi`` the minimum and maximum of ``image[b]``,

        out = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** exp(log_gamma[b])
                 + noise[b] * (hi - lo) * normal

    so the range is kept (before the noise) whatever the intensity units; a gamma above 1
    darkens the mid-tones and one below 1 brightens them. A constant image stays constant.

    Args:
        image: ``[B, *S, C]``.
        log_gamma: ``[B]``, the natural log of each sample's gamma (0: unchanged).
        noise: ``[B]``, each sample's noise standard deviation as a fraction of its range.
        normal: ``[B, *S, C]`` standard normal draws.

    Returns:
        float32 ``[B, *S, C]``.
    """
    image = tf.cast(check_image(image, "image"), tf.float32)
    axes = list(range(1, image.shape.rank))
    lo = tf.reduce_min(image, axes, keepdims=True)
    span = tf.reduce_max(image, axes, keepdims=True) - lo
    shape = tf.stack([tf.shape(image)[0]] + [1] * (image.shape.rank - 1))
    gamma = tf.reshape(tf.exp(tf.cast(log_gamma, tf.float32)), shape)
    # The clip keeps interpolation round-off (a hair below lo) out of the fractional power.
    unit = tf.clip_by_value(tf.math.divide_no_nan(image - lo, span), 0.0, 1.0)
    sigma = tf.reshape(tf.cast(noise, tf.float32), shape) * span
    return lo + span * tf.pow(unit, gamma) + sigma * tf.cast(normal, tf.float32)


def _intensity_draws(count: Any, image_shape: tf.Tensor, gamma: float, noise: float,
                     seed: Any) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``count`` log-gammas uniform in ``[-gamma, gamma]``, noise levels uniform in
    ``[0, noise]`` and standard normal fields of ``image_shape`` (spatial and channels)."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    count = tf.reshape(tf.cast(count, tf.int32), [1])
    return (tf.random.stateless_uniform(count, seeds[0], -gamma, gamma),
            tf.random.stateless_uniform(count, seeds[1], 0.0, noise),
            tf.random.stateless_normal(tf.concat([count, image_shape], 0), seeds[2]))


def augment_batch(batch: Mapping[str, Any], scale: float, seed: Any,
                  sample_index: Any = None, num_samples: int | None = None,
                  translation: float = 0.0, intensity_gamma: float = 0.0,
                  intensity_noise: float = 0.0,
                  flip_axes: tuple[int, ...] | list[int] = ()) -> dict[str, Any]:
    """Augment a training batch with independent random affines for moving and fixed.

    Args:
        batch: a dict with ``moving_image [B, *S_mov, 1]`` and ``fixed_image [B, *S_fix, 1]``
            and optionally ``moving_label`` / ``fixed_label`` of the same shapes (as yielded by
            :func:`labelreg.data.make_train_dataset`) and ``moving_seg_label`` /
            ``fixed_seg_label``, each resampled with its image; other entries are passed
            through.
        scale: ``[Data] affine_scale``; 0 gives the identity.
        seed: stateless seed, int ``[2]`` (e.g. ``step_seed(seed, step)``).
        sample_index: int ``[B]``, the positions of the batch's samples in a larger global
            batch of ``num_samples`` (a replica's slice under ``tf.distribute``): the transforms
            of the global batch are drawn and those of these positions used, so a sample's
            augmentation does not depend on how the global batch was split. ``None``: the
            batch is the global batch.
        num_samples: size of the global batch (with ``sample_index``).
        translation: ``[Data] translation``: each image's transform also shifts it by up to this
            many voxels per axis (uniform, independent for moving and fixed), so the network
            sees pairs whose relative position varies more than in the training cases; 0 gives
            label-reg's augmentation exactly.
        intensity_gamma: ``[Data] intensity_gamma``: after its affine, each image gets the
            gamma curve of :func:`random_intensity` with ``log(gamma)`` uniform in
            ``[-intensity_gamma, intensity_gamma]``, independently for moving and fixed; 0
            gives none.
        intensity_noise: ``[Data] intensity_noise``: and Gaussian noise whose standard
            deviation, as a fraction of the image's range, is uniform in
            ``[0, intensity_noise]``; 0 gives none. Labels are never changed by either.
        flip_axes: ``[Data] flip_axes``: spatial axes (0-based) along which each pair is
            mirrored with probability 1/2 per axis, moving and fixed and their labels together
            (each about its own grid's centre), before its affine; empty gives none.

    Returns:
        A new dict with the volumes resampled, plus ``moving_affine`` and ``fixed_affine``
        (``[B, n, n+1]``) holding the transforms used.
    """
    moving = check_image(batch["moving_image"], "moving_image")
    fixed = check_image(batch["fixed_image"], "fixed_image")
    ndim = moving.shape.rank - 2
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
    if sample_index is None:
        batch_size = tf.shape(moving)[0]
        theta_moving = _draw(batch_size, ndim, scale, translation, seeds[0])
        theta_fixed = _draw(batch_size, ndim, scale, translation, seeds[1])
    else:
        if num_samples is None:
            raise ValueError("augment_batch: sample_index needs num_samples (the global batch).")
        theta_moving = tf.gather(_draw(num_samples, ndim, scale, translation, seeds[0]),
                                 sample_index)
        theta_fixed = tf.gather(_draw(num_samples, ndim, scale, translation, seeds[1]),
                                sample_index)
    flip_axes = tuple(int(axis) for axis in flip_axes)
    if flip_axes:
        if any(not 0 <= axis < ndim for axis in flip_axes):
            raise ValueError(f"flip_axes must be spatial axes in [0, {ndim}); received "
                             f"flip_axes={list(flip_axes)}.")
        # One draw per pair for both images (a stream of its own, so the affines do not
        # depend on it), drawn for the global batch and sliced like the affines.
        flip_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 3)
        flips = _flip_draws(tf.shape(moving)[0] if sample_index is None else num_samples,
                            flip_axes, ndim, flip_seed)
        if sample_index is not None:
            flips = tf.gather(flips, sample_index)
        theta_moving = flip_affines(theta_moving, flips, tf.shape(moving)[1:-1])
        theta_fixed = flip_affines(theta_fixed, flips, tf.shape(fixed)[1:-1])
    out = dict(batch)
    for role, image, theta in (("moving", moving, theta_moving), ("fixed", fixed, theta_fixed)):
        # An image's labels (the sampled one, and label 0 for a segmentation loss) are
        # resampled in one call with the image, so all see the same sampling positions.
        keys = [key for key in (f"{role}_label", f"{role}_seg_label") if key in batch]
        labels = [check_image(batch[key], key) for key in keys]
        stacked = tf.concat(labels, axis=-1) if labels else None
        out[f"{role}_image"], warped = apply_affine(image, stacked, theta)
        start = 0
        for key, label in zip(keys, labels, strict=True):
            out[key] = warped[..., start:start + label.shape[-1]]
            start += label.shape[-1]
    out["moving_affine"] = theta_moving
    out["fixed_affine"] = theta_fixed
    if intensity_gamma > 0.0 or intensity_noise > 0.0:
        for role, role_seed in (("moving", seeds[0]), ("fixed", seeds[1])):
            image = out[f"{role}_image"]
            # A stream of its own, so the affines are the same with or without this; drawn for
            # the global batch and sliced like the affines.
            draws = _intensity_draws(
                tf.shape(image)[0] if sample_index is None else num_samples,
                tf.shape(image)[1:], float(intensity_gamma), float(intensity_noise),
                tf.random.experimental.stateless_fold_in(role_seed, 2))
            if sample_index is not None:
                draws = tuple(tf.gather(d, sample_index) for d in draws)
            out[f"{role}_image"] = random_intensity(image, *draws)
    return out
