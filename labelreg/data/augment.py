"""Random affine augmentation of training pairs, in TensorFlow ops.

label-reg augments each moving and each fixed image with its own random affine (the corners of
``[-1, 1]^n`` moved inward by ``U(0, scale)``, solved exactly; see
:func:`labelreg.ops.random_affine`), and applies an image's affine to its label too, so image and
label stay aligned. The matrices act on voxel indices with the origin at voxel 0, like label-reg.

The draws are *stateless*: the same ``seed`` tensor gives the same transforms, inside or outside
a ``tf.function``, so a training step seeded with ``step_seed(seed, step)`` is reproducible and
resumable without any generator state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from labelreg._tf import tf
from labelreg.ops import check_image, random_affine, resample_affine

__all__ = ["step_seed", "apply_affine", "augment_batch"]


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


def augment_batch(batch: Mapping[str, Any], scale: float, seed: Any,
                  sample_index: Any = None, num_samples: int | None = None,
                  translation: float = 0.0) -> dict[str, Any]:
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
    return out
