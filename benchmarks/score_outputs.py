"""Gland Dice and landmark TRE of an inference output folder, by the rules of labelreg.scoring.

For methods whose ``inference.py`` writes warped labels but scores them its own way (learnsim:
mean Dice over labels and surface distance), this scores each case's ``warped_label.nii.gz``
(on the fixed grid) against the fixed labels as ``python -m labelreg.evaluation`` does:
threshold 0.5, label 0 the gland, landmark centroid distances in mm of the fixed image. The
starting point given beside it is the moving labels resized onto the fixed grid (what learnsim
registers from), or the voxel-index identity with ``--start crop``.

    python benchmarks/score_outputs.py runs/learnsim_mrus/inference ../shared/data/mrus-sample
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from labelreg import ops  # noqa: E402
from labelreg.scoring import CaseResult, EvaluationTable, label_results  # noqa: E402


def _labels(path: Path) -> np.ndarray:
    data = np.asarray(nib.load(path).dataobj, np.float32)
    return data[..., None] if data.ndim == 3 else data


def _line(name: str, table: EvaluationTable) -> str:
    s = table.summary()
    return (f"{name}: gland Dice {s['dice_median']:.3f} [{s['dice_q1']:.3f}, {s['dice_q3']:.3f}]"
            f"  TRE {s['tre_mm_median']:.2f} [{s['tre_mm_q1']:.2f}, {s['tre_mm_q3']:.2f}] mm"
            f"  ({int(s['cases'])} cases, {int(s['lost'])} of {int(s['landmarks'])} landmarks "
            "lost)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outputs", type=Path, help="folder with one sub-folder per case")
    parser.add_argument("data", type=Path, help="folder with fixed_labels/ and moving_labels/")
    parser.add_argument("--start", choices=("resize", "crop"), default="resize")
    args = parser.parse_args()
    cases = sorted(p.name for p in args.outputs.iterdir()
                   if (p / "warped_label.nii.gz").is_file())
    if not cases:
        raise SystemExit(f"{args.outputs}: no <case>/warped_label.nii.gz found")
    after, start = EvaluationTable(), EvaluationTable()
    for case in cases:
        fixed_file = args.data / "fixed_labels" / f"{case}.nii.gz"
        fixed = _labels(fixed_file)
        spacing = np.asarray(nib.load(fixed_file).header.get_zooms()[:3], np.float32)
        warped = _labels(args.outputs / case / "warped_label.nii.gz")
        moving = _labels(args.data / "moving_labels" / f"{case}.nii.gz")[None]
        if args.start == "resize":
            begin = ops.resize(moving, fixed.shape[:-1]).numpy()[0]
        else:
            begin = ops.warp(moving, np.zeros((1, *fixed.shape[:-1], 3), np.float32)).numpy()[0]
        labels = label_results(fixed, warped, begin, spacing)
        after.rows.append(CaseResult(case, tuple(labels)))
        start.rows.append(CaseResult(case, tuple(label_results(fixed, begin, begin, spacing))))
    print(_line(f"start ({args.start})", start))
    print(_line(str(args.outputs), after))


if __name__ == "__main__":
    main()
