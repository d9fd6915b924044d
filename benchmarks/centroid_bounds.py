"""Where a trained CentroidAlignNet loses its landmark error, on a labelled data folder.

Run: ``.venv/bin/python benchmarks/centroid_bounds.py RUN_OR_CHECKPOINT DATA_DIR``, e.g.
``benchmarks/centroid_bounds.py runs/mrus/best ../shared/data/mrus-sample``.

``DATA_DIR`` holds the four folders ``moving_images``, ``fixed_images``, ``moving_labels``,
``fixed_labels`` (label 0 the gland, 1.. landmarks). Every case is registered five ways and
scored by :func:`labelreg.evaluation.evaluate` (median gland Dice and median landmark TRE in mm,
each case's TRE the mean over its landmarks):

- ``identity``: no registration;
- ``true translation``: the constant DDF of the difference of the two gland labels' soft
  centroids (it reads the labels, so it is a bound, not a result);
- ``true translation + LocalNet``: that translation, then the network's own LocalNet on the
  translated pair (a bound too);
- ``network translation``: the network's translation alone (``ddf - ddf_local``);
- ``network``: the whole network, as inference runs it.

Then, per image, the distance (mm) between the soft centroid of the network's segmentation
and that of the gland label, as a median over cases with the median signed error per axis, and
the median Dice of each segmentation (binary at 0.5). The gap between the ``true
translation`` rows and the network's is what better segmentations could win; the gap between
``true translation`` and ``true translation + LocalNet`` is what the deformation adds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from labelreg import metrics, ops
from labelreg._tf import tf
from labelreg.data.nifti import PairedDataset
from labelreg.data.pipeline import read_case
from labelreg.evaluation import evaluate
from labelreg.infer import load_trained_model


def _glands(paired: PairedDataset, role: str) -> list[tf.Tensor]:
    """Label 0 of every case's ``role`` label, ``[1, *S, 1]`` float32, read once."""
    return [tf.constant(read_case(paired, role, case)[None, ..., :1], tf.float32)
            for case in range(paired.num_cases)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a centroid_align run folder or checkpoint")
    parser.add_argument("data", type=Path, help="folder of the four labelled data folders")
    args = parser.parse_args(argv)
    paired = PairedDataset(*(args.data / name for name in (
        "moving_images", "fixed_images", "moving_labels", "fixed_labels")))
    model, _, prefix = load_trained_model(args.checkpoint)
    if not hasattr(model, "segmentations"):
        print(f"{prefix}: not a centroid_align network", file=sys.stderr)
        return 2
    spacing = paired.fixed_spacings(())
    glands = {role: _glands(paired, f"{role}_label") for role in ("moving", "fixed")}
    centres = {role: [ops.soft_centroid(g, 0.0).numpy()[0] for g in glands[role]]
               for role in glands}
    moving_centres, fixed_centres = centres["moving"], centres["fixed"]
    true_shift = [m - f for m, f in zip(moving_centres, fixed_centres, strict=True)]

    def ordered(ddf_of_case: Callable[[tf.Tensor, tf.Tensor, np.ndarray], tf.Tensor]):
        # evaluate() registers the cases in order, one per call (batch size 1).
        shifts = iter(true_shift)
        return lambda moving, fixed: ddf_of_case(moving, fixed, next(shifts))

    def constant(fixed: tf.Tensor, shift: np.ndarray) -> tf.Tensor:
        return tf.zeros_like(fixed[..., :1]) + tf.reshape(tf.constant(shift, tf.float32),
                                                          [1] * (1 + shift.size) + [-1])

    def true_local(moving, fixed, shift):
        field = constant(fixed, shift)
        return model.local_net([ops.warp(moving, field), fixed], training=False) + field

    def network_translation(moving, fixed):
        out = model.forward([moving, fixed], training=False)
        return out["ddf"] - out["ddf_local"]

    ways = {
        "identity": lambda moving, fixed: tf.zeros(
            [1, *fixed.shape[1:-1], fixed.shape.rank - 2]),
        "true translation": ordered(lambda moving, fixed, shift: constant(fixed, shift)),
        "true translation + LocalNet": ordered(true_local),
        "network translation": network_translation,
        "network": lambda moving, fixed: model.forward([moving, fixed], training=False)["ddf"],
    }
    print(f"{prefix} on {paired.num_cases} cases of {args.data}")
    print(f"{'registration':30s} {'gland Dice':>10s} {'TRE (mm)':>9s}")
    for name, ddf_function in ways.items():
        summary = evaluate(ddf_function, paired, spacing=spacing).summary()
        print(f"{name:30s} {summary['dice_median']:10.3f} {summary['tre_mm_median']:9.2f}")

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
