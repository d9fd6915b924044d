"""Synthetic aligned two-modality image pairs for the CoMIR demo and tests.

No public SHG / brightfield data can be fetched at run time, so the demo renders its own. Every
pair shares one random *scene* -- tissue regions (background, stroma, epithelium), nuclei and
curvilinear fibres -- rendered twice:

- modality A, "SHG-like", 1 channel: fibres bright, stroma dim, epithelium and nuclei dark, a
  multiplicative speckle; saved as 16-bit TIFF (``<id>_SHG.tif``);
- modality B, "brightfield-like", RGB: white background, pink stroma, purple epithelium, dark
  nuclei, faint fibres, smooth stain variations and a fine granular texture; saved as 8-bit PNG
  (``<id>_BF.png``).

The two intensity maps are deliberately not monotone functions of each other (background is the
darkest class in A but the brightest in B, while epithelium is dark in both), so registering the
raw images by intensity MSE fails where CoMIRs succeed.

The output is a pure function of the arguments (NumPy ``default_rng`` per pair) and is written
atomically: pairs are rendered into a temporary sibling folder that is renamed into place, with a
``synthetic.json`` record of the arguments; a later call with the same arguments reuses it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from labelreg.errors import DataError

__all__ = ["render_pair", "write_synthetic_pairs", "MARKER"]

MARKER = "synthetic.json"


def _smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    """Periodic Gaussian smoothing of a 2-D field through the FFT (sigma in pixels)."""
    h, w = field.shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(field) * transfer, s=(h, w))


def _normalise(field: np.ndarray) -> np.ndarray:
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo + 1e-12)


def _fibres(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Curvilinear fibres: smooth random walks rasterised and blurred, in [0, 1]."""
    canvas = np.zeros((size, size))
    for _ in range(count):
        y, x = rng.uniform(0, size, 2)
        angle = rng.uniform(0, 2 * np.pi)
        bend = rng.normal(0, 0.04)
        length = int(rng.uniform(0.15, 0.6) * size)
        strength = rng.uniform(0.5, 1.0)
        for _ in range(length):
            angle += bend + rng.normal(0, 0.05)
            y += np.sin(angle)
            x += np.cos(angle)
            if not (0 <= y < size and 0 <= x < size):
                break
            canvas[int(y), int(x)] = max(canvas[int(y), int(x)], strength)
    return np.clip(_smooth(canvas, 0.8) * 3.0, 0.0, 1.0)


def _nuclei(rng: np.random.Generator, region: np.ndarray, count: int) -> np.ndarray:
    """Filled ellipses centred inside ``region`` (a boolean mask), as a boolean mask."""
    size = region.shape[0]
    mask = np.zeros_like(region)
    candidates = np.argwhere(region)
    if len(candidates) == 0:
        return mask
    yy, xx = np.mgrid[0:size, 0:size]
    for index in rng.integers(0, len(candidates), count):
        cy, cx = candidates[index]
        ry, rx = rng.uniform(2.5, 6.0, 2)
        theta = rng.uniform(0, np.pi)
        lo_y, hi_y = max(cy - 7, 0), min(cy + 8, size)
        lo_x, hi_x = max(cx - 7, 0), min(cx + 8, size)
        dy, dx = yy[lo_y:hi_y, lo_x:hi_x] - cy, xx[lo_y:hi_y, lo_x:hi_x] - cx
        u = dy * np.cos(theta) + dx * np.sin(theta)
        v = -dy * np.sin(theta) + dx * np.cos(theta)
        mask[lo_y:hi_y, lo_x:hi_x] |= (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
    return mask


def render_pair(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one aligned pair.

    Args:
        size: side of the square images, in pixels (>= 32).
        seed: the pair's random seed.

    Returns:
        ``(shg, bf)``: float32 ``[size, size, 1]`` and ``[size, size, 3]``, both in [0, 1].

    Raises:
        ValueError: if ``size < 32``.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels; received size={size}.")
    rng = np.random.default_rng(seed)
    scale = size / 256.0
    # Tissue classes from two smooth random fields: 0 background, 1 stroma, 2 epithelium.
    tissue = _normalise(_smooth(rng.normal(size=(size, size)), 14 * scale))
    kind = _normalise(_smooth(rng.normal(size=(size, size)), 10 * scale))
    classes = np.where(tissue < 0.35, 0, np.where(kind < 0.5, 1, 2))
    background, stroma, epithelium = (classes == c for c in range(3))
    nuclei = _nuclei(rng, epithelium, int(60 * scale**2))
    fibres = _fibres(rng, size, int(45 * scale**2)) * _smooth(stroma.astype(float), 1.5)

    # Modality A: second-harmonic-like. Fibres dominate; class levels in an order that differs
    # from modality B's.
    level_a = np.choose(classes, [0.10, 0.22, 0.03])
    level_a = np.where(nuclei, 0.0, level_a)
    speckle = rng.gamma(shape=6.0, scale=1.0 / 6.0, size=(size, size))
    shg = (level_a + 0.85 * fibres) * speckle
    shg = _smooth(shg, 0.7) + rng.normal(0, 0.01, (size, size))
    shg = np.clip(shg, 0.0, 1.0)[..., None]

    # Modality B: brightfield-like RGB stain colours with their own textures.
    colours = np.array([[0.94, 0.93, 0.95],   # background
                        [0.90, 0.62, 0.76],   # stroma (eosin pink)
                        [0.58, 0.42, 0.74]])  # epithelium (haematoxylin purple)
    bf = colours[classes]
    bf = np.where(nuclei[..., None], np.array([0.30, 0.18, 0.48]), bf)
    bf = bf - 0.12 * fibres[..., None] * np.array([0.2, 1.0, 0.6])
    stain = 1.0 + 0.08 * (_normalise(_smooth(rng.normal(size=(size, size)), 30 * scale)) - 0.5)
    grain = rng.normal(0, 0.025, (size, size, 3))
    bf = np.clip(bf * stain[..., None] + grain, 0.0, 1.0)
    for c in range(3):
        bf[..., c] = _smooth(bf[..., c], 0.6)
    return shg.astype(np.float32), np.clip(bf, 0.0, 1.0).astype(np.float32)


def write_synthetic_pairs(
    folder: str | os.PathLike,
    num_pairs: int,
    size: int = 256,
    seed: int = 0,
    suffix_a: str = "_SHG",
    suffix_b: str = "_BF",
) -> Path:
    """Write ``num_pairs`` aligned pairs into ``folder`` unless the same set is already there.

    Files are ``pair_<i:03d><suffix_a>.tif`` (uint16, modality A) and
    ``pair_<i:03d><suffix_b>.png`` (RGB uint8, modality B), plus ``synthetic.json`` recording the
    arguments.

    Args:
        folder: destination folder; created (atomically) if missing.
        num_pairs: number of pairs (>= 1).
        size: image side in pixels.
        seed: base seed; pair ``i`` uses ``seed * 100003 + i``.
        suffix_a, suffix_b: file-name suffixes of the two modalities.

    Returns:
        The folder.

    Raises:
        DataError: if ``folder`` exists and is not a synthetic set written with these arguments.
        ValueError: on a bad count or size.
    """
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be at least 1; received num_pairs={num_pairs}.")
    folder = Path(folder)
    record = {"num_pairs": int(num_pairs), "size": int(size), "seed": int(seed),
              "suffix_a": suffix_a, "suffix_b": suffix_b, "version": 1}
    marker = folder / MARKER
    if folder.exists():
        if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == record:
            return folder
        if marker.is_file():
            raise DataError(
                f"{folder}: holds a synthetic set written with other settings "
                f"({marker.read_text(encoding='utf-8').strip()}); expected {record}. Delete the "
                "folder or point the config elsewhere."
            )
        if any(folder.iterdir()):
            raise DataError(
                f"{folder}: exists and is not a synthetic CoMIR set (no {MARKER}); refusing to "
                "write demo data into it. Set [Data] synthetic = false to use your own pairs."
            )
        folder.rmdir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for i in range(num_pairs):
            shg, bf = render_pair(size, seed * 100003 + i)
            tifffile.imwrite(tmp / f"pair_{i:03d}{suffix_a}.tif",
                             np.round(shg[..., 0] * 65535).astype(np.uint16))
            Image.fromarray(np.round(bf * 255).astype(np.uint8)).save(
                tmp / f"pair_{i:03d}{suffix_b}.png")
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
