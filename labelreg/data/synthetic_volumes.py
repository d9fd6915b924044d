"""Generated mono-modal 3-D registration pairs around one atlas, as NIfTI folders.

Atlas-based registration (learnsim's setting): every fixed image is the same atlas, a smooth
background with a few ellipsoidal structures of distinct intensity and texture; each moving
image is the atlas deformed by its own smooth random displacement (a few voxels), with a smooth
intensity bias and noise. Labels (one binary label per structure, label-reg's 4-D layout) follow
the same deformation, so registration quality is measurable with Dice and surface distances.
NumPy, SciPy and nibabel only; deterministic for a seed; files are written through temporary
names and renamed, and an existing complete set is reused.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["write_synthetic_volumes", "render_atlas"]

_FOLDERS = ("moving_images", "fixed_images", "moving_labels", "fixed_labels")


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / max(float(np.abs(field).max()), 1e-9)


def render_atlas(size: Sequence[int] = (32, 32, 32), structures: int = 3, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The atlas image ``[*S]`` in [0, 1] and its labels ``[*S, structures]`` (binary)."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in size)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"), -1)
    centre = (np.asarray(shape) - 1) / 2.0
    body = np.sum(((grid - centre) / (0.42 * np.asarray(shape))) ** 2, -1) <= 1.0
    image = 0.15 + 0.25 * body + 0.04 * _smooth(rng, shape, 2.0)
    labels = np.zeros((*shape, structures), np.float32)
    for k in range(structures):
        radii = rng.uniform(0.1, 0.18, len(shape)) * np.asarray(shape)
        offset = rng.uniform(-0.18, 0.18, len(shape)) * np.asarray(shape)
        inside = np.sum(((grid - centre - offset) / radii) ** 2, -1) <= 1.0
        labels[..., k] = inside & body & ~labels[..., :k].any(-1)
        image = np.where(labels[..., k] > 0, 0.55 + 0.12 * k + 0.05 * _smooth(rng, shape, 1.0),
                         image)
    return np.clip(image, 0.0, 1.0).astype(np.float32), labels


def _save(array: np.ndarray, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".nii.gz",
                                         dir=path.parent)
    os.close(handle)
    try:
        nib.save(nib.Nifti1Image(array, np.eye(4)), temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_synthetic_volumes(folder: str | os.PathLike, cases: int = 8,
                            size: Sequence[int] = (32, 32, 32), structures: int = 3,
                            amplitude: float = 2.5, seed: int = 0) -> Path:
    """Write ``cases`` moving/fixed pairs (fixed = the atlas) into the four label-reg folders.

    Args:
        folder: destination; ``moving_images/``, ``fixed_images/``, ``moving_labels/`` and
            ``fixed_labels/`` are created with files ``case000.nii.gz``...
        cases: number of pairs.
        size: spatial shape (3 axes).
        structures: labelled structures in the atlas.
        amplitude: largest displacement of the random deformations, voxels.
        seed: seed of the atlas and the deformations.

    Returns:
        ``folder`` as an absolute path.
    """
    if len(tuple(size)) != 3:
        raise ValueError(f"size must list 3 spatial sizes; received size={tuple(size)!r}.")
    folder = Path(folder).absolute()
    names = [f"case{i:03d}.nii.gz" for i in range(int(cases))]
    if all((folder / sub / name).exists() for sub in _FOLDERS for name in names):
        return folder
    for sub in _FOLDERS:
        (folder / sub).mkdir(parents=True, exist_ok=True)
    atlas, atlas_labels = render_atlas(size, structures, seed)
    shape = atlas.shape
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij"))
    rng = np.random.default_rng(seed + 1)
    for name in names:
        displacement = np.stack([_smooth(rng, shape, max(shape) / 6.0) for _ in shape])
        coords = grid + amplitude * displacement
        moving = ndimage.map_coordinates(atlas, coords, order=1, mode="nearest")
        moving = moving * (1.0 + 0.1 * _smooth(rng, shape, max(shape) / 4.0))
        moving = np.clip(moving + 0.02 * rng.standard_normal(shape), 0.0, 1.0)
        labels = np.stack([ndimage.map_coordinates(atlas_labels[..., k], coords, order=0,
                                                   mode="constant")
                           for k in range(structures)], -1)
        _save(moving.astype(np.float32), folder / "moving_images" / name)
        _save(atlas, folder / "fixed_images" / name)
        _save(labels.astype(np.float32), folder / "moving_labels" / name)
        _save(atlas_labels, folder / "fixed_labels" / name)
    return folder
