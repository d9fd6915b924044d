"""How the cost of a training step grows with the volume, and what the memory options buy.

Run: ``.venv/bin/python benchmarks/bench_scaling.py [--sizes 32 64 96 128 160x192x224]
[--options none remat bf16 remat+bf16] [--steps 2]``.

Each (size, option) runs in its own process, so each peak-memory figure is that of one
configuration: LocalNet c=32, batch 1, moving and fixed volumes of the same size, one label,
the label-driven step of ``training.py`` (multi-scale Dice of the warped label plus bending
energy, the shared compiled step with Adam). Options: ``remat`` is ``[Train]
gradient_checkpointing``, ``bf16`` is ``[Train] precision = mixed_bfloat16``. It prints the
seconds per step (after one step of tracing), the peak resident memory, and the exponent of a
power-law fit of step time against voxels.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from _timing import cpu_line

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {bench!r})
from _timing import peak_rss_mib
import numpy as np
from labelreg._tf import tf
from labelreg.engine.step import make_optimizer, make_train_step
from labelreg.losses.registry import get_label_loss, get_regulariser
from labelreg.networks.apply import register_pair
from labelreg.networks.precision import precision_scope
from labelreg.networks.registry import build_network
from labelreg.networks.remat import remat_scope

shape, option, steps = {shape!r}, {option!r}, {steps}
precision = "mixed_bfloat16" if "bf16" in option else "float32"
with precision_scope(precision), remat_scope("remat" in option):
    model = build_network("local", ndim=3, fixed_shape=shape, num_channel_initial=32)
rng = np.random.default_rng(0)
grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
ball = (np.linalg.norm(grid, axis=-1) < 0.5).astype(np.float32)[None, ..., None]
shifted = (np.linalg.norm(grid - 0.1, axis=-1) < 0.5).astype(np.float32)[None, ..., None]
batch = {{"moving_image": tf.constant(shifted + 0.1 * rng.random(ball.shape, np.float32)),
         "fixed_image": tf.constant(ball + 0.1 * rng.random(ball.shape, np.float32)),
         "moving_label": tf.constant(shifted), "fixed_label": tf.constant(ball)}}
model([batch["moving_image"], batch["fixed_image"]])  # create the weights
dice = get_label_loss("dice", scales=(0, 1, 2, 4, 8, 16))
bending = get_regulariser("bending")


def loss_terms(b):
    out = register_pair(lambda m, f: model([m, f], training=True), b["moving_image"],
                        b["fixed_image"], b["moving_label"], warp_image=False)
    return {{"loss": dice(b["fixed_label"], out["warped_label"]) + 0.5 * bending(out["ddf"])}}


optimizer = make_optimizer("adam", 1e-5)
optimizer.build(model.trainable_variables)
step = make_train_step(loss_terms, {{"model": (optimizer, model.trainable_variables)}},
                       global_batch_size=1)
start = time.perf_counter()
first = float(step(batch)["loss"])
trace = time.perf_counter() - start
times = []
for _ in range(steps):
    start = time.perf_counter()
    loss = float(step(batch)["loss"])
    times.append(time.perf_counter() - start)
print("RESULT", json.dumps({{"seconds": min(times), "first": trace, "loss": first,
                            "peak_mib": peak_rss_mib()}}))
"""


def parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    return tuple(parts * 3) if len(parts) == 1 else tuple(parts)  # type: ignore[return-value]


def run(shape: tuple[int, int, int], option: str, steps: int, timeout: float) -> dict:
    code = CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), shape=shape,
                        option=option, steps=steps)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if out.returncode < 0 or "Killed" in out.stderr or "OOM" in out.stderr:
        return {"error": "out of memory"}
    return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:120]}


def fit_exponent(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log(seconds) against log(voxels)."""
    xs = [math.log(v) for v, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / \
        sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["32", "64", "96", "128", "160x192x224"])
    parser.add_argument("--options", nargs="+", default=["none", "remat", "bf16", "remat+bf16"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    print(cpu_line())

    print(f"LocalNet c=32, batch 1, label-driven step; {os.cpu_count()} CPU cores; "
          f"seconds per step (min of {args.steps}) / peak resident MiB")
    print("size".ljust(16) + "voxels".rjust(11) + "".join(o.rjust(22) for o in args.options))
    timings: dict[str, list[tuple[float, float]]] = {o: [] for o in args.options}
    for text in args.sizes:
        shape = parse_size(text)
        voxels = math.prod(shape)
        cells = []
        for option in args.options:
            result = run(shape, option, args.steps, args.timeout)
            if "error" in result:
                cells.append(result["error"][:21])
                continue
            timings[option].append((voxels, result["seconds"]))
            cells.append(f"{result['seconds']:.2f} s / {result['peak_mib']:.0f}")
        print("x".join(map(str, shape)).ljust(16) + f"{voxels:>11,}"
              + "".join(c.rjust(22) for c in cells), flush=True)
    for option, points in timings.items():
        if len(points) >= 3:
            print(f"{option}: step time grows as voxels^{fit_exponent(points):.2f} "
                  f"({len(points)} sizes)")


if __name__ == "__main__":
    main()
