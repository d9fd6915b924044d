"""Image-driven registration on generated 2-D TIFF stacks with each image similarity.

Trains the DeepSim feature extractor (``configs/deepsim_features.ini``), then one registration
network per similarity (``configs/deepsim_registration.ini``) for the same number of steps with
the paper's PhC-U373 lambda, and prints the mean Dice (classes including background, and
foreground only) and the folding ratio of the consecutive test frames before and after; then the
training speed for 256 x 256 frames, batch 4.

    python benchmarks/bench_similarities.py [--steps 300] [--out runs/bench_similarities]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._timing import cpu_line  # noqa: E402
from labelreg.cli import infer_main  # noqa: E402
from labelreg.engine import train  # noqa: E402
from labelreg.methods.registry import load_config  # noqa: E402

#: The paper's lambda for PhC-U373 (scripts/train_registration.sh).
PHC_LAMBDA = {"ssd": 0.005, "lncc": 0.25, "nmi": 0.5, "mind": 0.03125, "deepsim": 0.125}


def _mean(rows: list[dict[str, str]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_similarities"))
    parser.add_argument("--speed-steps", type=int, default=5)
    args = parser.parse_args(argv)
    print(cpu_line())
    out = Path(args.out)
    common = [f"Train.total_iterations={args.steps}", f"Train.freq_model_save={args.steps}",
              f"Data.dir_stacks={out / 'stacks'}", "Train.freq_info_print=1000000"]
    features = out / "features"
    _, cfg = load_config(ROOT / "configs" / "deepsim_features.ini",
                         [*common, f"Train.dir_run={features}"])
    train(cfg, log=lambda line: None)
    print(f"{args.steps} training steps per network, 128 x 128 frames, batch 4, 2 CPU cores")
    print(f"{'similarity':<10}{'lambda':>9}{'Dice before':>13}{'Dice after':>12}"
          f"{'fg before':>11}{'fg after':>10}{'folding':>10}{'s/step':>8}")
    registration = ROOT / "configs" / "deepsim_registration.ini"
    for name, weight in PHC_LAMBDA.items():
        run = out / name
        overrides = [*common, f"Train.dir_run={run}", f"Loss.image_loss_type={name}",
                     f"Loss.regulariser_weight={weight}", f"Loss.feature_extractor={features}",
                     f"Inference.dir_save={run / 'inference'}"]
        _, cfg = load_config(registration, overrides)
        result = train(cfg, log=lambda line: None)
        infer_main([str(registration), *[arg for o in overrides for arg in ("--set", o)]])
        with open(run / "inference" / "metrics.csv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        print(f"{name:<10}{weight:>9g}{_mean(rows, 'dice_before'):>13.4f}"
              f"{_mean(rows, 'dice'):>12.4f}{_mean(rows, 'dice_foreground_before'):>11.4f}"
              f"{_mean(rows, 'dice_foreground'):>10.4f}{_mean(rows, 'folding_ratio'):>10.4f}"
              f"{result.seconds_per_step:>8.3f}")

    # Speed at the size the issue names: 256 x 256 frames, batch 4.
    for name in ("ssd", "deepsim"):
        run = out / f"speed_{name}"
        _, cfg = load_config(registration, [
            *common, f"Data.dir_stacks={out / 'stacks256'}", "Data.synthetic_size=[256, 256]",
            f"Train.total_iterations={args.speed_steps + 1}", f"Train.dir_run={run}",
            f"Train.freq_model_save={10 ** 6}", f"Loss.image_loss_type={name}",
            f"Loss.feature_extractor={features}"])
        start = time.perf_counter()
        result = train(cfg, log=lambda line: None)
        print(f"256 x 256, batch 4, {name}: {1.0 / result.seconds_per_step:.2f} steps/s "
              f"({time.perf_counter() - start:.0f} s with tracing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
