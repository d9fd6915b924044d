"""Where a trained CentroidAlignNet loses its landmark error, on a labelled data folder.

Run: ``.venv/bin/python benchmarks/centroid_bounds.py [RUN_OR_CHECKPOINT] DATA_DIR``, e.g.
``benchmarks/centroid_bounds.py runs/mrus/best ../shared/data/mrus-sample``, or without a
checkpoint (``benchmarks/centroid_bounds.py ../shared/data/mrus-sample``) for the rows that read
only the labels, in seconds.

``DATA_DIR`` holds the four folders ``moving_images``, ``fixed_images``, ``moving_labels``,
``fixed_labels`` (label 0 the gland, 1.. landmarks). Every case is registered up to six ways and
scored by :func:`labelreg.evaluation.evaluate` (median gland Dice and median landmark TRE in mm,
each case's TRE the mean over its landmarks):

- ``identity``: no registration;
- ``true translation``: the constant DDF of the difference of the two gland labels' soft
  centroids (it reads the labels, so it is a bound, not a result);
- ``overlap translation``: the whole-voxel translation that maximises the Dice of the two
  gland labels (searched within 8 voxels of the true translation), another way to align the
  glands;
- ``best translation``: the constant DDF that minimises the case's mean landmark TRE, the
  geometric median of its landmarks' centroid displacements (Weiszfeld's iteration, in mm): no
  translation does better on the TRE, however it is found;
- ``true translation + LocalNet``: the true translation, then the network's own LocalNet on the
  translated pair (a bound too);
- ``network translation``: the network's translation alone (``ddf - ddf_local``);
- ``network``: the whole network, as inference runs it.

Then, per image, the distance (mm) between the soft centroid of the network's segmentation
and that of the gland label, as a median over cases with the median signed error per axis, and
the median Dice of each segmentation (binary at 0.5). The gap between the ``true
translation`` rows and the network's is what better segmentations could win; the gap between
``true translation`` and ``true translation + LocalNet`` is what the deformation adds; the gap
between the gland rows (``true``, ``overlap``) and ``best translation`` is how far aligning the
gland, however well, lies from the landmarks' own shift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import signal

from labelreg import metrics, ops
from labelreg._tf import tf
from labelreg.data.nifti import PairedDataset
from labelreg.data.pipeline import read_case
from labelreg.evaluation import evaluate
from labelreg.infer import load_trained_model


def _landmark_centroids(labels: np.ndarray) -> np.ndarray:
    """Centroid (voxel indices) of each landmark ``labels[..., 1:] >= 0.5``, ``[L - 1, n]``;
    a row of NaN for an empty landmark (as :func:`labelreg.metrics.centroid_distance`)."""
    rows = []
    for index in range(1, labels.shape[-1]):
        inside = np.argwhere(labels[..., index] >= 0.5)
        rows.append(inside.mean(0) if len(inside) else np.full(labels.ndim - 1, np.nan))
    return np.asarray(rows, np.float64).reshape(-1, labels.ndim - 1)


def geometric_median(points: np.ndarray, iterations: int = 200, tol: float = 1e-7) -> np.ndarray:
    """The point minimising the summed Euclidean distance to ``points`` ``[k, n]`` (Weiszfeld).

    Starts from the mean (the minimiser for squared distances); a step that lands on one of the
    points stops there, which is the usual safeguard of the iteration.
    """
    estimate = points.mean(0)
    for _ in range(iterations):
        distance = np.linalg.norm(points - estimate, axis=1)
        if np.any(distance < tol):
            return points[np.argmin(distance)]
        weights = 1.0 / distance
        update = (weights[:, None] * points).sum(0) / weights.sum()
        if np.linalg.norm(update - estimate) < tol:
            return update
        estimate = update
    return estimate


def best_shifts(moving_labels: list[np.ndarray], fixed_labels: list[np.ndarray],
                spacing: np.ndarray) -> list[np.ndarray]:
    """Per case, the translation (fixed voxels, ``moving - fixed``) minimising the mean TRE.

    A constant DDF ``t`` moves each moving landmark centroid ``m`` to ``m - t``, so the case's
    TRE is the mean of ``|s * (m - f - t)|`` over its landmarks (``s`` the voxel size): its
    minimiser is the geometric median of the displacements ``s * (m - f)``, divided by ``s``.
    A case without a landmark found in both labels gets no shift.

    Args:
        moving_labels, fixed_labels: per case, the labels ``[*S, L]`` (label 0 the gland).
        spacing: ``[N, n]`` fixed voxel sizes (mm).
    """
    shifts = []
    for moving, fixed, size in zip(moving_labels, fixed_labels, spacing, strict=True):
        size = np.asarray(size, np.float64)
        displacement = (_landmark_centroids(moving) - _landmark_centroids(fixed)) * size
        found = displacement[np.all(np.isfinite(displacement), axis=1)]
        shifts.append(geometric_median(found) / size if len(found)
                      else np.zeros(size.shape))
    return shifts


def overlap_shifts(moving_labels: list[np.ndarray], fixed_labels: list[np.ndarray],
                   around: list[np.ndarray], radius: int = 8) -> list[np.ndarray]:
    """Per case, the whole-voxel translation ``t`` (``moving - fixed``, fixed voxels) within
    ``radius`` of ``around`` that maximises the gland (label 0) Dice on the fixed grid.

    With ``t``, fixed voxel ``x`` sees moving voxel ``x + t``: the overlap is the
    cross-correlation of the two masks at lag ``t``, and the moving gland's mass inside the
    fixed field of view its correlation with a box of the fixed shape (both by FFT), so
    ``Dice(t) = 2 overlap / (visible moving mass + fixed mass)``.
    """
    shifts = []
    for moving_label, fixed_label, centre in zip(moving_labels, fixed_labels, around,
                                                 strict=True):
        moving, fixed = ((label[..., 0] >= 0.5).astype(np.float64)
                         for label in (moving_label, fixed_label))
        overlap = signal.correlate(moving, fixed, mode="full", method="fft")
        visible = signal.correlate(moving, np.ones_like(fixed), mode="full", method="fft")
        dice = 2 * overlap / np.maximum(visible + fixed.sum(), 1e-9)
        lags = np.stack(np.meshgrid(*(np.arange(n) - (f - 1) for n, f in
                                      zip(dice.shape, fixed.shape, strict=True)),
                                    indexing="ij"), -1)  # [*Z, n]: t of each entry
        near = np.max(np.abs(lags - np.round(centre)), axis=-1) <= radius
        best = np.argmax(np.where(near, np.round(dice, 9), -1.0))
        shifts.append(lags.reshape(-1, lags.shape[-1])[best].astype(np.float64))
    return shifts


def _constant(fixed: tf.Tensor, shift: np.ndarray) -> tf.Tensor:
    """The DDF ``[1, *S, n]`` that is ``shift`` (voxels) everywhere on ``fixed``'s grid."""
    return tf.zeros_like(fixed[..., :1]) + tf.reshape(tf.constant(shift, tf.float32),
                                                      [1] * (1 + shift.size) + [-1])


def _ordered(shifts: list[np.ndarray], ddf_of_case: Callable) -> Callable:
    """``evaluate()`` registers the cases in order, one per call (batch size 1): hand each
    call its own case's shift."""
    remaining = iter(shifts)
    return lambda moving, fixed: ddf_of_case(moving, fixed, next(remaining))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a centroid_align run folder or checkpoint (omit for the rows "
                             "that read only the labels)")
    parser.add_argument("data", type=Path, help="folder of the four labelled data folders")
    args = parser.parse_args(argv)
    paired = PairedDataset(*(args.data / name for name in (
        "moving_images", "fixed_images", "moving_labels", "fixed_labels")))
    model, prefix = None, "labels only"
    if args.checkpoint is not None:
        model, _, prefix = load_trained_model(args.checkpoint)
        if not hasattr(model, "segmentations"):
            print(f"{prefix}: not a centroid_align network", file=sys.stderr)
            return 2
    spacing = paired.fixed_spacings(())
    # Every label file read once: the gland (label 0) and the landmarks of each case.
    labels = {role: [read_case(paired, f"{role}_label", case)
                     for case in range(paired.num_cases)] for role in ("moving", "fixed")}
    glands = {role: [tf.constant(label[None, ..., :1], tf.float32) for label in labels[role]]
              for role in labels}
    centres = {role: [ops.soft_centroid(g, 0.0).numpy()[0] for g in glands[role]]
               for role in glands}
    true_shift = [m - f for m, f in zip(centres["moving"], centres["fixed"], strict=True)]

    def constant(moving, fixed, shift):
        return _constant(fixed, shift)

    ways = {
        "identity": lambda moving, fixed: tf.zeros(
            [1, *fixed.shape[1:-1], fixed.shape.rank - 2]),
        "true translation": _ordered(true_shift, constant),
        "overlap translation": _ordered(
            overlap_shifts(labels["moving"], labels["fixed"], true_shift), constant),
        "best translation": _ordered(
            best_shifts(labels["moving"], labels["fixed"], spacing), constant),
    }
    if model is not None:
        def true_local(moving, fixed, shift):
            field = _constant(fixed, shift)
            return model.local_net([ops.warp(moving, field), fixed], training=False) + field

        def network_translation(moving, fixed):
            out = model.forward([moving, fixed], training=False)
            return out["ddf"] - out["ddf_local"]

        ways["true translation + LocalNet"] = _ordered(true_shift, true_local)
        ways["network translation"] = network_translation
        ways["network"] = lambda moving, fixed: model.forward([moving, fixed],
                                                              training=False)["ddf"]
    print(f"{prefix} on {paired.num_cases} cases of {args.data}")
    print(f"{'registration':30s} {'gland Dice':>10s} {'TRE (mm)':>9s}")
    for name, ddf_function in ways.items():
        summary = evaluate(ddf_function, paired, spacing=spacing).summary()
        print(f"{name:30s} {summary['dice_median']:10.3f} {summary['tre_mm_median']:9.2f}")
    if model is None:
        return 0

    errors: dict[str, list[np.ndarray]] = {"moving": [], "fixed": []}
    dice: dict[str, list[float]] = {"moving": [], "fixed": []}
    for case in range(paired.num_cases):
        images = [read_case(paired, role, case)[None, ..., None]
                  for role in ("moving_image", "fixed_image")]
        maps = model.segmentations(*(tf.constant(i, tf.float32) for i in images), training=False)
        for role in ("moving", "fixed"):
            segmentation = maps[f"{role}_segmentation"]
            centre = ops.soft_centroid(segmentation, 0.0).numpy()[0]
            size = np.asarray(paired.spacing(f"{role}_image", case))
            errors[role].append((centre - centres[role][case]) * size)
            dice[role].append(float(metrics.dice(segmentation, glands[role][case])[0]))
    for role in ("moving", "fixed"):
        signed = np.asarray(errors[role])
        distance = np.median(np.linalg.norm(signed, axis=1))
        print(f"{role} segmentation: centroid error median {distance:.2f} mm (signed per axis "
              f"{np.round(np.median(signed, 0), 2).tolist()} mm), Dice median "
              f"{np.median(dice[role]):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
