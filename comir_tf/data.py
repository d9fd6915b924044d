"""Aligned two-modality image pairs: reading, pairing and the augmented patch stream.

A folder holds pairs ``<id><suffix_a>.<ext>`` and ``<id><suffix_b>.<ext>`` (``ext`` one of
``tif``, ``tiff``, ``png``; the two files of a pair may differ in format and channels but not in
height and width). TIFF is read with tifffile, PNG with Pillow. Intensities become float32: an
integer image is divided by its type's maximum (like ``skimage.img_as_float``) unless a scale is
given, then ``log(1 + x)`` is applied if asked.

Training patches are drawn by :func:`make_patch_dataset`, a ``tf.data`` pipeline whose every
batch is a pure function of ``(seed, step)`` (stateless random ops), so a resumed run sees the
batches an uninterrupted run would have seen. Per sample: a pair chosen uniformly (with
replacement), a random centre, a random horizontal flip, a rotation by any angle, all applied as
one coordinate map sampled bilinearly with symmetric reflection at the image border; then an
optional Gaussian blur and additive noise drawn independently per modality; and the C4 turns of
the equivariance trick.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from comir_tf.equivariance import random_quarter_turns
from labelreg._tf import tf
from labelreg.errors import DataError

__all__ = [
    "ensure_data",
    "read_pairs",
    "EXTENSIONS",
    "PairFiles",
    "PairSet",
    "find_pairs",
    "read_image",
    "load_pairs",
    "make_patch_dataset",
    "centre_crops",
    "safe_name",
]

EXTENSIONS = (".tif", ".tiff", ".png")


@dataclass(frozen=True)
class PairFiles:
    """The two files of one aligned pair."""

    name: str
    path_a: Path
    path_b: Path


@dataclass
class PairSet:
    """Aligned pairs in memory: ``images_a[i]`` ``[H_i, W_i, C_a]``, ``images_b[i]``
    ``[H_i, W_i, C_b]``, float32."""

    names: list[str]
    images_a: list[np.ndarray]
    images_b: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.names)


def find_pairs(folder: str | os.PathLike, suffix_a: str, suffix_b: str) -> list[PairFiles]:
    """Pair the files of a folder by name.

    Args:
        folder: the folder.
        suffix_a, suffix_b: the modalities' file-name suffixes before the extension (e.g.
            ``"_SHG"`` and ``"_BF"``); matched case-sensitively.

    Returns:
        The pairs, sorted by name.

    Raises:
        DataError: the folder is missing, holds no complete pair, or holds a pair twice.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image-pair folder not found.")
    if suffix_a == suffix_b:
        raise DataError(f"{folder}: suffix_a and suffix_b must differ; both are {suffix_a!r}.")
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in EXTENSIONS or not path.is_file():
            continue
        stem = path.stem
        for key, suffix in (("a", suffix_a), ("b", suffix_b)):
            if suffix and stem.endswith(suffix):
                name = stem[: -len(suffix)]
                if key in found.setdefault(name, {}):
                    raise DataError(
                        f"{folder}: two files for pair {name!r} modality {key.upper()}: "
                        f"{found[name][key].name} and {path.name}."
                    )
                found[name][key] = path
    pairs = [PairFiles(name, files["a"], files["b"]) for name, files in sorted(found.items())
             if "a" in files and "b" in files]
    if not pairs:
        listing = ", ".join(p.name for p in sorted(folder.iterdir())[:5]) or "nothing"
        raise DataError(
            f"{folder}: no aligned pairs found; expected files named <id>{suffix_a}.<ext> and "
            f"<id>{suffix_b}.<ext> with ext in {', '.join(EXTENSIONS)}; found {listing}."
        )
    return pairs


def _channels_last(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array[..., None]
    if array.ndim == 3 and array.shape[0] <= 4 < min(array.shape[1:]):
        return np.moveaxis(array, 0, -1)  # a planar (channels-first) TIFF
    return array


def read_image(path: str | os.PathLike, scale: float = 0.0, log: bool = False,
               channels: int | None = None) -> np.ndarray:
    """Read a 2-D image as float32 ``[H, W, C]``.

    Args:
        path: a ``.tif``/``.tiff`` (tifffile) or ``.png`` (Pillow) file.
        scale: divide by this; ``0`` divides an integer image by its type's maximum and leaves a
            float image unchanged.
        log: apply ``log(1 + x)`` after scaling.
        channels: the expected channel count; a 4-channel PNG (RGBA) is cut to 3 when 3 are
            expected.

    Raises:
        DataError: unreadable file, not a 2-D image, or the wrong channel count.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            with Image.open(path) as handle:
                array = np.asarray(handle)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the image ({err}).") from err
    array = _channels_last(np.asarray(array))
    if array.ndim != 3:
        raise DataError(
            f"{path}: expected a 2-D image [H, W] or [H, W, C]; received shape {array.shape}."
        )
    if channels == 3 and array.shape[-1] == 4 and path.suffix.lower() == ".png":
        array = array[..., :3]
    if channels is not None and array.shape[-1] != channels:
        raise DataError(
            f"{path}: expected {channels} channel(s) ([CoMIR] channels_a / channels_b); received "
            f"an image of shape {array.shape}."
        )
    if scale > 0:
        image = array.astype(np.float32) / np.float32(scale)
    elif np.issubdtype(array.dtype, np.integer):
        image = array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    elif array.dtype == bool:
        image = array.astype(np.float32)
    else:
        image = array.astype(np.float32)
    if log:
        image = np.log1p(np.maximum(image, 0.0))
    if not np.all(np.isfinite(image)):
        raise DataError(f"{path}: the image holds NaN or infinite values.")
    return image


def load_pairs(folder: str | os.PathLike, suffix_a: str, suffix_b: str, channels_a: int,
               channels_b: int, scale_a: float = 0.0, scale_b: float = 0.0,
               log_a: bool = False, log_b: bool = False) -> PairSet:
    """Read every aligned pair of a folder (see :func:`find_pairs`, :func:`read_image`).

    Raises:
        DataError: as above, or when the two images of a pair differ in height or width.
    """
    names, images_a, images_b = [], [], []
    for pair in find_pairs(folder, suffix_a, suffix_b):
        a = read_image(pair.path_a, scale_a, log_a, channels_a)
        b = read_image(pair.path_b, scale_b, log_b, channels_b)
        if a.shape[:2] != b.shape[:2]:
            raise DataError(
                f"{pair.path_a} {a.shape[:2]} and {pair.path_b} {b.shape[:2]}: the two images of "
                "an aligned pair must have the same height and width."
            )
        names.append(pair.name)
        images_a.append(a)
        images_b.append(b)
    return PairSet(names, images_a, images_b)


def centre_crops(pairs: PairSet, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre crops ``[N, size, size, C]`` of both modalities (symmetric padding if smaller)."""
    out_a, out_b = [], []
    for a, b in zip(pairs.images_a, pairs.images_b, strict=True):
        crops = []
        for image in (a, b):
            h, w = image.shape[:2]
            pad_h, pad_w = max(size - h, 0), max(size - w, 0)
            if pad_h or pad_w:
                image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2),
                                       (pad_w // 2, pad_w - pad_w // 2), (0, 0)), mode="symmetric")
                h, w = image.shape[:2]
            top, left = (h - size) // 2, (w - size) // 2
            crops.append(image[top:top + size, left:left + size])
        out_a.append(crops[0])
        out_b.append(crops[1])
    return np.stack(out_a), np.stack(out_b)


# ------------------------------------------------------------------------------------------
# The augmented patch stream
# ------------------------------------------------------------------------------------------


def _stack(images: list[np.ndarray], height: int, width: int) -> np.ndarray:
    # One zero-padded [N, Hmax, Wmax, C] array (4 bytes per pixel and channel in memory).
    out = np.zeros((len(images), height, width, images[0].shape[-1]), np.float32)
    for i, image in enumerate(images):
        out[i, : image.shape[0], : image.shape[1]] = image
    return out


def _reflect(coord: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Fold continuous pixel coordinates into [0, size - 1] by symmetric (edge-repeating)
    reflection about -0.5 and size - 0.5."""
    period = 2.0 * size
    folded = tf.math.floormod(coord + 0.5, period)
    folded = tf.where(folded >= size, period - folded, folded) - 0.5
    return tf.clip_by_value(folded, 0.0, size - 1.0)


def _bilinear(flat: tf.Tensor, index: tf.Tensor, y: tf.Tensor, x: tf.Tensor, width: int,
              plane: int) -> tf.Tensor:
    """Sample a flattened stack ``[N*H*W, C]`` at in-range coordinates of images ``index``."""
    y0, x0 = tf.floor(y), tf.floor(x)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    base = index[:, None, None] * plane
    y0i, x0i = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
    # The +1 neighbours are clamped by the caller's range; weight 0 makes their value irrelevant.
    y1i = tf.minimum(y0i + 1, tf.cast(tf.math.ceil(y), tf.int32))
    x1i = tf.minimum(x0i + 1, tf.cast(tf.math.ceil(x), tf.int32))

    def at(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        return tf.gather(flat, base + yi * width + xi)

    top = at(y0i, x0i) * (1.0 - wx) + at(y0i, x1i) * wx
    bottom = at(y1i, x0i) * (1.0 - wx) + at(y1i, x1i) * wx
    return top * (1.0 - wy) + bottom * wy


def _blur(x: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Per-sample separable Gaussian blur of ``[B, H, W, C]`` (sigma ``[B]``, 0 = identity),
    reflection-padded."""
    if radius == 0:
        return x
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    safe = tf.maximum(sigma, 1e-3)[:, None]
    weights = tf.exp(-0.5 * (offsets[None] / safe) ** 2)
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # [B, 2r+1]
    size = tf.shape(x)[1]
    padded = tf.pad(x, [[0, 0], [radius, radius], [0, 0], [0, 0]], mode="SYMMETRIC")
    x = tf.add_n([weights[:, i, None, None, None] * padded[:, i:i + size]
                  for i in range(2 * radius + 1)])
    size = tf.shape(x)[2]
    padded = tf.pad(x, [[0, 0], [0, 0], [radius, radius], [0, 0]], mode="SYMMETRIC")
    return tf.add_n([weights[:, i, None, None, None] * padded[:, :, i:i + size]
                     for i in range(2 * radius + 1)])


def _seed(seed: int, step: tf.Tensor, stream: int) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), step * 16 + stream])


def make_patch_dataset(
    pairs: PairSet,
    patch_size: int,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    stop_step: int | None = None,
    flip: bool = True,
    rotate: bool = True,
    blur_sigma: float = 0.0,
    blur_probability: float = 0.5,
    noise_std: float = 0.0,
) -> tf.data.Dataset:
    """Augmented training batches, one per step, deterministic in ``(seed, step)``.

    Args:
        pairs: the aligned training pairs.
        patch_size: side of the square patches.
        batch_size: patch pairs per batch.
        seed: the run's seed.
        start_step, stop_step: the steps to produce (``stop_step=None`` is endless).
        flip: random horizontal flips.
        rotate: rotations by a uniform angle in [-180, 180) degrees.
        blur_sigma: largest blur sigma (pixels); each modality of each sample is blurred with
            probability ``blur_probability`` by a sigma uniform in [0, blur_sigma].
        noise_std: each modality of each sample gets Gaussian noise with a std uniform in
            [0, noise_std].

    Returns:
        A dataset of dicts ``{"a": [B, P, P, C_a], "b": [B, P, P, C_b], "k_a": [B],
        "k_b": [B], "step": []}`` where ``k_a``/``k_b`` are the C4 turns of the step.
    """
    if len(pairs) == 0:
        raise DataError("make_patch_dataset: no training pairs.")
    height = max(a.shape[0] for a in pairs.images_a)
    width = max(a.shape[1] for a in pairs.images_a)
    plane = height * width
    stacks = []
    for images in (pairs.images_a, pairs.images_b):
        stack = _stack(images, height, width)
        stacks.append(tf.constant(stack.reshape(-1, stack.shape[-1])))
    flat_a, flat_b = stacks
    sizes = tf.constant([[a.shape[0], a.shape[1]] for a in pairs.images_a], tf.float32)
    count = len(pairs)
    half = (patch_size - 1) / 2.0
    grid = tf.range(patch_size, dtype=tf.float32) - half
    gy, gx = tf.meshgrid(grid, grid, indexing="ij")  # [P, P]
    radius = int(math.ceil(3.0 * blur_sigma))

    def batch_at(step: tf.Tensor) -> dict[str, tf.Tensor]:
        index = tf.random.stateless_uniform([batch_size], _seed(seed, step, 0), 0, count,
                                            dtype=tf.int32)
        size = tf.gather(sizes, index)  # [B, 2] (height, width)
        u = tf.random.stateless_uniform([batch_size, 2], _seed(seed, step, 1))
        # Centres keep an axis-aligned patch inside the image when it fits; rotated corners
        # that leave the image are reflected back in.
        lo = tf.minimum(half, (size - 1.0) / 2.0)
        centre = lo + u * tf.maximum(size - 1.0 - 2.0 * lo, 0.0)
        # Whole-pixel corners, so that an unrotated, unflipped patch is an exact crop.
        centre = tf.round(centre - half) + half
        angle = (tf.random.stateless_uniform([batch_size], _seed(seed, step, 2), -math.pi,
                                             math.pi) if rotate else tf.zeros([batch_size]))
        mirror = (tf.where(tf.random.stateless_uniform([batch_size], _seed(seed, step, 3)) < 0.5,
                           -1.0, 1.0) if flip else tf.ones([batch_size]))
        cos, sin = tf.cos(angle)[:, None, None], tf.sin(angle)[:, None, None]
        px = gx[None] * mirror[:, None, None]
        py = tf.broadcast_to(gy[None], tf.shape(px))
        y = centre[:, 0, None, None] + cos * py + sin * px
        x = centre[:, 1, None, None] - sin * py + cos * px
        y = _reflect(y, size[:, 0, None, None])
        x = _reflect(x, size[:, 1, None, None])
        out = {"a": _bilinear(flat_a, index, y, x, width, plane),
               "b": _bilinear(flat_b, index, y, x, width, plane)}
        for stream, key in ((4, "a"), (7, "b")):  # streams 4-6 and 7-9
            patch = out[key]
            if radius > 0 and blur_probability > 0:
                draw = tf.random.stateless_uniform([batch_size, 2], _seed(seed, step, stream))
                sigma = tf.where(draw[:, 0] < blur_probability, draw[:, 1] * blur_sigma, 0.0)
                patch = _blur(patch, sigma, radius)
            if noise_std > 0:
                std = tf.random.stateless_uniform([batch_size], _seed(seed, step, stream + 1),
                                                  0.0, noise_std)
                patch = patch + std[:, None, None, None] * tf.random.stateless_normal(
                    tf.shape(patch), _seed(seed, step, stream + 2))
            out[key] = patch
        out["k_a"] = random_quarter_turns(batch_size, _seed(seed, step, 10))
        out["k_b"] = random_quarter_turns(batch_size, _seed(seed, step, 11))
        out["step"] = step
        return out

    steps = tf.data.Dataset.range(start_step, stop_step) if stop_step is not None else (
        tf.data.Dataset.range(start_step, 2**62))
    # The sampler has no tensor-dependent Python control flow: skip autograph's conversion.
    sampler = tf.autograph.experimental.do_not_convert(batch_at)
    return steps.map(sampler, num_parallel_calls=2, deterministic=True).prefetch(2)


_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(name: str) -> str:
    """A file-name-safe version of a pair name."""
    return _NAME.sub("_", name) or "pair"


def ensure_data(cfg: Any) -> None:
    """Write the synthetic demo pairs when ``[Data] synthetic = true`` (no-op if present)."""
    from comir_tf import synthetic

    data = cfg["Data"]
    if not data["synthetic"]:
        return
    common = dict(size=data["synthetic_size"], suffix_a=data["suffix_a"],
                  suffix_b=data["suffix_b"])
    synthetic.write_synthetic_pairs(data["train_dir"], data["synthetic_train_pairs"],
                                    seed=data["synthetic_seed"], **common)
    synthetic.write_synthetic_pairs(data["test_dir"], data["synthetic_test_pairs"],
                                    seed=data["synthetic_seed"] + 1, **common)


def read_pairs(cfg: Any, folder_key: str) -> PairSet:
    """Load the pairs of ``[Data] <folder_key>`` of a CoMIR config with its suffixes, scales
    and logs."""
    data, comir = cfg["Data"], cfg["CoMIR"]
    folder = data[folder_key]
    if folder is None:
        raise DataError(f"{cfg.path}: [Data] {folder_key} is not set.")
    return load_pairs(folder, data["suffix_a"], data["suffix_b"], comir["channels_a"],
                      comir["channels_b"], data["scale_a"], data["scale_b"], data["log_a"],
                      data["log_b"])
