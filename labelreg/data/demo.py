"""A synthetic MR-to-ultrasound prostate dataset with a known deformation, for demos and tests.

Each case is a continuous phantom defined in the *fixed* image's voxel-index space: a smooth
egg-shaped "gland" with 2-4 small landmarks inside it and smooth tissue texture. A known smooth
map ``T`` (a random rotation, scaling and shift plus a few voxels of smooth non-linear
displacement) sends a fixed voxel index ``x`` to the moving voxel index ``T(x)`` where the same
anatomy lies. The fixed (ultrasound-like) volume renders the phantom at ``x``; the moving
(MR-like) volume renders it at ``T^-1(y)`` for every moving voxel ``y`` (``T^-1`` by fixed-point
iteration, which converges because the non-linear part is a contraction). Hence the true dense
displacement field in labelreg's convention is ``ddf(x) = T(x) - x``, and
``warp(moving, ddf) ~= fixed`` up to rendering and interpolation.

- moving: 69 x 69 x 64 voxels, bright gland with smooth texture, dark landmarks, mild noise and
  bias field (MR-like);
- fixed: 47 x 63 x 44 voxels, darker gland with a bright rim, speckle, a fan-shaped field of view
  and depth attenuation (ultrasound-like);
- 4-D labels, gland first then the landmarks (20-200 voxels each), 1.5 mm voxels in the affine,
  uint8 files ``caseNNN.nii.gz`` in the folders ``moving_images/``, ``fixed_images/``,
  ``moving_labels/``, ``fixed_labels/`` of a ``train/`` and a ``test/`` split.

The initial gland Dice (zero displacement, moving sampled at the fixed indices) is kept in
[0.5, 0.75] per case by redrawing the transform, so registration has real work to do, while the
true DDF reaches a gland Dice above 0.9. Output is byte-for-byte deterministic for a seed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from labelreg.errors import DataError

__all__ = [
    "MOVING_SHAPE",
    "FIXED_SHAPE",
    "SPACING_MM",
    "DemoCase",
    "make_demo_case",
    "generate_demo_data",
    "demo_dirs",
    "binary_dice",
]

MOVING_SHAPE = (69, 69, 64)
FIXED_SHAPE = (47, 63, 44)
SPACING_MM = 1.5
_FOLDERS = ("moving_images", "fixed_images", "moving_labels", "fixed_labels")
_MANIFEST = "labelreg_demo.json"
_FORMAT_VERSION = 1
_INITIAL_DICE_RANGE = (0.5, 0.75)


@dataclass(frozen=True)
class DemoCase:
    """One synthetic case.

    Attributes:
        moving_image: uint8 ``[69, 69, 64]``.
        fixed_image: uint8 ``[47, 63, 44]``.
        moving_label: uint8 ``[69, 69, 64, L]``, 0/1, gland first.
        fixed_label: uint8 ``[47, 63, 44, L]``.
        ddf: float32 ``[47, 63, 44, 3]``, the true displacement (moving voxel units) with
            ``warp(moving, ddf) ~= fixed``.
    """

    moving_image: np.ndarray
    fixed_image: np.ndarray
    moving_label: np.ndarray
    fixed_label: np.ndarray
    ddf: np.ndarray


def binary_dice(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of two masks thresholded at ``threshold`` (1 for two empty masks)."""
    a, b = np.asarray(a) >= threshold, np.asarray(b) >= threshold
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def _grid(shape: tuple[int, ...]) -> np.ndarray:
    """Voxel indices, components first: ``[3, *shape]`` float64."""
    axes = [np.arange(s, dtype=np.float64) for s in shape]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)


def _affine(matrix: np.ndarray, offset: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``matrix @ p + offset`` for points ``p [3, ...]`` (components first, no temporaries)."""
    return np.stack([
        matrix[i, 0] * p[0] + matrix[i, 1] * p[1] + matrix[i, 2] * p[2] + offset[i]
        for i in range(3)
    ])


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)  # Rodrigues


class _Phantom:
    """The continuous anatomy of one case, in fixed voxel-index coordinates."""

    def __init__(self, rng: np.random.Generator) -> None:
        centre = (np.array(FIXED_SHAPE, float) - 1) / 2
        self.centre = centre + rng.uniform(-2.0, 2.0, 3)
        self.radii = np.array([rng.uniform(12, 15), rng.uniform(14, 17), rng.uniform(11, 14)])
        self.orientation = _rotation(rng, 20.0)
        self.egg = rng.uniform(0.05, 0.15)  # one end wider than the other, like a prostate
        self.mean_radius = float(self.radii.mean())
        self.landmarks: list[tuple[np.ndarray, np.ndarray, float]] = []  # centre, radii, MR tone
        for _ in range(int(rng.integers(2, 5))):
            for _attempt in range(100):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                where = self.centre + direction * rng.uniform(0.15, 0.55) * self.radii
                radii = rng.uniform(1.8, 3.2, 3)
                clear = all(
                    np.linalg.norm(where - c) > radii.max() + r.max() + 2.0
                    for c, r, _ in self.landmarks
                )
                if clear:
                    self.landmarks.append((where, radii, float(rng.uniform(0.1, 0.3))))
                    break
        # Smooth texture: a few random plane waves of 8-25 voxel wavelength.
        self.waves = []
        for _ in range(12):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            wavelength = rng.uniform(8.0, 25.0)
            self.waves.append((direction * 2 * np.pi / wavelength, rng.uniform(0, 2 * np.pi)))

    def gland_level(self, p: np.ndarray) -> np.ndarray:
        """Negative inside the gland, about (distance to the surface) / radius outside."""
        # q = R^T (p - c) / r, the point in the gland's own normalised frame.
        matrix = self.orientation.T / self.radii[:, None]
        q = _affine(matrix, -matrix @ self.centre, p)
        rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2) + 1e-9
        return rho + self.egg * q[0] - 1.0

    def landmark_masks(self, p: np.ndarray) -> list[np.ndarray]:
        return [
            ((p[0] - c[0]) / r[0]) ** 2 + ((p[1] - c[1]) / r[1]) ** 2 + ((p[2] - c[2]) / r[2]) ** 2
            <= 1.0
            for c, r, _ in self.landmarks
        ]

    def texture(self, p: np.ndarray) -> np.ndarray:
        p = p.astype(np.float32)  # plenty for a texture, and float32 cosines are much faster
        total = sum(
            np.cos(np.float32(w[0]) * p[0] + np.float32(w[1]) * p[1] + np.float32(w[2]) * p[2]
                   + np.float32(phase))
            for w, phase in self.waves
        )
        return total / np.float32(np.sqrt(len(self.waves) / 2.0))  # roughly unit variance

    def labels(self, p: np.ndarray) -> np.ndarray:
        masks = [self.gland_level(p) <= 0.0, *self.landmark_masks(p)]
        return np.stack(masks, axis=-1).astype(np.uint8)


_SYSTEMATIC_SHIFT = np.array([4.0, -3.0, 2.5])


class _Deformation:
    """``T(x) = c + t + A (x - c) + sum_k a_k exp(-|x - m_k|^2 / (2 s^2))`` (fixed -> moving)."""

    def __init__(self, rng: np.random.Generator, centre: np.ndarray) -> None:
        self.centre = centre
        # Like MR and TRUS frames of real patients, the pairs share a systematic offset (here
        # about 5.6 voxels) and differ by a smaller per-case part; a network learns the first
        # within minutes, the second with longer training.
        self.shift = _SYSTEMATIC_SHIFT + rng.uniform(-2.0, 2.0, 3)
        self.matrix = _rotation(rng, 6.0) @ np.diag(rng.uniform(0.93, 1.07, 3))
        self.inverse_matrix = np.linalg.inv(self.matrix)
        self.sigma = 14.0
        self.bump_centres = centre + rng.uniform(-10.0, 10.0, (3, 3))
        self.bump_amplitudes = rng.uniform(-2.5, 2.5, (3, 3))

    def _nonlinear(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros_like(x)
        scale = -0.5 / self.sigma**2
        for m, a in zip(self.bump_centres, self.bump_amplitudes, strict=True):
            weight = np.exp(scale * ((x[0] - m[0]) ** 2 + (x[1] - m[1]) ** 2 + (x[2] - m[2]) ** 2))
            for d in range(3):
                out[d] += weight * a[d]
        return out

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``T(x)`` for points ``[3, ...]``."""
        offset = self.centre + self.shift - self.matrix @ self.centre
        return _affine(self.matrix, offset, x) + self._nonlinear(x)

    def inverse(self, y: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
        """``T^-1(y)`` for points ``[3, ...]``."""
        # x = c + A^-1 (y - c - t - d(x)) is a contraction (|A^-1| * Lip(d) < 0.7 here), so the
        # iteration converges to the unique preimage; stop once no point moves by `tolerance`.
        offset = self.centre - self.inverse_matrix @ (self.centre + self.shift)
        x = _affine(self.inverse_matrix, offset, y)
        for _ in range(60):
            updated = _affine(self.inverse_matrix, offset, y - self._nonlinear(x))
            change = float(np.max(np.abs(updated - x)))
            x = updated
            if change < tolerance:
                break
        return x


def _smooth3(volume: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 along every axis (edge replicated): makes speckle grains a few voxels wide."""
    for axis in range(volume.ndim):
        padded = np.concatenate(
            [np.take(volume, [0], axis), volume, np.take(volume, [-1], axis)], axis=axis
        )
        n = volume.shape[axis]
        volume = (
            np.take(padded, range(0, n), axis)
            + 2 * np.take(padded, range(1, n + 1), axis)
            + np.take(padded, range(2, n + 2), axis)
        ) / 4
    return volume


def _to_uint8(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.round(volume * 255.0), 0, 255).astype(np.uint8)


def _soft_inside(level: np.ndarray, radius: float, width: float = 0.6) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(np.clip(level * radius / width, -50, 50)))


def _render_mr(phantom: _Phantom, p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level = phantom.gland_level(p)
    inside = _soft_inside(level, phantom.mean_radius)
    texture = phantom.texture(p)
    image = 0.32 + 0.06 * texture + inside * (0.33 + 0.07 * texture)
    for mask, (_, _, tone) in zip(phantom.landmark_masks(p), phantom.landmarks, strict=True):
        image = np.where(mask, tone, image)
    bias = 1.0 + 0.1 * np.cos(p[2] / MOVING_SHAPE[2] * np.pi)
    image = image * bias + rng.normal(0.0, 0.02, image.shape)
    return _to_uint8(image)


def _render_us(phantom: _Phantom, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    level = phantom.gland_level(x)
    distance = level * phantom.mean_radius
    inside = _soft_inside(level, phantom.mean_radius)
    rim = np.exp(-(distance**2) / 2.0)
    texture = phantom.texture(x)
    image = 0.45 + 0.08 * texture - inside * 0.22 + 0.35 * rim
    for k, mask in enumerate(phantom.landmark_masks(x)):
        image = np.where(mask, 0.08 if k % 2 == 0 else 0.85, image)
    speckle = _smooth3(rng.rayleigh(1.0, image.shape)) / np.sqrt(np.pi / 2)
    image = image * speckle
    # Fan-shaped field of view from a probe above the volume along axis 0, with attenuation.
    apex = np.array([-30.0, (FIXED_SHAPE[1] - 1) / 2, (FIXED_SHAPE[2] - 1) / 2])
    depth = x[0] - apex[0]
    lateral = np.sqrt((x[1] - apex[1]) ** 2 + (x[2] - apex[2]) ** 2)
    in_fan = lateral <= depth * np.tan(np.deg2rad(40.0))
    image = np.where(in_fan, image * np.exp(-(depth - 30.0) / 120.0), 0.0)
    return _to_uint8(image * 0.8)


def make_demo_case(index: int, seed: int = 0) -> DemoCase:
    """Render case ``index`` of the demo dataset for ``seed`` (independent of the case count).

    Returns:
        A :class:`DemoCase` with the four volumes and the true DDF.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    phantom = _Phantom(rng)
    fixed_grid = _grid(FIXED_SHAPE)
    moving_grid = _grid(MOVING_SHAPE)
    fixed_label = phantom.labels(fixed_grid)
    low, high = _INITIAL_DICE_RANGE
    for _attempt in range(200):
        deformation = _Deformation(rng, phantom.centre)
        source = deformation.inverse(moving_grid)
        # Zero displacement samples the moving image at the fixed indices: the grids share their
        # origin, so that is the moving grid's corner block of the fixed grid's size.
        corner = source[:, : FIXED_SHAPE[0], : FIXED_SHAPE[1], : FIXED_SHAPE[2]]
        initial = binary_dice(phantom.gland_level(corner) <= 0.0, fixed_label[..., 0])
        if low + 0.02 <= initial <= high - 0.02:
            break
    else:  # pragma: no cover - the ranges above make this practically unreachable
        raise RuntimeError(f"demo case {index}: no transform with the wanted initial Dice")
    ddf = np.moveaxis(deformation.forward(fixed_grid) - fixed_grid, 0, -1).astype(np.float32)
    return DemoCase(
        moving_image=_render_mr(phantom, source, rng),
        fixed_image=_render_us(phantom, fixed_grid, rng),
        moving_label=phantom.labels(source),
        fixed_label=fixed_label,
        ddf=ddf,
    )


def _nifti_bytes(array: np.ndarray) -> bytes:
    affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    affine[:3, 3] = SPACING_MM
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    # gzip with a fixed timestamp and no file name, so the bytes depend only on the data.
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def _manifest(num_cases: int, seed: int, num_test: int) -> dict:
    return {
        "generator": "labelreg.data.demo",
        "format_version": _FORMAT_VERSION,
        "num_cases": num_cases,
        "num_test": num_test,
        "seed": seed,
        "splits": ["train", "test"],
        "folders": list(_FOLDERS),
    }


def _is_complete(folder: Path, manifest: dict) -> bool:
    try:
        return json.loads((folder / _MANIFEST).read_text()) == manifest
    except (OSError, ValueError):
        return False


def demo_dirs(folder: str | os.PathLike, split: str = "train") -> dict[str, Path]:
    """The four folders of a split, keyed like the ``[Data]`` INI keys (``dir_moving_image``...)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; received split={split!r}.")
    root = Path(folder) / split
    return {
        "dir_moving_image": root / "moving_images",
        "dir_fixed_image": root / "fixed_images",
        "dir_moving_label": root / "moving_labels",
        "dir_fixed_label": root / "fixed_labels",
    }


def generate_demo_data(folder: str | os.PathLike, num_cases: int = 20, seed: int = 0) -> Path:
    """Write the demo dataset into ``folder`` unless it is already there.

    Cases ``case000 ... case{num_cases-1}`` are split into ``train/`` (the first
    ``num_cases - num_cases // 5``) and ``test/`` (the last ``num_cases // 5``, at least 1). The
    data are rendered into a temporary folder next to ``folder`` and moved into place in one
    rename, so an interrupted run never leaves a half-written dataset; a manifest
    (``labelreg_demo.json``) marks a complete dataset and is checked on later calls.

    Args:
        folder: destination; must not exist, be empty, or hold this exact dataset.
        num_cases: total number of cases, at least 2.
        seed: the dataset seed; the same seed gives the same bytes.

    Returns:
        ``folder`` as an absolute ``Path``.

    Raises:
        ValueError: ``num_cases`` < 2.
        DataError: ``folder`` holds something else.
    """
    if int(num_cases) < 2:
        raise ValueError(f"num_cases must be >= 2 (train and test); received num_cases={num_cases}.")
    folder = Path(os.path.expanduser(os.fspath(folder))).absolute()
    num_test = max(1, int(num_cases) // 5)
    manifest = _manifest(int(num_cases), int(seed), num_test)
    if _is_complete(folder, manifest):
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DataError(
            f"{folder}: exists and is not the demo dataset for num_cases={num_cases}, "
            f"seed={seed}; remove it or choose another folder."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for index in range(int(num_cases)):
            split = "train" if index < int(num_cases) - num_test else "test"
            case = make_demo_case(index, seed)
            arrays = dict(
                zip(
                    _FOLDERS,
                    (case.moving_image, case.fixed_image, case.moving_label, case.fixed_label),
                    strict=True,
                )
            )
            for sub, array in arrays.items():
                target = staging / split / sub
                target.mkdir(parents=True, exist_ok=True)
                (target / f"case{index:03d}.nii.gz").write_bytes(_nifti_bytes(array))
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():
            folder.rmdir()  # empty (checked above); rename needs the name free
        try:
            os.rename(staging, folder)
        except OSError:
            # Another process finished first: accept its identical result.
            if not _is_complete(folder, manifest):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
