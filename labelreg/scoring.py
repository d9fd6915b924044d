"""Registration accuracy per pair: gland Dice and landmark TRE, beside the identity.

:func:`evaluate` registers every pair of a :class:`~labelreg.data.nifti.PairedDataset` with a
DDF function and reports, per case:

- **gland Dice**: label 0 of the fixed label and of the warped moving label, both binarised at
  0.5 (``>= 0.5``, as :func:`labelreg.metrics.dice`);
- **landmark TRE** (mm): for every landmark (label ``1..L-1``), the distance between the centroid
  of the fixed landmark and that of the warped moving landmark
  (:func:`labelreg.metrics.centroid_distance`, voxel indices scaled by the fixed image's voxel
  size); the case's TRE is the mean over its landmarks;
- both beside the **identity**: the moving label carried onto the fixed grid by a zero DDF,
  exactly as :func:`labelreg.networks.apply.register_pair` would (``out[x] = moving(x)``, voxel
  index for voxel index, zero outside the moving grid).

Landmark bookkeeping:

- a landmark whose *fixed* label has no voxel ``>= 0.5`` has no target; it is not counted;
- a counted landmark is **lost** when its warped moving label has no voxel ``>= 0.5`` left (it
  was moved out of the field of view, or interpolation spread it below the threshold), so it has
  no centroid; a lost landmark is left out of the TRE (of its case and of the pooled figures)
  and counted in ``lost``. The identity counts its own lost landmarks (``lost_identity``: those
  outside the fixed grid at the start), so each TRE is the mean over the landmarks it could
  place.

The table's CSV (:meth:`EvaluationTable.write_csv`, written through a temporary file and one
rename) has the columns :data:`EVALUATION_COLUMNS`, with two kinds of row:

- ``row = case``: one per case; ``label_index`` 0, ``dice*`` the gland's, ``tre_mm*`` the mean
  over the case's found landmarks (empty when there are none), ``landmarks`` the counted
  landmarks, ``lost`` / ``lost_identity`` how many of them were lost;
- ``row = landmark``: one per counted landmark; ``dice*`` that landmark's Dice, ``tre_mm*`` its
  TRE (empty when lost), ``landmarks`` 1 and ``lost*`` 0 or 1.

The printed table (:meth:`EvaluationTable.format`) lists the cases, then the median, first and
third quartile over cases of the gland Dice and the TRE, identity and registered side by side,
the same figures over all landmarks pooled, and the counted and lost landmarks. The command
``python -m labelreg.evaluation`` prints it for a trained run; the NIfTI data source's
validation (:mod:`labelreg.methods.sources`) reports the same figures during training.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelreg.data.nifti import PairedDataset
from labelreg.errors import DataError
from labelreg.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover - typing only; TensorFlow loads when evaluation runs
    from labelreg.data.pipeline import CaseCache

__all__ = [
    "EVALUATION_COLUMNS",
    "SUMMARY_FIGURES",
    "LabelResult",
    "CaseResult",
    "EvaluationTable",
    "evaluate",
    "label_results",
    "quartiles",
]

#: Columns of the evaluation CSV (see the module docstring).
EVALUATION_COLUMNS = ("case", "row", "label_index", "dice_identity", "dice", "tre_mm_identity",
                      "tre_mm", "landmarks", "lost", "lost_identity")

#: The figures :meth:`EvaluationTable.summary` gives the median and quartiles of: ``dice*`` and
#: ``tre_mm*`` over cases, ``tre_mm_all*`` over all found landmarks pooled.
SUMMARY_FIGURES = ("dice_identity", "dice", "tre_mm_identity", "tre_mm", "tre_mm_all_identity",
                   "tre_mm_all")

#: A voxel belongs to a label where the label is at least this (label-reg's level).
THRESHOLD = 0.5

_ROLES = ("moving_image", "fixed_image", "moving_label", "fixed_label")


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelResult:
    """One label of one case.

    Attributes:
        label_index: the index on the label files' 4th axis (0 = gland).
        dice, dice_identity: Dice of the fixed label and the warped (identity: zero-DDF) moving
            label, both binarised at 0.5; 1 when both are empty.
        distance_mm, distance_mm_identity: distance between their centroids (mm); NaN when
            either is empty.
        present: the fixed label has a voxel ``>= 0.5`` (a target to aim at).
        lost, lost_identity: present, but the warped (identity) moving label has none left.
    """

    label_index: int
    dice: float
    dice_identity: float
    distance_mm: float
    distance_mm_identity: float
    present: bool
    lost: bool
    lost_identity: bool


def _mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN (quietly) when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


@dataclass(frozen=True)
class CaseResult:
    """One pair: every label's :class:`LabelResult` and the per-case figures derived from them."""

    case: str
    labels: tuple[LabelResult, ...]

    @property
    def dice(self) -> float:
        """Gland (label 0) Dice after registration."""
        return self.labels[0].dice

    @property
    def dice_identity(self) -> float:
        """Gland (label 0) Dice with the zero DDF."""
        return self.labels[0].dice_identity

    @property
    def landmarks(self) -> list[LabelResult]:
        """The counted landmarks: labels 1.. whose fixed label is not empty."""
        return [label for label in self.labels[1:] if label.present]

    @property
    def tre_mm(self) -> float:
        """Mean TRE (mm) over the landmarks found after registration; NaN without any."""
        return _mean([label.distance_mm for label in self.landmarks if not label.lost])

    @property
    def tre_mm_identity(self) -> float:
        """Mean TRE (mm) over the landmarks found with the zero DDF; NaN without any."""
        return _mean([label.distance_mm_identity for label in self.landmarks
                      if not label.lost_identity])

    @property
    def lost(self) -> int:
        """Counted landmarks lost after registration."""
        return sum(label.lost for label in self.landmarks)

    @property
    def lost_identity(self) -> int:
        """Counted landmarks lost with the zero DDF."""
        return sum(label.lost_identity for label in self.landmarks)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """``(q1, median, q3)`` of the finite values (NumPy's linear percentiles); NaNs when none."""
    finite = np.asarray([v for v in values if math.isfinite(v)], np.float64)
    if finite.size == 0:
        return float("nan"), float("nan"), float("nan")
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return float(q1), float(median), float(q3)


def _text(value: float, digits: int) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


@dataclass
class EvaluationTable:
    """The results of :func:`evaluate`, one :class:`CaseResult` per pair, in case order."""

    rows: list[CaseResult] = field(default_factory=list)

    def figure(self, name: str) -> list[float]:
        """The values a summary figure is taken over: ``dice``, ``dice_identity``, ``tre_mm``,
        ``tre_mm_identity`` per case; ``tre_mm_all`` / ``tre_mm_all_identity`` per found
        landmark (NaN entries, e.g. a case without landmarks, are kept; the summary skips them)."""
        if name == "tre_mm_all":
            return [lm.distance_mm for row in self.rows for lm in row.landmarks if not lm.lost]
        if name == "tre_mm_all_identity":
            return [lm.distance_mm_identity for row in self.rows for lm in row.landmarks
                    if not lm.lost_identity]
        if name not in SUMMARY_FIGURES:
            raise ValueError(f"figure must be one of {SUMMARY_FIGURES}; received {name!r}.")
        return [getattr(row, name) for row in self.rows]

    def summary(self) -> dict[str, float]:
        """Median and quartiles of every figure, and the landmark counts.

        Returns:
            ``{f"{figure}_{stat}"}`` for each figure of :data:`SUMMARY_FIGURES` and stat
            ``median``, ``q1``, ``q3`` (Dice in [0, 1], TRE in mm; NaN when no value is
            finite), plus ``cases``, ``landmarks``, ``lost`` and ``lost_identity`` (counts).
        """
        out: dict[str, float] = {}
        for name in SUMMARY_FIGURES:
            q1, median, q3 = quartiles(self.figure(name))
            out.update({f"{name}_median": median, f"{name}_q1": q1, f"{name}_q3": q3})
        out["cases"] = float(len(self.rows))
        out["landmarks"] = float(sum(len(row.landmarks) for row in self.rows))
        out["lost"] = float(sum(row.lost for row in self.rows))
        out["lost_identity"] = float(sum(row.lost_identity for row in self.rows))
        return out

    def label_means(self) -> dict[str, float]:
        """Means over every label of every case, gland included (the figures validation gave
        before the gland/TRE split): ``dice_mean`` (Dice after registration) and
        ``centroid_distance_mm`` (centroid distance after registration, labels without a
        centroid left out)."""
        labels = [label for row in self.rows for label in row.labels]
        return {"dice_mean": _mean([label.dice for label in labels]),
                "centroid_distance_mm": _mean([label.distance_mm for label in labels])}

    def csv_rows(self) -> list[dict[str, Any]]:
        """The rows of the CSV (see the module docstring), case row first, then its landmarks."""
        rows: list[dict[str, Any]] = []
        for row in self.rows:
            rows.append({"case": row.case, "row": "case", "label_index": 0,
                         "dice_identity": row.dice_identity, "dice": row.dice,
                         "tre_mm_identity": row.tre_mm_identity, "tre_mm": row.tre_mm,
                         "landmarks": len(row.landmarks), "lost": row.lost,
                         "lost_identity": row.lost_identity})
            for lm in row.landmarks:
                rows.append({"case": row.case, "row": "landmark", "label_index": lm.label_index,
                             "dice_identity": lm.dice_identity, "dice": lm.dice,
                             "tre_mm_identity": lm.distance_mm_identity,
                             "tre_mm": lm.distance_mm, "landmarks": 1, "lost": int(lm.lost),
                             "lost_identity": int(lm.lost_identity)})
        return rows

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write :meth:`csv_rows` to ``path`` (floats with 6 significant digits, NaN as an empty
        cell), through a temporary file in the same folder and one rename."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(EVALUATION_COLUMNS))
        writer.writeheader()
        for row in self.csv_rows():
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        return atomic_write_text(path, buffer.getvalue())

    def format(self, title: str = "case") -> str:
        """The printed table: one line per case, then median / q1 / q3 over cases, the TRE over
        all landmarks pooled, and the landmark counts."""
        name_width = max([len(title), 8, *(len(row.case) for row in self.rows)])
        header = (f"{title:<{name_width}}  {'Dice id':>8}  {'Dice':>8}  {'TRE id mm':>9}  "
                  f"{'TRE mm':>9}  {'landmarks':>9}  {'lost':>4}")
        lines = [header, "-" * len(header)]
        for row in self.rows:
            lines.append(f"{row.case:<{name_width}}  {_text(row.dice_identity, 3):>8}  "
                         f"{_text(row.dice, 3):>8}  {_text(row.tre_mm_identity, 2):>9}  "
                         f"{_text(row.tre_mm, 2):>9}  {len(row.landmarks):>9}  {row.lost:>4}")
        lines.append("-" * len(header))
        summary = self.summary()
        for stat in ("median", "q1", "q3"):
            lines.append(
                f"{stat:<{name_width}}  {_text(summary[f'dice_identity_{stat}'], 3):>8}  "
                f"{_text(summary[f'dice_{stat}'], 3):>8}  "
                f"{_text(summary[f'tre_mm_identity_{stat}'], 2):>9}  "
                f"{_text(summary[f'tre_mm_{stat}'], 2):>9}")
        lines.append(
            f"TRE over all {int(summary['landmarks'])} landmarks (mm): identity median "
            f"{_text(summary['tre_mm_all_identity_median'], 2)} "
            f"[{_text(summary['tre_mm_all_identity_q1'], 2)}, "
            f"{_text(summary['tre_mm_all_identity_q3'], 2)}], registered median "
            f"{_text(summary['tre_mm_all_median'], 2)} [{_text(summary['tre_mm_all_q1'], 2)}, "
            f"{_text(summary['tre_mm_all_q3'], 2)}]")
        lines.append(
            f"landmarks: {int(summary['landmarks'])} counted, {int(summary['lost'])} lost after "
            f"registration, {int(summary['lost_identity'])} with the identity (lost landmarks "
            "are left out of the TRE)")
        return "\n".join(lines)


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6g}"
    return value


# -- evaluation ----------------------------------------------------------------------------------


def _case_spacings(paired: PairedDataset, spacing: Any) -> np.ndarray:
    """``spacing`` (None, ``n`` sizes, or ``[N, n]``) as float32 ``[N, n]``."""
    if spacing is None:
        return paired.fixed_spacings()
    values = np.asarray(spacing, np.float32)
    n, count = paired.ndim, paired.num_cases
    if values.shape == (n,):
        return np.tile(values, (count, 1))
    if values.shape != (count, n):
        raise ValueError(f"spacing must be {n} voxel sizes or an array [{count}, {n}] (one row "
                         f"per case); received shape {values.shape}.")
    return values


def _read_batches(paired: PairedDataset, batch_size: int, normalise: bool,
                  cache: CaseCache | None) -> Iterator[tuple[list[int], dict[str, list[np.ndarray]]]]:
    """Cases in order, ``batch_size`` at a time: ``(case indices, {role: arrays})`` with images
    ``[*S]`` and labels ``[*S, L]`` (float32), read from ``cache`` or file by file."""
    from labelreg.data.pipeline import read_case  # TensorFlow: loaded when scoring starts

    for start in range(0, paired.num_cases, batch_size):
        cases = list(range(start, min(start + batch_size, paired.num_cases)))
        yield cases, {role: [read_case(paired, role, case, normalise, cache) for case in cases]
                      for role in _ROLES}


def label_results(fixed: np.ndarray, warped: np.ndarray, identity: np.ndarray,
                   spacing: np.ndarray) -> list[LabelResult]:
    """Per label, Dice and centroid distance after registration and with the identity.

    Args:
        fixed, warped, identity: ``[*S_fix, L]`` labels on the fixed grid.
        spacing: ``[n]`` voxel size (mm) of the fixed image.
    """
    from labelreg import metrics  # TensorFlow: loaded when scoring starts

    def batch(labels: np.ndarray) -> np.ndarray:  # [*S, L] -> [L, *S, 1]: one label per sample
        return np.moveaxis(labels, -1, 0)[..., None]

    fixed_b, warped_b, identity_b = batch(fixed), batch(warped), batch(identity)
    sizes = np.tile(spacing, (fixed_b.shape[0], 1))
    axes = tuple(range(1, fixed_b.ndim))
    present = np.any(fixed_b >= THRESHOLD, axis=axes)
    found = np.any(warped_b >= THRESHOLD, axis=axes)
    found_identity = np.any(identity_b >= THRESHOLD, axis=axes)
    dice = metrics.dice(fixed_b, warped_b, threshold=THRESHOLD).numpy()
    dice_identity = metrics.dice(fixed_b, identity_b, threshold=THRESHOLD).numpy()
    distance = metrics.centroid_distance(fixed_b, warped_b, spacing=sizes,
                                         threshold=THRESHOLD).numpy()
    distance_identity = metrics.centroid_distance(fixed_b, identity_b, spacing=sizes,
                                                  threshold=THRESHOLD).numpy()
    return [LabelResult(label_index=j, dice=float(dice[j]), dice_identity=float(dice_identity[j]),
                        distance_mm=float(distance[j]),
                        distance_mm_identity=float(distance_identity[j]),
                        present=bool(present[j]), lost=bool(present[j] and not found[j]),
                        lost_identity=bool(present[j] and not found_identity[j]))
            for j in range(fixed_b.shape[0])]


def evaluate(
    ddf_function: Callable[[Any, Any], Any],
    paired: PairedDataset,
    spacing: Any = None,
    normalise: bool = True,
    batch_size: int = 1,
    label_interpolation: str = "linear",
    cache: CaseCache | None = None,
    log: Callable[[str], None] | None = None,
) -> EvaluationTable:
    """Register every pair of ``paired`` and measure gland Dice and landmark TRE.

    The network runs once per batch of cases; each case's labels (all ``L`` of them as channels)
    are then warped by its DDF and by a zero DDF (the identity) with
    :func:`labelreg.networks.apply.register_pair`.

    Args:
        ddf_function: ``(moving [B, *S_mov, 1], fixed [B, *S_fix, 1]) -> ddf [B, *S_fix, n]``,
            displacements in moving-image voxels (e.g.
            :func:`labelreg.networks.apply.network_ddf` of a trained model, or any callable).
        paired: the pairs, with labels (index 0 = gland, 1.. = landmarks).
        spacing: voxel size (mm) of the fixed images: ``None`` (each fixed image's header),
            ``n`` sizes for every case, or ``[N, n]``.
        normalise: min-max normalise each image to [0, 1] first (as the model was trained).
        batch_size: cases per network call.
        label_interpolation: ``"linear"`` or ``"nearest"`` warping of the labels (thresholded
            at 0.5 afterwards either way).
        cache: ``paired`` already read into memory (a
            :class:`labelreg.data.pipeline.CaseCache` of it, whose own normalisation then
            applies); ``None`` reads the files batch by batch.
        log: where a progress line per batch goes (``None``: nowhere).

    Returns:
        The :class:`EvaluationTable`, one row per case in ``paired``'s order.

    Raises:
        DataError: ``paired`` has no labels, or a file is unreadable or a label lies outside
            [0, 1].
        ValueError: ``batch_size`` < 1 or a malformed ``spacing``.
    """
    # TensorFlow is loaded here, not at import, so the commands fail fast on bad input.
    from labelreg._tf import tf
    from labelreg.networks.apply import register_pair

    if not paired.has_labels:
        raise DataError(f"{paired.moving_image.directory}: evaluation needs moving and fixed "
                        "labels (label 0 the gland, 1.. landmarks); none were given.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; received batch_size={batch_size}.")
    spacings = _case_spacings(paired, spacing)
    table = EvaluationTable()
    for cases, data in _read_batches(paired, int(batch_size), normalise, cache):
        moving = tf.constant(np.stack(data["moving_image"])[..., None], tf.float32)
        fixed = tf.constant(np.stack(data["fixed_image"])[..., None], tf.float32)
        ddf = tf.convert_to_tensor(ddf_function(moving, fixed), tf.float32)
        zero = tf.zeros_like(ddf[:1])
        for i, case in enumerate(cases):
            moving_label = data["moving_label"][i][None]  # [1, *S_mov, L]
            pair = (moving[i:i + 1], fixed[i:i + 1])
            # Labels differ in count between cases, so each case is warped on its own with its
            # slice of the batch's DDF (the network already ran once for the batch).
            after = register_pair(lambda m, f, d=ddf[i:i + 1]: d, *pair, moving_label,
                                  label_interpolation=label_interpolation, warp_image=False)
            before = register_pair(lambda m, f, d=zero: d, *pair, moving_label,
                                   label_interpolation=label_interpolation, warp_image=False)
            labels = label_results(data["fixed_label"][i], after["warped_label"].numpy()[0],
                                    before["warped_label"].numpy()[0], spacings[case])
            table.rows.append(CaseResult(paired.names[case], tuple(labels)))
        if log is not None:
            log(f"evaluated {len(table.rows)}/{paired.num_cases}")
    return table
