"""The multi-scale label loss: Gaussian smoothing as banded-matrix products against convolutions.

Run: ``.venv/bin/python benchmarks/bench_label_loss.py [--repeats 10]``. For each shape (the
demo's and the mrus fixed grid ``47 x 63 x 44`` at minibatch 2, and ``128^3`` at minibatch 1)
it times, in a ``tf.function``, the forward and backward pass of

- one Gaussian smoothing per sigma (1, 2, 4, 8, 16 voxels), and
- label-reg's multi-scale Dice loss (sigmas 0, 1, 2, 4, 8, 16) of a warped label against a
  fixed one, differentiated by the warped label (what a training step does),

once with the spatial sizes known when the graph is built (``ops.gaussian_filter`` then uses
one banded-matrix product per axis) and once with them unknown (the same function falls back
to single-channel 1-D convolutions). Both give the same values to float32 rounding.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import cpu_line, row, time_call  # noqa: E402

import labelreg  # noqa: E402, F401  (before TensorFlow: oneDNN)
from labelreg import ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402
from labelreg.losses.label import multi_scale_dice_loss  # noqa: E402

SHAPES = ((2, 47, 63, 44, 1), (1, 128, 128, 128, 1))
SIGMAS = (1, 2, 4, 8, 16)
WIDTHS = (44, 16, 16, 8)


def compiled(fn, shape: tuple[int, ...], static: bool):
    """``fn(x, weights) -> gradient by x`` traced with static or unknown spatial sizes."""
    spec_shape = shape if static else (None, *[None] * (len(shape) - 2), shape[-1])
    spec = tf.TensorSpec(spec_shape, tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def step(x: tf.Tensor, other: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(fn(x, other))
        return tape.gradient(total, x)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(cpu_line())
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = tf.constant(rng.uniform(size=shape).astype(np.float32))
        other = tf.constant((rng.uniform(size=shape) > 0.5).astype(np.float32))
        print(f"\nforward + backward on {list(shape)}, median ms of {args.repeats}")
        print(row("what", "banded matrices", "convolutions", "ratio", widths=WIDTHS))
        cases = [(f"gaussian_filter, sigma {s}", lambda a, b, s=s: ops.gaussian_filter(a, s) * b)
                 for s in SIGMAS]
        cases.append(("multi-scale Dice, sigmas 0-16",
                      lambda a, b: multi_scale_dice_loss(b, a)))
        for name, fn in cases:
            times = []
            for static in (True, False):
                step = compiled(fn, shape, static)
                times.append(time_call(lambda step=step, x=x, other=other: step(x, other).numpy(),
                                       repeats=args.repeats)["median"])
            print(row(name, times[0], times[1], f"{times[1] / times[0]:.1f}x", widths=WIDTHS))


if __name__ == "__main__":
    main()
