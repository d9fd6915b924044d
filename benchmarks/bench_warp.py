"""Warp speed: labelreg.warp (XLA and plain graph) against scipy.ndimage.map_coordinates.

Run: ``.venv/bin/python benchmarks/bench_warp.py [--size 128] [--batch 2]``. Prints milliseconds per
call (median over repeats) for a random field of up to +-5 voxels on a ``[B, S, S, S, 1]`` volume.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import cpu_line, row, time_call  # noqa: E402
from scipy import ndimage  # noqa: E402

import labelreg  # noqa: E402
from labelreg import ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402

WIDTHS = (54, 12, 12, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(cpu_line())

    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size, args.size, 1)
    image = rng.normal(size=shape).astype(np.float32)
    ddf = rng.uniform(-5, 5, size=shape[:-1] + (3,)).astype(np.float32)
    image_t, ddf_t = tf.constant(image), tf.constant(ddf)

    def forward() -> None:
        ops.warp(image_t, ddf_t).numpy()

    @tf.function
    def forward_backward(img: tf.Tensor, d: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch([img, d])
            loss = tf.reduce_sum(tf.square(labelreg.warp(img, d)))
        return tape.gradient(loss, [img, d])

    # Training differentiates the warp by the DDF only: the moving image or label is data.
    @tf.function
    def forward_backward_ddf(img: tf.Tensor, d: tf.Tensor) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(d)
            loss = tf.reduce_sum(tf.square(labelreg.warp(img, d)))
        return [tape.gradient(loss, d)]

    grid = np.stack(np.meshgrid(*[np.arange(args.size)] * 3, indexing="ij"), 0).astype(np.float32)

    def scipy_forward() -> None:
        for b in range(args.batch):
            coords = grid + np.moveaxis(ddf[b], -1, 0)
            ndimage.map_coordinates(image[b, ..., 0], coords, order=1, mode="grid-constant")

    print(f"warp of {list(shape)} with a random DDF (+-5 voxels), "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()} threads")
    print(row("implementation", "median ms", "p99 ms", "vs scipy", widths=WIDTHS))
    scipy_t = time_call(scipy_forward, repeats=max(3, args.repeats // 3), warmup=1)
    fwd = time_call(forward, repeats=args.repeats)
    fwd_bwd = time_call(lambda: [g.numpy() for g in forward_backward(image_t, ddf_t)],
                        repeats=args.repeats)
    fwd_bwd_ddf = time_call(lambda: [g.numpy() for g in forward_backward_ddf(image_t, ddf_t)],
                            repeats=args.repeats)
    with ops.xla_disabled():
        plain = time_call(forward, repeats=max(3, args.repeats // 3))
    print(row("scipy map_coordinates(order=1) forward", scipy_t["median"], scipy_t["p99"], "1.0x",
              widths=WIDTHS))
    for name, t in [("labelreg.warp forward (XLA)", fwd),
                    ("labelreg.warp forward+backward, DDF gradient (XLA)", fwd_bwd_ddf),
                    ("labelreg.warp forward+backward, image and DDF (XLA)", fwd_bwd),
                    ("labelreg.warp forward (no XLA)", plain)]:
        print(row(name, t["median"], t["p99"], f"{scipy_t['median'] / t['median']:.1f}x",
                  widths=WIDTHS))


if __name__ == "__main__":
    main()
