"""learnsim: the learned SSD metric against plain SSD on generated 3-D atlas pairs.

Trains the metric (``configs/learnsim.ini``), then registers every pair with the variational
posterior twice, once with the learned metric and once with plain SSD (the initial metric), and
prints Dice and average surface distance before and after, and the time per pair; writes a
mid-slice picture of one pair's uncertainty map to ``docs/images/learnsim_uncertainty.png``.

    python benchmarks/bench_learnsim.py [--steps 8] [--iterations 150] [--out runs/bench_learnsim]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks._timing import cpu_line  # noqa: E402
from labelreg.cli import infer_main  # noqa: E402
from labelreg.engine import train  # noqa: E402
from labelreg.methods.registry import load_config  # noqa: E402


def _window(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [1, 99])
    return np.clip((image - low) / max(high - low, 1e-9), 0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_learnsim"))
    args = parser.parse_args(argv)
    print(cpu_line())
    out = Path(args.out)
    config = ROOT / "configs" / "learnsim.ini"
    common = [f"Train.total_iterations={args.steps}", f"Train.freq_model_save={args.steps}",
              f"Variational.iterations={args.iterations}", f"Data.dir_synthetic={out / 'data'}",
              f"Train.dir_run={out / 'run'}", "Train.freq_info_print=1000000"]
    _, cfg = load_config(config, common)
    result = train(cfg, log=lambda line: None)
    print(f"metric trained {args.steps} steps ({result.seconds_per_step:.1f} s per step of "
          f"{args.iterations} posterior iterations on a batch of "
          f"{cfg['Train']['minibatch_size']}); {cfg['Data']['synthetic_cases']} pairs of "
          f"{'x'.join(map(str, cfg['Data']['synthetic_size']))} voxels")
    print(f"{'metric':<10}{'Dice before':>13}{'Dice after':>12}{'ASD before':>12}"
          f"{'ASD after':>11}{'s/pair':>8}")
    for name, learned in (("learned", "true"), ("SSD", "false")):
        save = out / f"inference_{name}"
        infer_main([str(config), *[a for o in common for a in ("--set", o)],
                    "--set", f"Inference.learned={learned}", "--set", f"Inference.dir_save={save}"])
        with open(save / "metrics.csv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        mean = {k: np.mean([float(r[k]) for r in rows]) for k in rows[0] if k != "case"}
        print(f"{name:<10}{mean['dice_before']:>13.4f}{mean['dice']:>12.4f}"
              f"{mean['asd_mm_before']:>12.3f}{mean['asd_mm']:>11.3f}{mean['seconds']:>8.1f}")
    # The uncertainty map of the first pair (learned metric): mid-slice of |std| of the DDF.
    case = out / "inference_learned" / "case000"
    fixed = nib.load(out / "data" / "fixed_images" / "case000.nii.gz").get_fdata()
    warped = nib.load(case / "warped_image.nii.gz").get_fdata()
    std = np.linalg.norm(nib.load(case / "ddf_std.nii.gz").get_fdata(), axis=-1)
    mid = fixed.shape[-1] // 2
    panels = [_window(fixed[..., mid]), _window(warped[..., mid]),
              std[..., mid] / max(float(std.max()), 1e-9)]
    picture = np.concatenate([np.kron(p, np.ones((8, 8))) for p in panels], axis=1)
    target = ROOT / "docs" / "images" / "learnsim_uncertainty.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((picture * 255).astype(np.uint8)).save(target)
    print(f"uncertainty picture (fixed | warped | std of the displacement, max "
          f"{float(std.max()):.2f} voxels): {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
