"""Warp speed: labelreg.warp (XLA and plain graph) against scipy.ndimage.map_coordinates and,
given an environment with PyTorch and MONAI, MONAI's ``Warp``.

Run: ``.venv/bin/python benchmarks/bench_warp.py [--size 128] [--batch 2] [--peer-python PY]``.
Prints milliseconds per call (median over repeats) for a random field of up to +-5 voxels on a
``[B, S, S, S, 1]`` volume, and each row's speed against scipy's forward pass and against MONAI's
same row. ``--peer-python`` names the interpreter of an environment with ``torch`` and ``monai``
(not dependencies of this project), where ``peer_monai_warp.py`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import cpu_line, row, time_call  # noqa: E402
from scipy import ndimage  # noqa: E402

import labelreg  # noqa: E402
from labelreg import ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402

WIDTHS = (54, 11, 11, 10, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--peer-python", default=None,
                        help="python of an environment with torch and monai, for MONAI's rows")
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
    peer = monai_times(args)
    print(row("implementation", "median ms", "p99 ms", "vs scipy", "vs MONAI", widths=WIDTHS))
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
    rows = [("labelreg.warp forward (XLA)", fwd, "forward"),
            ("labelreg.warp forward+backward, DDF gradient (XLA)", fwd_bwd_ddf,
             "forward_backward_ddf"),
            ("labelreg.warp forward+backward, image and DDF (XLA)", fwd_bwd,
             "forward_backward_both"),
            ("labelreg.warp forward (no XLA)", plain, "forward")]
    for name, t, peer_key in rows:
        against = f"{peer[peer_key]['median'] / t['median']:.1f}x" if peer else "-"
        print(row(name, t["median"], t["p99"], f"{scipy_t['median'] / t['median']:.1f}x",
                  against, widths=WIDTHS))
    if peer:
        for key, label in (("forward", "forward"), ("forward_backward_ddf", "forward+backward, DDF"),
                           ("forward_backward_both", "forward+backward, image and DDF")):
            t = peer[key]
            print(row(f"MONAI {peer['monai']} Warp {label}", t["median"], t["p99"],
                      f"{scipy_t['median'] / t['median']:.1f}x", "1.0x", widths=WIDTHS))
        print(f"MONAI: torch {peer['torch']}, {peer['threads']} threads")
    else:
        print("MONAI: not measured (pass --peer-python with an environment holding torch and monai)")


def monai_times(args: argparse.Namespace) -> dict | None:
    """MONAI's timings from ``peer_monai_warp.py`` in ``--peer-python``'s environment, or None."""
    if not args.peer_python:
        return None
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_monai_warp.py")
    done = subprocess.run(
        [args.peer_python, script, "--size", str(args.size), "--batch", str(args.batch),
         "--repeats", str(args.repeats)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed in {args.peer_python}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
