"""Synthetic 2-D microscopy sequences in DeepSim's TIFF-stack layout, for demos and tests.

The real DeepSim datasets (PhC-U373, Platelet-EM) cannot be redistributed, so this module renders
stand-ins with the same file layout::

    folder/images/<seq>.tif         frames x H x W, uint8 (or uint16)
    folder/labels-class/<seq>.tif   frames x H x W, uint8 class per pixel, 0 = background

How a sequence is made:

- A *reference scene* is drawn once on a canvas a margin larger than the frame: irregular blobs of
  class 1 ("cells", with inner texture and a bright phase-contrast-like halo), small bright
  granules of class 2 (mostly inside cells), and, for ``classes > 3``, further granule classes
  alternating dark and bright. Every region carries smoothed-noise texture, so local similarity
  measures see structure and not flat plateaus.
- Frame ``t`` samples the scene at ``x + margin + drift(t) + u_t(x)``: a slow bounded drift plus
  a smooth random displacement ``u_t`` (a few Gaussian-smoothed random fields with slowly rotating
  temporal phases, at most ~4 px at 128 px, about 1 px change from one frame to the next). The
  texture therefore moves with the tissue, as a registration method assumes.
- A smooth multiplicative bias field that changes over time (illumination, fixed to the frame and
  not the tissue) and fresh Gaussian noise per frame are added, so plain SSD between consecutive
  frames is not trivially enough.

Everything is a function of ``(seed, sequence name)``: the same seed gives the same arrays, and a
sequence does not depend on which other sequences are generated with it. Rendering uses NumPy and
``scipy.ndimage`` only (no TensorFlow); two 24-frame 128x128 sequences take well under a second.
"""

from __future__ import annotations

import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage

from labelreg.errors import DataError

__all__ = ["IMAGE_FOLDER", "LABEL_FOLDER", "render_sequence", "write_synthetic_stacks"]

IMAGE_FOLDER = "images"
LABEL_FOLDER = "labels-class"
_GENERATOR = "labelreg.data.synthetic_stacks"
_FORMAT_VERSION = 1


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """A very smooth random field with max |value| = 1 (coarse noise, then a cubic zoom)."""
    # Smoothing a coarse grid and zooming up is far cheaper than a wide Gaussian on the full grid.
    coarse_shape = tuple(max(4, int(np.ceil(s / sigma)) + 3) for s in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    zoom = [s / c for s, c in zip(shape, coarse_shape, strict=True)]
    field = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)
    field = field[: shape[0], : shape[1]]
    field = np.pad(
        field, [(0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])], mode="edge"
    )
    return field / max(float(np.abs(field).max()), 1e-12)


def _blob_mask(
    rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray, centre: np.ndarray, radius: float
) -> np.ndarray:
    """An irregular star-shaped blob: a radius modulated by a few low angular harmonics."""
    dy, dx = rows - centre[0], cols - centre[1]
    angle = np.arctan2(dy, dx)
    boundary = np.ones_like(angle)
    for harmonic in (2, 3, 4):
        boundary += rng.uniform(0.0, 0.12) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(dy, dx) <= radius * boundary


def _reference_scene(
    rng: np.random.Generator, canvas: tuple[int, int], classes: int, unit: float
) -> tuple[np.ndarray, np.ndarray]:
    """The class map (uint8) and intensity (float, about [0, 1]) of the undeformed scene."""
    rows, cols = np.meshgrid(np.arange(canvas[0]), np.arange(canvas[1]), indexing="ij")
    label = np.zeros(canvas, np.uint8)
    # Cells: ~30 % of the canvas, radii 7-12 % of the frame's shorter side.
    mean_radius = 9.5 * unit
    num_cells = max(2, int(round(0.3 * canvas[0] * canvas[1] / (np.pi * mean_radius**2))))
    cells = np.zeros(canvas, bool)
    for _ in range(num_cells):
        centre = rng.uniform([0, 0], canvas)
        cells |= _blob_mask(rng, rows, cols, centre, rng.uniform(7.0, 12.0) * unit)
    label[cells] = 1
    cell_pixels = np.argwhere(cells)
    for cls in range(2, classes):
        count = max(3, int(round(1.5 * num_cells)))
        for _ in range(count):
            # Class 2 lies mostly inside cells (granules); later classes anywhere.
            if cls == 2 and len(cell_pixels) and rng.uniform() < 0.8:
                centre = cell_pixels[rng.integers(len(cell_pixels))].astype(float)
            else:
                centre = rng.uniform([0, 0], canvas)
            radius = rng.uniform(1.3, 2.6) * unit
            label[np.hypot(rows - centre[0], cols - centre[1]) <= radius] = cls

    fine = _smooth_noise(rng, canvas, 1.2 * unit)
    coarse = _smooth_noise(rng, canvas, 4.0 * unit)
    image = 0.18 + 0.03 * coarse + 0.015 * fine  # background
    inside = ndimage.gaussian_filter(cells.astype(float), 1.0 * unit)
    halo = 4.0 * inside * (1.0 - inside)  # peaks at the cell boundary
    image += inside * (0.27 + 0.06 * coarse + 0.07 * fine) + 0.22 * halo
    for cls in range(2, classes):
        tone = 0.85 if cls % 2 == 0 else 0.05
        image = np.where(label == cls, tone + 0.05 * fine, image)
    # A little blur, so that granule edges are not aliased when the frames are resampled.
    return label, ndimage.gaussian_filter(image, 0.6)


def _check_arguments(frames: int, size: Sequence[int], classes: int, seed: int) -> tuple[int, int]:
    if int(frames) < 1:
        raise ValueError(f"frames must be >= 1; received frames={frames}.")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"size must be (H, W) with both >= 16; received size={size}.")
    if int(classes) < 2:
        raise ValueError(
            f"classes must be >= 2 (background and cells); received classes={classes}."
        )
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0; received seed={seed}.")
    return size


def render_sequence(
    frames: int, size: Sequence[int], classes: int, seed: int, name: str = "01",
    motion: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic sequence.

    Args:
        frames: number of frames, at least 1.
        size: frame shape ``(H, W)``, each at least 16.
        classes: number of classes including background, at least 2.
        seed: dataset seed (non-negative).
        name: sequence name; mixed into the seed so that sequences differ.
        motion: factor on the drift and deformation amplitudes (1: about 1-1.5 pixels between
            consecutive 128 x 128 frames, as a slowly moving microscopy sequence).

    Returns:
        ``(images, labels)``: float64 intensities in [0, 1] and uint8 classes, both
        ``[frames, H, W]``.

    Raises:
        ValueError: an invalid argument.
    """
    height, width = _check_arguments(frames, size, classes, seed)
    unit = min(height, width) / 128.0
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])
    if not (np.isfinite(motion) and motion >= 0):
        raise ValueError(f"motion must be a finite number >= 0; received motion={motion!r}.")
    drift_amplitude = rng.uniform(3.0, 6.0, 2) * unit * motion
    displacement_amplitude = 4.0 * unit * motion
    margin = int(np.ceil(2 * drift_amplitude.max() + displacement_amplitude + 4 * unit)) + 2
    canvas = (height + 2 * margin, width + 2 * margin)
    scene_label, scene_image = _reference_scene(rng, canvas, classes, unit)

    # Smooth displacement: three 2-vector fields, each with its own slow temporal oscillation.
    sigma = min(height, width) / 8.0
    fields = np.stack(
        [np.stack([_smooth_field(rng, (height, width), sigma) for _ in range(2)]) for _ in range(3)]
    )  # [3, 2, H, W]
    frequency = rng.uniform(0.15, 0.35, 3)
    phase = rng.uniform(0.0, 2 * np.pi, 3)
    drift_frequency = rng.uniform(0.05, 0.1, 2)
    drift_phase = rng.uniform(0.0, 2 * np.pi, 2)
    bias_fields = np.stack([_smooth_field(rng, (height, width), sigma * 2) for _ in range(2)])
    bias_frequency, bias_phase = rng.uniform(0.1, 0.25), rng.uniform(0.0, 2 * np.pi)

    grid = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij")).astype(float)
    images = np.empty((frames, height, width))
    labels = np.empty((frames, height, width), np.uint8)
    for t in range(frames):
        weights = displacement_amplitude / np.sqrt(3.0) * np.sin(frequency * t + phase)
        displacement = np.tensordot(weights, fields, axes=1)  # [2, H, W]
        drift = drift_amplitude * (np.sin(drift_frequency * t + drift_phase) - np.sin(drift_phase))
        coords = grid + margin + drift[:, None, None] + displacement
        labels[t] = ndimage.map_coordinates(scene_label, coords, order=0, mode="nearest")
        image = ndimage.map_coordinates(scene_image, coords, order=1, mode="nearest")
        angle = bias_frequency * t + bias_phase
        bias = 1.0 + 0.25 * (np.cos(angle) * bias_fields[0] + np.sin(angle) * bias_fields[1])
        images[t] = np.clip(image * bias + rng.normal(0.0, 0.025, image.shape), 0.0, 1.0)
    return images, labels


def _metadata(
    name: str, frames: int, size: tuple[int, int], classes: int, seed: int, dtype: str,
    motion: float = 1.0,
) -> dict[str, Any]:
    return {
        "motion": float(motion),
        "generator": _GENERATOR,
        "format_version": _FORMAT_VERSION,
        "sequence": name,
        "frames": frames,
        "size": list(size),
        "classes": classes,
        "seed": seed,
        "image_dtype": dtype,
    }


def _matches(path: Path, metadata: dict[str, Any]) -> bool:
    """Whether ``path`` is a complete file written by this generator with ``metadata``."""
    try:
        with tifffile.TiffFile(path) as tif:
            stored = dict(tif.shaped_metadata[0]) if tif.shaped_metadata else {}
    except Exception:  # a missing or unreadable file is simply not a match
        return False
    stored.pop("shape", None)
    return stored == metadata


def _write_atomic(path: Path, array: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write a TIFF next to ``path`` and rename it into place, so no reader sees half a file."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        tifffile.imwrite(temporary, array, metadata=metadata)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_synthetic_stacks(
    folder: str | os.PathLike,
    sequences: Sequence[str] = ("01", "02"),
    frames: int = 24,
    size: Sequence[int] = (128, 128),
    classes: int = 3,
    seed: int = 0,
    image_dtype: str = "uint8",
    motion: float = 1.0,
) -> Path:
    """Write synthetic image and class-label stacks into ``folder`` unless already there.

    Creates ``folder/images/<seq>.tif`` (``image_dtype``) and ``folder/labels-class/<seq>.tif``
    (uint8) for every sequence name. Each file is written to a temporary name and renamed into
    place. The generator's parameters are stored in the TIFF description; a sequence whose two
    files already hold exactly these parameters is skipped, so calling again is cheap and
    idempotent.

    Args:
        folder: destination (created if needed).
        sequences: sequence names (file stems), e.g. ``("01", "02")`` like PhC-U373.
        frames: frames per sequence, at least 1.
        size: frame shape ``(H, W)``, each at least 16.
        classes: number of classes including background (0), at least 2: 1 = cells,
            2 = granules, further classes more granules.
        seed: dataset seed, non-negative; the same seed gives the same arrays.
        image_dtype: ``"uint8"`` or ``"uint16"``.
        motion: factor on the amplitude of the frame-to-frame motion (see
            :func:`render_sequence`).

    Returns:
        ``folder`` as an absolute ``Path``.

    Raises:
        ValueError: an invalid argument.
        DataError: a target file exists but was not written by this generator with the same
            parameters (it is never overwritten).
    """
    names = [str(s) for s in sequences]
    if (
        not names
        or len(set(names)) != len(names)
        or any(not n or os.sep in n or n.startswith(".") for n in names)
    ):
        raise ValueError(
            f"sequences must be distinct, non-empty file stems; received sequences={sequences!r}."
        )
    size = _check_arguments(frames, size, classes, seed)
    if image_dtype not in ("uint8", "uint16"):
        raise ValueError(f"image_dtype must be 'uint8' or 'uint16'; received {image_dtype!r}.")

    folder = Path(os.path.expanduser(os.fspath(folder))).absolute()
    image_dir, label_dir = folder / IMAGE_FOLDER, folder / LABEL_FOLDER
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    full_scale = np.iinfo(image_dtype).max
    for name in names:
        metadata = _metadata(name, int(frames), size, int(classes), int(seed), image_dtype,
                             motion)
        image_path, label_path = image_dir / f"{name}.tif", label_dir / f"{name}.tif"
        if _matches(image_path, metadata) and _matches(label_path, metadata):
            continue
        for path in (image_path, label_path):
            # Only a half-finished set of our own files may be replaced; never foreign data.
            if path.exists() and not _matches(path, metadata):
                raise DataError(
                    f"{path}: exists and is not the synthetic stack for sequence={name!r}, "
                    f"frames={frames}, size={size}, classes={classes}, seed={seed}, "
                    f"image_dtype={image_dtype}; remove it or choose another folder."
                )
        images, labels = render_sequence(int(frames), size, int(classes), int(seed), name,
                                         motion=float(motion))
        pixels = np.round(images * full_scale).astype(image_dtype)
        _write_atomic(image_path, pixels, metadata)
        _write_atomic(label_path, labels, metadata)
    return folder
