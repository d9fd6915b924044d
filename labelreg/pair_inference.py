"""Inference on NIfTI pairs (label-driven and image-driven registration): register the test pairs
of ``[Inference]`` and write the results, through the contract of :mod:`labelreg.item_outputs`.

For every pair the network predicts the DDF from the two images alone. Written per case, in the
folder ``<dir_save>/<case>/``, all in the FIXED image's space with its affine and header:

- ``ddf.nii.gz``: ``[*S_fix, n]`` float32 displacement in moving-image voxels;
- ``warped_image.nii.gz``: the moving image warped onto the fixed grid (linear);
- ``warped_label.nii.gz``: every moving label (``[*S_fix, L]``), when moving labels are given;
- ``metrics.csv``: this pair's rows of the metrics table below, when fixed labels are given;
- ``overlay.png``: the orthogonal mid-planes of fixed | moving | warped | a fixed/warped
  checkerboard, with label contours and a legend (``save_png``; :mod:`labelreg.visualise`).

With fixed labels, ``<dir_save>/metrics.csv`` has one row per pair and label: Dice, centroid
distance (mm) and Hausdorff-95 (mm) before (zero DDF) and after registration, and the DDF's
folding ratio and Jacobian statistics. It is rebuilt from the case folders at the end of every
run, so it covers the pairs registered by earlier runs too.

Pairs are independent. A pair whose files cannot be used (a truncated or corrupt NIfTI, NaN
values, a shape that differs from the other files, moving and fixed label counts that differ) or
whose outputs cannot be written (e.g. a full disk) is named in the log and in
``<dir_save>/failed.csv`` (columns ``case,file,error``), and the other pairs go on; a failed pair
has no ``<case>/`` folder. Each pair is written into a hidden staging folder
``<dir_save>/.<case>.partial-*`` and renamed to ``<case>/`` only once complete, so a ``<case>/``
folder is always whole; staging folders left behind by a crash are removed by the next run. A rerun
skips the pairs whose folder already holds every expected file (``overwrite=True``, i.e.
``inference.py --overwrite``, redoes them, e.g. after retraining).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import nibabel as nib
import numpy as np

from labelreg import metrics, ops
from labelreg.config import Config
from labelreg.data.nifti import case_name, is_nifti, spatial_and_labels
from labelreg.data.pipeline import normalise_intensity
from labelreg.errors import DataError
from labelreg.files import nifti_image, write_csv, write_png
from labelreg.item_outputs import ItemFailure, ItemOutputs, ItemsResult
from labelreg.methods.runs import load_trained_run
from labelreg.networks.apply import inference_ddf, register_pair
from labelreg.networks.precision import with_precision
from labelreg.visualise import overlay_figure

__all__ = ["infer", "load_trained_model", "METRIC_COLUMNS", "NiftiInferencePairs", "InferencePair"]

METRIC_COLUMNS = (
    "case", "label_index", "dice_before", "dice", "centroid_distance_mm_before",
    "centroid_distance_mm", "hausdorff95_mm_before", "hausdorff95_mm", "folding_ratio",
    "jacobian_mean", "jacobian_std", "log_jacobian_var",
)

#: The input roles, in the order a pair's files are checked: images first, so that a pair
#: whose image is damaged is reported for the image, not for its label.
_ROLES = ("moving_image", "fixed_image", "moving_label", "fixed_label")
_IMAGE_OF = {"moving_image": "moving_image", "fixed_image": "fixed_image",
             "moving_label": "moving_image", "fixed_label": "fixed_image"}


def load_trained_model(checkpoint: str | os.PathLike) -> tuple[keras.Model, dict[str, Any], str]:
    """Rebuild the registration network of a training run and restore its weights.

    Args:
        checkpoint: anything :func:`labelreg.engine.checkpoints.resolve_checkpoint` accepts.

    Returns:
        ``(model, meta, checkpoint_prefix)``; ``meta`` holds the training shapes and options.

    Raises:
        DataError: no checkpoint, or a run whose method has no single registration network.
    """
    run = load_trained_run(checkpoint)
    if "model" not in run.models:
        raise DataError(
            f"{run.run_dir}: a {run.method.name} run, not a registration network "
            f"(models {sorted(run.models)}); use its own config with inference.py."
        )
    return run.models["model"], run.meta, run.prefix


# -- the test pairs ------------------------------------------------------------------------------


@dataclass
class InferencePair:
    """The inputs of one pair, float32 and channels-last, as the network and writers use them."""

    name: str
    moving: np.ndarray  # [*S_mov], normalised when the model was trained so
    fixed: np.ndarray  # [*S_fix], likewise
    moving_label: np.ndarray | None  # [*S_mov, L]
    fixed_label: np.ndarray | None  # [*S_fix, L]
    affine: np.ndarray  # the fixed image's 4x4 voxel-to-world matrix
    header: Any  # the fixed image's NIfTI header
    spacing: tuple[float, ...]  # the fixed image's voxel size (mm)


def _list_folder(folder: Path, key: str) -> dict[str, Path]:
    """``{case name: file}`` of the NIfTI files of ``folder`` (``[Inference] key``), sorted."""
    folder = Path(os.path.expanduser(os.fspath(folder)))
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "not found"
        raise DataError(f"{folder}: folder {state} ([Inference] {key}; expected a folder of "
                        "NIfTI files).")
    files: dict[str, Path] = {}
    ignored = []
    for entry in sorted(os.listdir(folder)):
        path = folder / entry
        if entry.startswith(".") or not is_nifti(entry) or not path.is_file():
            ignored.append(entry)
            continue
        name = case_name(entry)
        if name in files:
            raise DataError(f"{folder}: two files are named {name!r} ({files[name].name} and "
                            f"{entry}); case names must be unique.")
        files[name] = path
    if ignored:
        warnings.warn(f"{folder}: skipped {len(ignored)} entries that are not NIfTI files or are "
                      f"hidden: {', '.join(ignored[:5])}{', ...' if len(ignored) > 5 else ''}",
                      stacklevel=2)
    if not files:
        raise DataError(f"{folder}: no NIfTI file (.nii or .nii.gz) in this folder "
                        f"([Inference] {key}).")
    return files


class NiftiInferencePairs:
    """The ``[Inference]`` folders paired by file name, with every header opened.

    A folder that is missing or empty, or case names that do not match between folders, stop the
    run (:class:`DataError`) before any work. A damaged or inconsistent file only fails its own
    pair, when :meth:`load` is called: headers are opened here (cheap, lazy proxies) so that the
    reference shape of each folder is the most common one among its readable files.
    """

    def __init__(self, inference: Mapping[str, Any]) -> None:
        both_labels = (inference["dir_moving_label"] is not None
                       and inference["dir_fixed_label"] is not None)
        roles = ["moving_image", "fixed_image"]
        if inference["dir_moving_label"] is not None:
            roles.append("moving_label")
        if both_labels:
            roles.append("fixed_label")
        self.files = {role: _list_folder(inference[f"dir_{role}"], f"dir_{role}") for role in roles}
        self.names = list(self.files["moving_image"])
        self.both_labels = both_labels
        for role in roles[1:]:
            folder = inference[f"dir_{role}"]
            missing = [n for n in self.names if n not in self.files[role]]
            # Moving labels without fixed labels are only warped and may cover more cases.
            extra = ([] if role == "moving_label" and not both_labels else
                     [n for n in self.files[role] if n not in self.files["moving_image"]])
            if missing or extra:
                detail = (f"dir_moving_image has {missing[0]!r} but {folder} has no file of that "
                          "name" if missing else
                          f"{folder} has {extra[0]!r} but dir_moving_image "
                          f"({inference['dir_moving_image']}) has no file of that name")
                raise DataError(f"[Inference] cases are paired by file name and the folders "
                                f"differ: {detail}.")

        self._images: dict[Path, Any] = {}
        self._shapes: dict[Path, tuple[tuple[int, ...], int]] = {}
        self._problems: dict[Path, str] = {}
        for role in roles:
            for name in self.names:
                self._open(self.files[role][name])
        self.reference: dict[str, tuple[int, ...] | None] = {}
        for role in ("moving_image", "fixed_image"):
            shapes = Counter(self._shapes[self.files[role][n]][0] for n in self.names
                             if self.files[role][n] in self._shapes)
            self.reference[role] = shapes.most_common(1)[0][0] if shapes else None
        ranks = {len(shape) for shape in self.reference.values() if shape is not None}
        if len(ranks) > 1:
            raise DataError(
                f"moving images {self.reference['moving_image']} "
                f"({inference['dir_moving_image']}) and fixed images "
                f"{self.reference['fixed_image']} ({inference['dir_fixed_image']}) must have the "
                "same number of spatial axes."
            )
        #: Number of spatial axes, 2 or 3 (``None`` if no image can be read at all).
        self.ndim: int | None = ranks.pop() if ranks else None

    def _open(self, path: Path) -> None:
        try:
            image = nib.load(str(path))
        except Exception as err:  # nibabel raises many types for damaged files
            self._problems[path] = (f"{path}: cannot be read as NIfTI ({type(err).__name__}: "
                                    f"{err}); expected a valid .nii or .nii.gz file.")
            return
        try:
            self._shapes[path] = spatial_and_labels(image.shape)
        except ValueError:
            self._problems[path] = (f"{path}: expected a 2-D, 3-D or 4-D (labels on the 4th axis) "
                                    f"NIfTI image; received shape {tuple(image.shape)}.")
            return
        dtype = np.dtype(image.get_data_dtype())
        if dtype.kind not in "biuf":  # complex, RGB or another compound voxel type
            self._problems[path] = (f"{path}: voxel type {dtype} is not a real number; expected "
                                    "real-valued intensities or labels.")
            return
        self._images[path] = image

    @property
    def fixed_shape(self) -> tuple[int, ...] | None:
        """The spatial shape of the fixed images (the most common one)."""
        return self.reference["fixed_image"]

    def load(self, name: str, normalise: bool) -> InferencePair:
        """Read and check one pair's files.

        Raises:
            ItemFailure: a file is damaged, holds NaN/Inf, differs in spatial shape from its
                folder's (or for a label, its image's) reference shape, or the moving and fixed
                labels differ in count.
        """
        arrays: dict[str, np.ndarray | None] = dict.fromkeys(_ROLES)
        for role, files in self.files.items():
            path = files[name]
            if path in self._problems:
                raise ItemFailure(path, self._problems[path])
            spatial, count = self._shapes[path]
            expected = self.reference[_IMAGE_OF[role]]
            if spatial != expected:
                against = ("the other files of its folder" if role.endswith("image") else
                           f"the {_IMAGE_OF[role].replace('_', ' ')}s")
                raise ItemFailure(path, f"{path}: spatial shape {spatial} differs from "
                                         f"{expected} of {against}.")
            arrays[role] = self._read(path, spatial, count)
        moving_label, fixed_label = arrays["moving_label"], arrays["fixed_label"]
        if self.both_labels and moving_label.shape[-1] != fixed_label.shape[-1]:
            raise ItemFailure(
                self.files["fixed_label"][name],
                f"case {name!r}: {self.files['moving_label'][name]} holds "
                f"{moving_label.shape[-1]} label(s) but {self.files['fixed_label'][name]} holds "
                f"{fixed_label.shape[-1]}; moving and fixed labels must correspond one to one.")
        # An image with several volumes on its 4th axis contributes its first one.
        moving, fixed = arrays["moving_image"][..., 0], arrays["fixed_image"][..., 0]
        if normalise:
            moving, fixed = normalise_intensity(moving), normalise_intensity(fixed)
        fixed_image = self._images[self.files["fixed_image"][name]]
        return InferencePair(
            name=name, moving=moving, fixed=fixed, moving_label=moving_label,
            fixed_label=fixed_label, affine=np.asarray(fixed_image.affine, np.float64),
            header=fixed_image.header,
            spacing=tuple(float(z) for z in fixed_image.header.get_zooms()[:fixed.ndim]))

    def _read(self, path: Path, spatial: tuple[int, ...], count: int) -> np.ndarray:
        """The voxels of one file as float32 ``[*spatial, count]``."""
        try:
            data = np.asarray(self._images[path].dataobj)
        except Exception as err:  # a truncated gzip stream, a short file, ...
            raise ItemFailure(path, f"{path}: cannot read the voxel data ({type(err).__name__}: "
                                     f"{err}); the file may be truncated or damaged.") from err
        with np.errstate(over="ignore", invalid="ignore"):
            values = data.astype(np.float32, copy=False)
        if not np.all(np.isfinite(values)):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                raise ItemFailure(path, f"{path}: holds {bad} NaN or Inf value(s); expected "
                                         "finite intensities.")
            # Finite in the file, infinite in float32, which the network computes in.
            raise ItemFailure(path, f"{path}: holds values up to {float(np.max(np.abs(data))):g} "
                                     "in magnitude, beyond the float32 range; rescale the image.")
        return values.reshape(*spatial, count)


# -- the output folder ---------------------------------------------------------------------------


def _expected_files(moving_labels: bool, fixed_labels: bool, save_png: bool) -> tuple[str, ...]:
    """The files of a complete ``<case>/`` folder under the current settings."""
    names = ["ddf.nii.gz", "warped_image.nii.gz"]
    if moving_labels:
        names.append("warped_label.nii.gz")
    if fixed_labels:
        names.append("metrics.csv")
    if save_png:
        names.append("overlay.png")
    return tuple(names)


# -- inference -----------------------------------------------------------------------------------


class _PairWriter:
    """Registers batches of loaded pairs and writes each through the output contract."""

    def __init__(self, model: keras.Model, outputs: ItemOutputs, fixed_shape: tuple[int, ...],
                 inference: Mapping[str, Any]) -> None:
        self.ddf_fn = inference_ddf(model, inference)
        self.outputs = outputs
        self.dir_save = outputs.dir_save
        self.fixed_shape = fixed_shape
        self.interpolation = inference["label_interpolation"]
        self.save_png = bool(inference["save_png"])

    def run_batch(self, pairs: Sequence[InferencePair]) -> None:
        """Register ``pairs`` (one network call) and write each of them."""
        try:
            out = register_pair(self.ddf_fn, np.stack([p.moving for p in pairs])[..., None],
                                np.stack([p.fixed for p in pairs])[..., None])
            ddf = out["ddf"]
            jacobian = {k: v.numpy() for k, v in metrics.jacobian_statistics(ddf).items()}
            ddf, warped = ddf.numpy(), out["warped_moving_image"].numpy()
        except Exception as err:  # the batch is lost, not the run
            for pair in pairs:
                self.outputs.fail(pair.name, ItemFailure("", f"registration failed "
                                                             f"({type(err).__name__}: {err})"))
            return
        for i, pair in enumerate(pairs):
            self.outputs.write(pair.name, functools.partial(
                self._write_pair, pair=pair, ddf=ddf[i], warped=warped[i, ..., 0],
                jacobian={k: float(v[i]) for k, v in jacobian.items()}))

    def _write_pair(self, staging: Path, pair: InferencePair, ddf: np.ndarray, warped: np.ndarray,
                    jacobian: dict[str, float]) -> None:
        """Write one pair's outputs into ``staging``.

        Args:
            ddf: ``[*S_fix, n]``; ``warped``: ``[*S_fix]``; ``jacobian``: this pair's statistics.

        Raises:
            ItemFailure: a file cannot be written (its final path and the OS message).
        """
        def save(name: str, write: Callable[[Path], None]) -> None:
            try:
                write(staging / name)
            except OSError as err:
                final = self.dir_save / pair.name / name
                raise ItemFailure(final, f"{final}: cannot be written ({err})") from err

        def save_nifti(name: str, data: np.ndarray) -> None:
            image = nifti_image(data, pair.affine, pair.header)
            save(name, lambda path: nib.save(image, path))

        save_nifti("ddf.nii.gz", ddf)
        save_nifti("warped_image.nii.gz", warped)
        warped_labels = None
        if pair.moving_label is not None:
            # [*S_mov, L] -> one batch of L channels warped by this pair's DDF.
            warped_labels = ops.warp(pair.moving_label[None], ddf[None],
                                     interpolation=self.interpolation).numpy()[0]
            save_nifti("warped_label.nii.gz", warped_labels)
        if pair.fixed_label is not None:
            rows = _pair_metrics(pair.name, pair.moving_label, pair.fixed_label, ddf,
                                 warped_labels, pair.spacing, jacobian)
            save("metrics.csv", lambda path: write_csv(path, rows, METRIC_COLUMNS))
        if self.save_png:
            save("overlay.png", lambda path: _write_overlay(
                path, pair.fixed, pair.moving, warped, self.fixed_shape,
                fixed_label=pair.fixed_label[..., 0] if pair.fixed_label is not None else None,
                moving_label=pair.moving_label[..., 0] if pair.moving_label is not None else None,
                warped_label=warped_labels[..., 0] if warped_labels is not None else None,
                spacing=pair.spacing))


def infer(cfg: Config, log: Callable[[str], None] = print,
          overwrite: bool = False) -> ItemsResult:
    """Register the test pairs of ``[Inference]`` and write the outputs (see module docstring).

    Args:
        cfg: a validated config with an ``[Inference]`` section.
        log: where progress lines, each failed pair and the final summary go.
        overwrite: recompute the pairs whose ``<case>/`` folder is already complete instead of
            skipping them (``inference.py --overwrite``).

    Returns:
        what was registered, skipped and failed; a failed pair does not raise.

    Raises:
        DataError: before any pair is computed: an unwritable ``dir_save``, missing or
            unpairable input folders, an unusable checkpoint, or images whose spatial rank
            differs from the model's.
    """
    inf = cfg["Inference"]
    pairs = NiftiInferencePairs(inf)
    outputs = ItemOutputs(inf["dir_save"], _expected_files(
        inf["dir_moving_label"] is not None, pairs.both_labels, bool(inf["save_png"])),
        overwrite=overwrite, log=log)
    # Checked first: a read-only destination should not cost a model load to discover.
    outputs.check()
    model, meta, prefix = load_trained_model(inf["file_model_saved"])
    # bfloat16 convolutions on the float32-trained weights; the DDF and the warps stay float32.
    model = with_precision(model, inf["precision"])
    if pairs.ndim is not None and pairs.ndim != model.ndim:
        raise DataError(
            f"{inf['dir_fixed_image']}: {pairs.ndim}-D images, but the model in {prefix} is "
            f"{model.ndim}-D."
        )
    normalise = bool(meta.get("normalise", True))
    outputs.open()
    todo = outputs.plan(pairs.names)
    log(f"registering {len(todo)} pair(s) with {prefix}")

    writer = _PairWriter(model, outputs, pairs.fixed_shape, inf)
    batch_size = int(inf["minibatch_size"])
    batch: list[InferencePair] = []
    for count, name in enumerate(todo, start=1):
        try:
            batch.append(pairs.load(name, normalise))
        except ItemFailure as failure:
            outputs.fail(name, failure)
        if batch and (len(batch) == batch_size or count == len(todo)):
            writer.run_batch(batch)
            batch = []
            log(f"processed {count}/{len(todo)}")
    return outputs.finish(pairs.names, METRIC_COLUMNS if pairs.both_labels else None,
                          int_columns=("label_index",))


def _pair_metrics(name: str, moving_labels: np.ndarray, fixed_labels: np.ndarray,
                  ddf: np.ndarray, warped_labels: np.ndarray, spacing: tuple[float, ...],
                  jacobian: dict[str, float]) -> list[dict[str, Any]]:
    """Per-label metrics of one pair; ``before`` samples the moving label with a zero DDF."""
    n = ddf.shape[-1]
    fixed = np.moveaxis(fixed_labels.reshape(*fixed_labels.shape[:n], -1), -1, 0)[..., None]
    after = np.moveaxis(warped_labels.reshape(*warped_labels.shape[:n], -1), -1, 0)[..., None]
    moving = np.moveaxis(moving_labels.reshape(*moving_labels.shape[:n], -1), -1, 0)[..., None]
    before = ops.warp(moving, np.zeros(fixed.shape[:-1] + (n,), np.float32)).numpy()
    spacing_b = np.tile(np.asarray(spacing, np.float32), (fixed.shape[0], 1))
    dice_before = metrics.dice(fixed, before).numpy()
    dice_after = metrics.dice(fixed, after).numpy()
    dist_before = metrics.centroid_distance(fixed, before, spacing=spacing_b).numpy()
    dist_after = metrics.centroid_distance(fixed, after, spacing=spacing_b).numpy()
    hd95_before = metrics.hausdorff95(fixed, before, spacing=spacing_b).numpy()
    hd95 = metrics.hausdorff95(fixed, after, spacing=spacing_b).numpy()
    return [
        {"case": name, "label_index": j, "dice_before": float(dice_before[j]),
         "dice": float(dice_after[j]), "centroid_distance_mm_before": float(dist_before[j]),
         "centroid_distance_mm": float(dist_after[j]),
         "hausdorff95_mm_before": float(hd95_before[j]), "hausdorff95_mm": float(hd95[j]),
         **jacobian}
        for j in range(fixed.shape[0])
    ]


def _write_overlay(path: Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray,
                   fixed_shape: tuple[int, ...], fixed_label: np.ndarray | None,
                   moving_label: np.ndarray | None, warped_label: np.ndarray | None,
                   spacing: Sequence[float] | None = None) -> None:
    """Write :func:`labelreg.visualise.overlay_figure` of one pair to ``path`` atomically.

    The moving image and label are first resized onto the fixed grid; ``spacing`` (the fixed
    image's voxel size in mm) draws the planes with their physical aspect ratio. The PNG goes to a
    temporary file in the same folder that replaces ``path`` only once it is complete.
    """
    def on_fixed_grid(volume: np.ndarray) -> np.ndarray:
        return ops.resize(volume[None, ..., None], fixed_shape).numpy()[0, ..., 0]

    picture = overlay_figure(
        fixed, on_fixed_grid(moving), warped, fixed_label,
        on_fixed_grid(moving_label) if moving_label is not None else None, warped_label,
        spacing=spacing)
    write_png(path, picture)
