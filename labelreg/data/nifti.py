"""NIfTI folders (label-reg's ``DataReader``) and moving/fixed pairing by file name.

Conventions:

- A folder holds one case per file, ``.nii`` or ``.nii.gz``; other entries (hidden files,
  other formats, sub-folders) are skipped with a warning. Files are taken in sorted name order.
- NIfTI axes 1-3 are spatial and axis 4 indexes labels (label-reg's 4-D label files). A file whose
  third axis has size 1 (``[X, Y]`` or ``[X, Y, 1]``, or ``[X, Y, 1, L]`` for labels) is 2-D, with
  spatial shape ``(X, Y)``; everything else is 3-D. A 3-D (or 2-D) label file holds one label.
- Arrays are returned channels-last as float32 with the header's scaling applied, and are never
  normalised here (see :mod:`labelreg.data.pipeline`).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from labelreg.errors import DataError, shape_text

__all__ = ["NIFTI_SUFFIXES", "NiftiReader", "PairedDataset", "case_name", "is_nifti",
           "spatial_and_labels"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(name: str) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    return name.lower().endswith(NIFTI_SUFFIXES)


def case_name(name: str) -> str:
    """A file name without its ``.nii`` / ``.nii.gz`` suffix: the key that pairs folders."""
    lowered = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


def spatial_and_labels(shape: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """Split a NIfTI shape into the spatial shape and the label count (``None`` if unusable)."""
    shape = tuple(int(s) for s in shape)
    # NIfTI pads unused trailing axes with 1; anything beyond the 4th must be such padding.
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) < 2 or len(shape) > 4:
        raise ValueError(shape)
    num_labels = shape[3] if len(shape) == 4 else 1
    spatial = shape[:3]
    if len(spatial) == 3 and spatial[2] == 1:
        spatial = spatial[:2]
    return spatial, num_labels


def _voxel_type(image: Any, dtype: np.dtype) -> str:
    """The NIfTI name of an image's voxel type (e.g. ``complex64``, ``RGB``), else NumPy's."""
    try:
        return str(image.header.get_value_label("datatype"))
    except Exception:  # a header without NIfTI type codes
        return str(dtype)



class NiftiReader:
    """The NIfTI files of one folder, read on demand (label-reg's ``DataReader``).

    Headers are read when the reader is created (cheap, lazy proxies); voxel data are read by
    :meth:`get_data` / :meth:`read`.

    Args:
        directory: a folder of ``.nii`` / ``.nii.gz`` files of one common spatial shape.

    Attributes:
        directory: the folder (``Path``).
        files: sorted file paths (``list[Path]``).
        num_data: number of files.
        data_shape: spatial shape of the first file, ``(X, Y, Z)`` or ``(X, Y)``.
        ndim: number of spatial axes, 2 or 3.
        num_labels: per file, the size of the 4th axis, or 1 for a 2-D/3-D file.

    Raises:
        DataError: the folder is missing, not a folder, holds no NIfTI file, a file cannot be
            read, has an unusable rank, or differs in spatial shape from the first file.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(os.path.expanduser(os.fspath(directory)))
        if not self.directory.exists():
            raise DataError(f"{self.directory}: folder not found (expected a folder of NIfTI files).")
        if not self.directory.is_dir():
            raise DataError(f"{self.directory}: expected a folder of NIfTI files, found a file.")
        names = sorted(os.listdir(self.directory))
        kept, skipped = [], []
        for name in names:
            path = self.directory / name
            if name.startswith(".") or not is_nifti(name) or not path.is_file():
                skipped.append(name)
            else:
                kept.append(path)
        if skipped:
            warnings.warn(
                f"{self.directory}: skipped {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'}"
                f" that are not NIfTI files (.nii/.nii.gz) or are hidden: {', '.join(skipped[:5])}"
                f"{', ...' if len(skipped) > 5 else ''}",
                stacklevel=2,
            )
        if not kept:
            raise DataError(
                f"{self.directory}: no NIfTI file (.nii or .nii.gz) in this folder "
                f"({len(names)} other entr{'y' if len(names) == 1 else 'ies'})."
            )
        self.files: list[Path] = kept
        self._images = [self._open(path) for path in kept]
        self._shapes = []
        self.num_labels: list[int] = []
        for path, image in zip(kept, self._images, strict=True):
            try:
                spatial, count = spatial_and_labels(image.shape)
            except ValueError:
                raise DataError(
                    f"{path}: expected a 2-D, 3-D or 4-D (labels on the 4th axis) NIfTI image; "
                    f"received shape {shape_text(image.shape)}."
                ) from None
            dtype = np.dtype(image.get_data_dtype())
            if dtype.kind not in "biuf":  # complex, RGB or another compound voxel type
                raise DataError(
                    f"{path}: voxel type {_voxel_type(image, dtype)} is not a real number; "
                    "expected real-valued intensities or labels (an integer or floating-point "
                    "NIfTI data type)."
                )
            self._shapes.append(spatial)
            self.num_labels.append(count)
        self.data_shape: tuple[int, ...] = self._shapes[0]
        for path, spatial in zip(kept, self._shapes, strict=True):
            if spatial != self.data_shape:
                raise DataError(
                    f"{path}: spatial shape {shape_text(spatial)} differs from "
                    f"{shape_text(self.data_shape)} of the first file {kept[0].name}; every file "
                    "of a folder must have the same shape."
                )
        self.ndim = len(self.data_shape)

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            return nib.load(str(path))
        except Exception as err:  # nibabel raises many types for damaged files
            raise DataError(
                f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err}); expected a valid "
                ".nii or .nii.gz file."
            ) from err

    @property
    def num_data(self) -> int:
        """Number of files (cases) in the folder."""
        return len(self.files)

    @property
    def names(self) -> list[str]:
        """Case names: the file names without ``.nii`` / ``.nii.gz``."""
        return [case_name(path.name) for path in self.files]

    def _check_index(self, index: int) -> int:
        if not isinstance(index, int | np.integer) or not -self.num_data <= index < self.num_data:
            raise DataError(
                f"{self.directory}: case index {index!r} out of range; the folder has "
                f"{self.num_data} files."
            )
        return int(index) % self.num_data

    @property
    def affines(self) -> list[np.ndarray]:
        """The 4x4 affine of every file, in order."""
        return [self.affine(i) for i in range(self.num_data)]

    @property
    def headers(self) -> list[Any]:
        """The nibabel header of every file, in order."""
        return [self.header(i) for i in range(self.num_data)]

    def affine(self, index: int) -> np.ndarray:
        """The 4x4 voxel-to-world affine of file ``index`` (float64)."""
        return np.asarray(self._images[self._check_index(index)].affine, dtype=np.float64)

    def header(self, index: int) -> Any:
        """The nibabel header of file ``index``."""
        return self._images[self._check_index(index)].header

    def spacing(self, index: int) -> tuple[float, ...]:
        """Voxel size of file ``index`` along each spatial axis (header units, usually mm)."""
        zooms = self.header(index).get_zooms()
        return tuple(float(z) for z in zooms[: self.ndim])

    def read(self, index: int, label_index: int | None = None) -> np.ndarray:
        """The voxels of one file, float32.

        Args:
            index: file (case) index.
            label_index: for a label file, which label (4th-axis index); ``None`` returns every
                label.

        Returns:
            ``[*data_shape, L]`` when ``label_index`` is ``None`` (``L = num_labels[index]``,
            1 for an image), else ``[*data_shape]``.

        Raises:
            DataError: the data cannot be read, the label index is out of range, or a value is
                NaN or Inf.
        """
        index = self._check_index(index)
        path = self.files[index]
        count = self.num_labels[index]
        if label_index is not None and (
            not isinstance(label_index, int | np.integer) or not 0 <= label_index < count
        ):
            raise DataError(
                f"{path}: label index {label_index!r} out of range; the file holds {count} "
                f"label(s) (indices 0..{count - 1})."
            )
        image = self._images[index]
        try:
            if label_index is not None and len(image.shape) >= 4:
                data = np.asarray(image.dataobj[..., int(label_index)])
            else:
                data = np.asarray(image.dataobj)
        except Exception as err:
            raise DataError(
                f"{path}: cannot read the voxel data ({type(err).__name__}: {err}); the file may "
                "be truncated or damaged."
            ) from err
        with np.errstate(over="ignore", invalid="ignore"):
            values = data.astype(np.float32, copy=False)
        if not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                raise DataError(
                    f"{path}: holds {bad} NaN or Inf value(s); expected finite intensities."
                )
            largest = float(np.max(np.abs(data)))
            raise DataError(
                f"{path}: holds values up to {largest:g} in magnitude, beyond the float32 range "
                f"(+-{float(np.finfo(np.float32).max):.4g}) that labelreg computes in; expected "
                "intensities that fit in float32 (rescale the image)."
            )
        data = values
        if label_index is not None:
            return data.reshape(self.data_shape)
        return data.reshape(*self.data_shape, count)

    def get_data(
        self,
        case_indices: Sequence[int] | None = None,
        label_indices: Sequence[int] | int | None = None,
    ) -> np.ndarray:
        """Stack cases into a batch (label-reg's ``DataReader.get_data``).

        Args:
            case_indices: which files; ``None`` means all, in order.
            label_indices: for label folders, one label index per case, or a single index (an int
                or a one-element sequence) used for every case. ``None`` reads images, which must
                then hold a single volume. The caller's sequence is never modified.

        Returns:
            float32 ``[N, *data_shape, 1]``.

        Raises:
            DataError: out-of-range indices, a mismatched number of label indices, a multi-label
                file read without ``label_indices``, or unreadable / non-finite data.
        """
        cases = list(range(self.num_data)) if case_indices is None else list(case_indices)
        if label_indices is None:
            labels: list[int | None] = [None] * len(cases)
        else:
            given = [label_indices] if isinstance(label_indices, int | np.integer) else list(
                label_indices
            )
            if len(given) == 1:
                labels = given * len(cases)
            elif len(given) == len(cases):
                labels = given
            else:
                raise DataError(
                    f"{self.directory}: expected one label index per case ({len(cases)}) or a "
                    f"single index; received {len(given)} label indices."
                )
        volumes = []
        for case, label in zip(cases, labels, strict=True):
            index = self._check_index(case)
            if label is None:
                if self.num_labels[index] != 1:
                    raise DataError(
                        f"{self.files[index]}: holds {self.num_labels[index]} volumes on its 4th "
                        "axis; pass label_indices to choose one."
                    )
                volumes.append(self.read(index)[..., 0])
            else:
                volumes.append(self.read(index, label))
        if not volumes:
            return np.zeros((0, *self.data_shape, 1), np.float32)
        return np.stack(volumes)[..., None]


def _pair_order(reference: NiftiReader, other: NiftiReader, role: str, ref_role: str) -> list[int]:
    """Indices into ``other`` of the files named like ``reference``'s, in ``reference``'s order."""
    positions: dict[str, int] = {}
    for i, name in enumerate(other.names):
        if name in positions:
            raise DataError(
                f"{other.directory}: two files are named {name!r} ({other.files[positions[name]].name}"
                f" and {other.files[i].name}); case names must be unique."
            )
        positions[name] = i
    ref_names = reference.names
    if sorted(ref_names) != sorted(positions):
        missing = sorted(set(ref_names) - set(positions))
        extra = sorted(set(positions) - set(ref_names))
        if missing:
            detail = (
                f"{ref_role} has {missing[0]!r} but {role} ({other.directory}) has no file of "
                "that name"
            )
        else:
            detail = (
                f"{role} has {extra[0]!r} but {ref_role} ({reference.directory}) has no file of "
                "that name"
            )
        raise DataError(
            f"cases are paired by file name and the folders differ: {detail} "
            f"({reference.num_data} vs {other.num_data} files)."
        )
    return [positions[name] for name in ref_names]


class PairedDataset:
    """Moving and fixed images, and optionally their labels, paired by file name.

    The case order is the sorted order of the moving-image folder; the other folders are matched
    to it by name (``.nii`` and ``.nii.gz`` of one name pair). Moving and fixed grids may differ in
    shape but not in spatial rank.

    Args:
        dir_moving_image: folder of moving images.
        dir_fixed_image: folder of fixed images.
        dir_moving_label: folder of moving labels (or ``None``).
        dir_fixed_label: folder of fixed labels (or ``None``; both or neither).

    Attributes:
        moving_image, fixed_image: the :class:`NiftiReader` of each image folder.
        moving_label, fixed_label: the label readers, or ``None``.
        names: case names in order.
        num_cases: number of pairs.
        moving_shape, fixed_shape: spatial shapes.
        ndim: spatial rank, 2 or 3.
        num_labels: labels per case (1 per case when there are no labels).
        has_labels: whether label folders were given.

    Raises:
        DataError: a reader fails; the file names differ between folders; a label's spatial shape
            differs from its image's; a case has different moving and fixed label counts; moving
            and fixed differ in spatial rank; only one of the two label folders is given.
    """

    def __init__(
        self,
        dir_moving_image: str | os.PathLike,
        dir_fixed_image: str | os.PathLike,
        dir_moving_label: str | os.PathLike | None = None,
        dir_fixed_label: str | os.PathLike | None = None,
    ) -> None:
        if (dir_moving_label is None) != (dir_fixed_label is None):
            given = dir_moving_label if dir_fixed_label is None else dir_fixed_label
            raise DataError(
                f"labels must be given for both moving and fixed images; received only {given} "
                f"(dir_moving_label={dir_moving_label}, dir_fixed_label={dir_fixed_label})."
            )
        self.moving_image = NiftiReader(dir_moving_image)
        self.fixed_image = NiftiReader(dir_fixed_image)
        self.moving_label = NiftiReader(dir_moving_label) if dir_moving_label is not None else None
        self.fixed_label = NiftiReader(dir_fixed_label) if dir_fixed_label is not None else None

        ref = self.moving_image
        self._order = {
            "moving_image": list(range(ref.num_data)),
            "fixed_image": _pair_order(ref, self.fixed_image, "fixed_images", "moving_images"),
        }
        if self.moving_label is not None and self.fixed_label is not None:
            self._order["moving_label"] = _pair_order(
                ref, self.moving_label, "moving_labels", "moving_images"
            )
            self._order["fixed_label"] = _pair_order(
                ref, self.fixed_label, "fixed_labels", "moving_images"
            )
        self.names = list(ref.names)

        if self.moving_image.ndim != self.fixed_image.ndim:
            raise DataError(
                f"moving images {self.moving_image.data_shape} ({self.moving_image.directory}) "
                f"and fixed images {self.fixed_image.data_shape} ({self.fixed_image.directory}) "
                "must have the same number of spatial axes."
            )
        for image_key, label_key in (("moving_image", "moving_label"), ("fixed_image", "fixed_label")):
            label = getattr(self, label_key)
            image = getattr(self, image_key)
            if label is None:
                continue
            if label.data_shape != image.data_shape:
                first = label.files[0]
                raise DataError(
                    f"{first}: label spatial shape {shape_text(label.data_shape)} differs from "
                    f"the image shape {shape_text(image.data_shape)} of {image.directory}."
                )
        self.num_labels: list[int] = [1] * self.num_cases
        if self.moving_label is not None and self.fixed_label is not None:
            for case in range(self.num_cases):
                m_index = self._order["moving_label"][case]
                f_index = self._order["fixed_label"][case]
                m_count = self.moving_label.num_labels[m_index]
                f_count = self.fixed_label.num_labels[f_index]
                if m_count != f_count:
                    raise DataError(
                        f"case {self.names[case]!r}: {self.moving_label.files[m_index]} holds "
                        f"{m_count} label(s) but {self.fixed_label.files[f_index]} holds "
                        f"{f_count}; moving and fixed labels must correspond one to one."
                    )
                self.num_labels[case] = m_count

    @property
    def num_cases(self) -> int:
        """Number of moving/fixed pairs."""
        return len(self.names)

    def subset(self, names: Sequence[str]) -> PairedDataset:
        """The cases ``names`` of this dataset, in this dataset's order, as a dataset of their own
        (the readers are shared: nothing is read again).

        Raises:
            DataError: a name is not a case of this dataset, or ``names`` is empty.
        """
        wanted = set(names)
        unknown = sorted(wanted - set(self.names))
        if unknown or not wanted:
            raise DataError(f"{self.moving_image.directory}: no case named "
                            f"{', '.join(unknown[:5]) or '(an empty list)'}; expected names of "
                            "its files without .nii/.nii.gz.")
        keep = [i for i, name in enumerate(self.names) if name in wanted]
        part = copy.copy(self)
        part._order = {role: [order[i] for i in keep] for role, order in self._order.items()}
        part.names = [self.names[i] for i in keep]
        part.num_labels = [self.num_labels[i] for i in keep]
        return part

    @property
    def has_labels(self) -> bool:
        """Whether label folders were given."""
        return self.moving_label is not None

    @property
    def moving_shape(self) -> tuple[int, ...]:
        """Spatial shape of the moving images."""
        return self.moving_image.data_shape

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """Spatial shape of the fixed images."""
        return self.fixed_image.data_shape

    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.moving_image.ndim

    def reader(self, role: str) -> NiftiReader:
        """The reader of ``role``: moving_image, fixed_image, moving_label or fixed_label."""
        if role not in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
            raise ValueError(
                "role must be one of moving_image, fixed_image, moving_label, fixed_label; "
                f"received role={role!r}."
            )
        reader = getattr(self, role)
        if reader is None:
            raise DataError(f"this dataset has no labels; cannot read {role}.")
        return reader

    def file(self, role: str, case: int) -> Path:
        """The file of ``role`` for case index ``case``."""
        return self.reader(role).files[self._order[role][case]]

    def read(self, role: str, case: int, label_index: int | None = None) -> np.ndarray:
        """Voxels of one case (see :meth:`NiftiReader.read`), float32."""
        return self.reader(role).read(self._order[role][case], label_index)

    def affine(self, role: str, case: int) -> np.ndarray:
        """The 4x4 affine of ``role``'s file for case ``case``."""
        return self.reader(role).affine(self._order[role][case])

    def header(self, role: str, case: int) -> Any:
        """The nibabel header of ``role``'s file for case ``case``."""
        return self.reader(role).header(self._order[role][case])

    def spacing(self, role: str, case: int) -> tuple[float, ...]:
        """Voxel size of ``role``'s file for case ``case``."""
        return self.reader(role).spacing(self._order[role][case])

    def fixed_spacings(self, voxel_spacing: Sequence[float] = ()) -> np.ndarray:
        """``[N, n]`` float32 voxel sizes (mm) of the fixed images, from their headers, or
        ``voxel_spacing`` (``[Data] voxel_spacing``) for every case when it is given.

        Raises:
            DataError: ``voxel_spacing`` has a length other than the images' rank.
        """
        if voxel_spacing:
            if len(voxel_spacing) != self.ndim:
                raise DataError(f"[Data] voxel_spacing has {len(voxel_spacing)} entries but "
                                f"the images are {self.ndim}-D.")
            return np.tile(np.asarray(voxel_spacing, np.float32), (self.num_cases, 1))
        return np.asarray([self.spacing("fixed_image", i) for i in range(self.num_cases)],
                          np.float32)
