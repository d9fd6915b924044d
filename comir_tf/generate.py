"""CoMIRs of whole images of any size, and the files ``inference.py`` writes.

A Tiramisu needs sides that are multiples of ``2**len(down_blocks)``. :func:`generate` reflects
the image out to the next multiple (plus an optional context margin), runs the network in
inference mode and crops the result back to the input's size. Large images can be processed in
tiles: each tile is run with a reflected/real context margin around it and only its centre is
kept, so tiles join without seams from the network's border effects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tifffile
from PIL import Image

from labelreg._tf import tf

__all__ = ["generate", "preview", "write_comir", "pad_to_multiple", "comir_margin",
           "encoder_signature"]


def _pad(image: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    # np.pad's "symmetric" handles pads larger than the image by repeated reflection.
    return np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="symmetric")


def _run(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    return np.asarray(model(tf.constant(batch, tf.float32), training=False))


def generate(model: keras.Model, image: Any, tile: int | None = None,
             margin: int | None = None, batch_size: int = 4) -> tf.Tensor:
    """The CoMIR of an image of any size.

    Args:
        model: a :class:`comir_tf.Tiramisu` (anything with ``multiple`` = the side multiple it
            needs, and ``[B, H, W, C]`` -> ``[B, H, W, L]``).
        image: ``[H, W, C]`` or ``[B, H, W, C]`` (intensities prepared as for training).
        tile: ``None``/``0`` runs the whole image at once; otherwise the side of the kept centre
            of each tile, a multiple of ``model.multiple``.
        margin: reflected context around the whole image (or real or reflected context around
            each tile), in pixels, rounded up to a multiple of ``model.multiple // 2``; default
            ``max(model.multiple, 32)``, so that the network's own zero padding stays away from
            the image.
        batch_size: tiles per forward pass.

    Returns:
        float32 ``[H, W, L]`` (or ``[B, H, W, L]`` for a batched input).

    Raises:
        ValueError: ill-shaped image, or a tile that is not a positive multiple of the model's.
    """
    multiple = int(getattr(model, "multiple", 1))
    array = np.asarray(image, np.float32)
    single = array.ndim == 3
    if single:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(
            f"image must be [H, W, C] or [B, H, W, C]; received shape {np.shape(image)}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError("image holds NaN or infinite values.")
    if tile is not None and tile != 0 and (tile < 0 or tile % multiple):
        raise ValueError(
            f"tile must be 0/None or a positive multiple of {multiple} "
            f"(2**len(down_blocks)); received tile={tile}."
        )
    half = max(multiple // 2, 1)
    if margin is None:
        margin = max(multiple, 32)
    margin = int(-(-int(margin) // half) * half)
    _, height, width, _ = array.shape

    if not tile:
        pad_h = -height % multiple + 2 * margin
        pad_w = -width % multiple + 2 * margin
        top, left = pad_h // 2, pad_w // 2
        outs = []
        for sample in array:
            padded = _pad(sample, top, pad_h - top, left, pad_w - left)
            outs.append(_run(model, padded[None])[0, top:top + height, left:left + width])
        result = np.stack(outs)
    else:
        rows, cols = -(-height // tile), -(-width // tile)
        window = tile + 2 * margin
        outs = []
        for sample in array:
            padded = _pad(sample, margin, rows * tile - height + margin, margin,
                          cols * tile - width + margin)
            corners = [(r * tile, c * tile) for r in range(rows) for c in range(cols)]
            canvas = None
            for start in range(0, len(corners), batch_size):
                chunk = corners[start:start + batch_size]
                windows = np.stack([padded[y:y + window, x:x + window] for y, x in chunk])
                out = _run(model, windows)[:, margin:margin + tile, margin:margin + tile]
                if canvas is None:
                    canvas = np.zeros((rows * tile, cols * tile, out.shape[-1]), np.float32)
                for (y, x), piece in zip(chunk, out, strict=True):
                    canvas[y:y + tile, x:x + tile] = piece
            outs.append(canvas[:height, :width])
        result = np.stack(outs)
    return tf.constant(result[0] if single else result)


def preview(comir: np.ndarray) -> np.ndarray:
    """An 8-bit picture of a CoMIR ``[H, W, L]``: min-max scaled; gray for 1-2 channels (the
    first), RGB for 3 or more (the first three)."""
    comir = np.asarray(comir, np.float32)
    shown = comir[..., :3] if comir.shape[-1] >= 3 else comir[..., 0]
    lo, hi = float(shown.min()), float(shown.max())
    scaled = (shown - lo) / (hi - lo) if hi > lo else np.zeros_like(shown)
    return np.round(scaled * 255).astype(np.uint8)


def write_comir(comir: Any, path: str | os.PathLike, png: bool = True) -> list[Path]:
    """Write a CoMIR ``[H, W, L]`` as float32 TIFF (``path``, channels last) and optionally an
    8-bit PNG preview next to it (same name, ``.png``).

    Returns:
        The files written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(comir, np.float32)
    if array.shape[-1] == 1:
        tifffile.imwrite(path, array[..., 0], photometric="minisblack")
    else:
        tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig")
    written = [path]
    if png:
        png_path = path.with_suffix(".png")
        Image.fromarray(preview(array)).save(png_path)
        written.append(png_path)
    return written


# In-graph generation for the serving signatures: the same padding as generate(), in TF ops.


def _symmetric_indices(size: tf.Tensor, before: tf.Tensor, total: tf.Tensor) -> tf.Tensor:
    """Source indices of a signal of length ``size`` extended by ``before`` samples in front, to
    ``total`` samples, by mirror reflection with the edge repeated (``... 1 0 | 0 1 .. s-1 |
    s-1 s-2 ...``, NumPy's ``"symmetric"`` pad), repeating the reflection for any length."""
    i = tf.range(total) - before
    period = 2 * size
    j = tf.math.floormod(i, period)
    return tf.where(j >= size, period - 1 - j, j)


def pad_to_multiple(
    image: tf.Tensor, multiple: int, margin: int = 0
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pad the sides of ``[B, H, W, C]`` by symmetric reflection to multiples of ``multiple``,
    plus ``margin`` pixels of context on every side; the padding is split evenly before and
    after, as :func:`comir_tf.generate` does.

    Returns:
        ``(padded, top, left)``: the padded image and the offsets of the original in it.
    """
    out = image
    offsets = []
    for axis in (1, 2):
        size = tf.shape(out)[axis]
        pad = tf.math.floormod(-size, multiple) + 2 * margin
        before = pad // 2
        out = tf.gather(out, _symmetric_indices(size, before, size + pad), axis=axis)
        offsets.append(before)
    return out, offsets[0], offsets[1]


def comir_margin(multiple: int, margin: int | None = None) -> int:
    """The context margin :func:`comir_tf.generate` uses without tiles: by default
    ``max(multiple, 32)`` pixels, rounded up to a multiple of ``multiple // 2``."""
    half = max(multiple // 2, 1)
    margin = max(multiple, 32) if margin is None else int(margin)
    return -(-margin // half) * half


def encoder_signature(
    model: keras.Model, margin: int | None = None
) -> tuple[Callable[[tf.Tensor], dict], list[tf.TensorSpec], list[str]]:
    """The serving signature of a CoMIR encoder, equal to :func:`generate` without tiles.

    ``image [B, H, W, C]`` float32, any ``H`` and ``W``, intensities prepared as in training
    (scaled, log if configured) -> ``comir [B, H, W, K]``. Inside, the image is padded by
    symmetric reflection up to the next multiple of ``2 ** len(down_blocks)`` plus a context
    margin on every side (:func:`comir_margin`), encoded in inference mode and cropped back.

    Returns:
        ``(function, input_signature, output names)``.
    """
    multiple = int(getattr(model, "multiple", 1))
    context = comir_margin(multiple, margin)
    spec = tf.TensorSpec([None, None, None, int(model.in_channels)], tf.float32, name="image")

    def encode(image: tf.Tensor) -> dict[str, tf.Tensor]:
        image = tf.ensure_shape(image, spec.shape, name="check_image")
        with tf.control_dependencies([
            tf.debugging.assert_positive(tf.shape(image)[1:3],
                                         message="image must have at least one pixel per axis"),
        ]):
            image = tf.debugging.check_numerics(image, "image contains NaN or Inf")
        padded, top, left = pad_to_multiple(image, multiple, context)
        comir = model(padded, training=False)
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        return {"comir": comir[:, top:top + height, left:left + width, :]}

    return encode, [spec], ["comir"]
