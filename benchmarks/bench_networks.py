"""Network speed: forward time and parameter count of the registration networks.

Run: ``.venv/bin/python benchmarks/bench_networks.py``. Uses one mrus-shaped pair (moving
69x69x64, fixed 47x63x44) unless told otherwise; prints median/p99 milliseconds of an inference
forward pass (``training=False``) in eager mode and inside ``tf.function``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import cpu_line, peak_rss_mib, row, time_call  # noqa: E402

from labelreg._tf import tf  # noqa: E402
from labelreg.networks.registry import build_network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moving", type=int, nargs=3, default=(69, 69, 64))
    parser.add_argument("--fixed", type=int, nargs=3, default=(47, 63, 44))
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(cpu_line())

    rng = np.random.default_rng(0)
    moving = tf.constant(rng.uniform(size=(1, *args.moving, 1)).astype(np.float32))
    fixed = tf.constant(rng.uniform(size=(1, *args.fixed, 1)).astype(np.float32))
    print(f"one pair: moving {list(args.moving)}, fixed {list(args.fixed)}; forward, training=False")
    print(row("network", "params", "eager ms", "tf.function ms", widths=(36, 12, 16, 16)))
    for name, kwargs in [("local", {"num_channel_initial": 32}),
                         ("local", {"num_channel_initial": 16}),
                         ("global", {}), ("composite", {}),
                         # the networks of the image-driven MR/TRUS rows (docs/results.md)
                         ("composite", {"num_channel_initial": 8}),
                         ("unet", {"num_channel_initial": 8, "depth": 3})]:
        model = build_network(name, 3, fixed_shape=tuple(args.fixed), **kwargs)
        model([moving, fixed], training=False)
        graph = tf.function(lambda m, f, model=model: model([m, f], training=False))
        eager = time_call(lambda model=model: model([moving, fixed], training=False).numpy(),
                          repeats=args.repeats)
        compiled = time_call(lambda graph=graph: graph(moving, fixed).numpy(), repeats=args.repeats)
        label = f"{name} " + " ".join(f"{k}={v}" for k, v in kwargs.items())
        print(row(label, f"{model.count_params():,}", eager["median"], compiled["median"],
                  widths=(36, 12, 16, 16)))
    print(f"peak resident memory: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
