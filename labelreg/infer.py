"""Inference behind ``python inference.py config.ini``: register test pairs and write the results.

For every pair the network predicts the DDF from the two images alone. Written per case, in the
folder ``<dir_save>/<case>/``, all in the FIXED image's space with its affine and header:

- ``ddf.nii.gz``: ``[*S_fix, n]`` float32 displacement in moving-image voxels;
- ``warped_image.nii.gz``: the moving image warped onto the fixed grid (linear);
- ``warped_label.nii.gz``: every moving label (``[*S_fix, L]``), when moving labels are given;
- ``overlay.png``: the orthogonal mid-planes of fixed | moving | warped | a fixed/warped
  checkerboard, with label contours and a legend (``save_png``; :mod:`labelreg.visualise`).

With fixed labels, ``<dir_save>/metrics.csv`` has one row per pair and label: Dice, centroid
distance (mm) and Hausdorff-95 (mm) before (zero DDF) and after registration, and the DDF's
folding ratio and Jacobian statistics. Everything is first written into a staging folder and
moved into place only when every pair has succeeded, so a failure leaves no partial output.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import nibabel as nib
import numpy as np

from labelreg import metrics, ops
from labelreg.config import Config
from labelreg.data import NiftiReader, PairedDataset
from labelreg.data.pipeline import normalise_intensity
from labelreg.engine.checkpoints import load_trained_run
from labelreg.errors import DataError
from labelreg.networks.apply import network_ddf, register_pair
from labelreg.visualise import overlay_figure

__all__ = ["InferenceResult", "infer", "load_trained_model", "METRIC_COLUMNS", "write_metrics_csv", "nifti_image",
           "publish_staged"]

METRIC_COLUMNS = (
    "case", "label_index", "dice_before", "dice", "centroid_distance_mm_before",
    "centroid_distance_mm", "hausdorff95_mm_before", "hausdorff95_mm", "folding_ratio",
    "jacobian_mean", "jacobian_std", "log_jacobian_var",
)


@dataclass
class InferenceResult:
    """What a call to :func:`infer` wrote and measured."""

    dir_save: Path
    cases: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, column: str, label_index: int | None = 0) -> float:
        """Mean of a metrics column over the pairs (of one label index, default the gland)."""
        values = [r[column] for r in self.rows
                  if label_index is None or r["label_index"] == label_index]
        return float(np.nanmean(values)) if values else float("nan")


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


def nifti_image(data: np.ndarray, affine: np.ndarray, header: Any) -> nib.Nifti1Image:
    """A float32 NIfTI image with the given affine (as qform and sform) and header."""
    header = header.copy() if header is not None else None
    image = nib.Nifti1Image(data.astype(np.float32), affine, header)
    image.set_data_dtype(np.float32)
    image.header.set_qform(affine, code=int(header["qform_code"]) if header is not None else 1)
    image.header.set_sform(affine, code=int(header["sform_code"]) if header is not None else 1)
    return image


def _check_writable(dir_save: Path) -> None:
    """Fail before any work when ``dir_save`` cannot be created or written."""
    ancestor = dir_save
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = None
    if not ancestor.is_dir():
        problem = f"{ancestor} is not a folder"
    else:
        try:
            with tempfile.TemporaryFile(dir=ancestor):
                pass
        except OSError as err:
            problem = f"{ancestor} is not writable ({err.strerror})"
    if problem:
        raise DataError(
            f"{dir_save}: cannot write the output folder ([Inference] dir_save): {problem}."
        )


def infer(cfg: Config, log: Callable[[str], None] = print) -> InferenceResult:
    """Register every test pair of ``[Inference]`` and write the outputs (see module docstring).

    Raises:
        DataError: missing or unreadable inputs or checkpoint, or an unwritable ``dir_save``.
    """
    inf = cfg["Inference"]
    dir_save = Path(inf["dir_save"])
    _check_writable(dir_save)
    model, meta, prefix = load_trained_model(inf["file_model_saved"])
    normalise = bool(meta.get("normalise", True))
    both_labels = inf["dir_moving_label"] is not None and inf["dir_fixed_label"] is not None
    paired = PairedDataset(inf["dir_moving_image"], inf["dir_fixed_image"],
                           inf["dir_moving_label"] if both_labels else None,
                           inf["dir_fixed_label"] if both_labels else None)
    moving_labels = None
    if inf["dir_moving_label"] is not None and not both_labels:
        moving_labels = NiftiReader(inf["dir_moving_label"])
        missing = sorted(set(paired.names) - set(moving_labels.names))
        if missing:
            raise DataError(f"{inf['dir_moving_label']}: no label file for case(s) {missing[:5]}.")
    if paired.ndim != model.ndim:
        raise DataError(
            f"{inf['dir_fixed_image']}: {paired.ndim}-D images, but the model in {prefix} is "
            f"{model.ndim}-D."
        )
    log(f"registering {paired.num_cases} pair(s) with {prefix}")

    dir_save.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dir_save.name}.partial-", dir=dir_save.parent))
    result = InferenceResult(dir_save=dir_save, cases=list(paired.names))
    interpolation = inf["label_interpolation"]
    try:
        batch_size = int(inf["minibatch_size"])
        for start in range(0, paired.num_cases, batch_size):
            cases = list(range(start, min(start + batch_size, paired.num_cases)))
            moving = [paired.read("moving_image", c)[..., 0] for c in cases]
            fixed = [paired.read("fixed_image", c)[..., 0] for c in cases]
            if normalise:
                moving = [normalise_intensity(m) for m in moving]
                fixed = [normalise_intensity(f) for f in fixed]
            moving_t = np.stack(moving)[..., None]
            fixed_t = np.stack(fixed)[..., None]
            out = register_pair(network_ddf(model), moving_t, fixed_t)
            ddf, warped = out["ddf"], out["warped_moving_image"].numpy()
            jacobian = {k: v.numpy() for k, v in metrics.jacobian_statistics(ddf).items()}
            ddf = ddf.numpy()
            for i, case in enumerate(cases):
                name = paired.names[case]
                out = staging / name
                out.mkdir()
                affine = paired.affine("fixed_image", case)
                header = paired.header("fixed_image", case)
                nib.save(nifti_image(ddf[i], affine, header), out / "ddf.nii.gz")
                nib.save(nifti_image(warped[i, ..., 0], affine, header),
                         out / "warped_image.nii.gz")
                labels = None
                if both_labels:
                    labels = paired.read("moving_label", case)
                elif moving_labels is not None:
                    labels = moving_labels.read(moving_labels.names.index(name))
                warped_labels = None
                if labels is not None:
                    # [*S_mov, L] -> one batch of L channels warped by this pair's DDF.
                    stacked = labels[None] if labels.ndim == paired.ndim + 1 else labels[None, ..., None]
                    warped_labels = ops.warp(stacked, ddf[i:i + 1],
                                             interpolation=interpolation).numpy()[0]
                    nib.save(nifti_image(warped_labels, affine, header),
                             out / "warped_label.nii.gz")
                if both_labels:
                    result.rows.extend(_pair_metrics(
                        name, labels, paired.read("fixed_label", case), ddf[i],
                        warped_labels, paired.spacing("fixed_image", case),
                        {k: float(v[i]) for k, v in jacobian.items()}))
                if inf["save_png"]:
                    _write_overlay(out / "overlay.png", fixed[i], moving[i], warped[i, ..., 0],
                                   paired.fixed_shape,
                                   fixed_label=paired.read("fixed_label", case)[..., 0]
                                   if both_labels else None,
                                   moving_label=labels[..., 0] if labels is not None else None,
                                   warped_label=warped_labels[..., 0]
                                   if warped_labels is not None else None,
                                   spacing=paired.spacing("fixed_image", case))
            log(f"registered {min(start + batch_size, paired.num_cases)}/{paired.num_cases}")
        if result.rows:
            write_metrics_csv(staging / "metrics.csv", result.rows)
        publish_staged(staging, dir_save)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


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


def write_metrics_csv(path: Path, rows: list[dict[str, Any]],
                      columns: Sequence[str] = METRIC_COLUMNS) -> None:
    """One row per dict, floats with 6 significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _write_overlay(path: Path, fixed: np.ndarray, moving: np.ndarray, warped: np.ndarray,
                   fixed_shape: tuple[int, ...], fixed_label: np.ndarray | None,
                   moving_label: np.ndarray | None, warped_label: np.ndarray | None,
                   spacing: Sequence[float] | None = None) -> None:
    """Write :func:`labelreg.visualise.overlay_figure` of one pair to ``path`` atomically.

    The moving image and label are first resized onto the fixed grid; ``spacing`` (the fixed
    image's voxel size in mm) draws the planes with their physical aspect ratio. The PNG goes to a
    temporary file in the same folder that replaces ``path`` only once it is complete.
    """
    from PIL import Image

    def on_fixed_grid(volume: np.ndarray) -> np.ndarray:
        return ops.resize(volume[None, ..., None], fixed_shape).numpy()[0, ..., 0]

    picture = overlay_figure(
        fixed, on_fixed_grid(moving), warped, fixed_label,
        on_fixed_grid(moving_label) if moving_label is not None else None, warped_label,
        spacing=spacing)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(partial, "xb") as stream:
            Image.fromarray(picture).save(stream, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def publish_staged(staging: Path, dir_save: Path) -> None:
    """Move the staged per-case folders and files into ``dir_save`` (replacing old results)."""
    dir_save.mkdir(parents=True, exist_ok=True)
    for item in sorted(staging.iterdir()):
        target = dir_save / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
