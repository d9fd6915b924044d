"""Training speed and memory on the real-format MR/US sample.

Run: ``.venv/bin/python benchmarks/bench_training.py [--steps 20]``. Trains the configuration the
issue names (LocalNet c=32, minibatch 4, mrus shapes 69x69x64 -> 47x63x44, 6-scale Dice, bending
energy, augmentation on) through :func:`labelreg.engine.train` in a temporary run folder, and
prints steps per second, the share of step time spent waiting for input and the peak memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _timing import cpu_line, peak_rss_mib  # noqa: E402

from labelreg import config  # noqa: E402
from labelreg.engine import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--data", default=os.environ.get(
        "LABELREG_MRUS_SAMPLE", str(ROOT.parent / "shared" / "data" / "mrus-sample")))
    args = parser.parse_args()
    print(cpu_line())

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"Data.dir_moving_image={args.data}/moving_images",
            f"Data.dir_fixed_image={args.data}/fixed_images",
            f"Data.dir_moving_label={args.data}/moving_labels",
            f"Data.dir_fixed_label={args.data}/fixed_labels",
            f"Network.num_channel_initial={args.channels}",
            f"Train.minibatch_size={args.batch}",
            f"Train.total_iterations={args.steps}",
            f"Train.freq_info_print={args.steps}",
            f"Train.freq_model_save={args.steps}",
            f"Train.file_model_save={tmp}/run/model.ckpt",
            "Loss.similarity_scales=[0, 1, 2, 4, 8, 16]",
            "Loss.regulariser_type=bending",
        ]
        cfg = config.load(ROOT / "configs" / "mrus_sample.ini", overrides)
        result = train(cfg, log=lambda line: None)
    print(f"LocalNet c={args.channels}, minibatch {args.batch}, mrus shapes, 6-scale Dice + "
          f"bending, {args.steps} steps")
    print(f"steps per second: {1.0 / result.seconds_per_step:.3f} "
          f"({result.seconds_per_step:.2f} s per step, first step excluded)")
    print(f"waiting for input: {100 * result.input_share:.1f}% of step time")
    print(f"peak resident memory: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
