"""Where a registration's arithmetic and time go, stage by stage, for a config's network.

Run: ``.venv/bin/python benchmarks/bench_breakdown.py [configs/mrus.ini] [--checkpoint RUN]
[--repeats 20] [--set Section.key=value ...]``.

The network is built from the config (random weights at initialisation, or a trained run with
``--checkpoint``) at its training shapes. It is then split two ways:

- **GFLOP** per block, counted from the traced inference graph: ``2 x output voxels x kernel
  volume x C_in x C_out`` for every convolution, and ``2 x input voxels x kernel volume x C_in x
  C_out`` for every transposed convolution. The blocks are the layers the graph names: each
  segmentation U-Net's levels, LocalNet's encoder levels (``down_k``), up-sampling blocks
  (``up_k``) and DDF heads (``ddf_k``).
- **milliseconds** per stage, each stage traced alone (``tf.function``, no XLA, as a SavedModel
  runs) on one real MR/US pair of the shared sample. For a CentroidAlignNet the stages are
  both segmentations (resize, U-Net, sigmoid), the centroid translation with its warp of the
  moving image, and LocalNet on that warped image. Every network ends with the whole forward
  pass, then the whole forward pass plus the warp of the moving image, which is the serving
  signature's work. Medians over ``--repeats`` calls; the stages are timed in turn, round after
  round, so all of them see the same load.

The header names the CPU (``lscpu`` model and vector extensions) and the same-run float32
matmul rate, so the achieved GFLOP/s can be read against what the CPU gives this process.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import conv_flop, cpu_line  # noqa: E402

import labelreg  # noqa: E402, F401  (before TensorFlow: oneDNN)
from labelreg import ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-sample"
MATMUL_SIZE = 2048


def build(config: str, checkpoint: str | None, overrides: list[str] | None = None
          ) -> tuple[tf.keras.Model, tuple, tuple]:
    """The config's network and its (moving, fixed) training shapes."""
    if checkpoint:
        from labelreg.infer import load_trained_model

        model, meta, _ = load_trained_model(checkpoint)
        return model, tuple(meta["moving_shape"]), tuple(meta["fixed_shape"])
    from labelreg.methods.registry import get_method, load_config

    name, cfg = load_config(config, overrides or ())
    method = get_method(name)(cfg, log=lambda line: None)
    method.prepare_data()
    model = method.build()["model"]
    meta = method.meta()
    return model, tuple(meta["moving_shape"]), tuple(meta["fixed_shape"])


def block_gflop(model: tf.keras.Model, moving_shape: tuple, fixed_shape: tuple) -> dict[str, float]:
    """GFLOP of the convolutions of one inference pass, per named block."""
    function = tf.function(lambda m, f: model([m, f], training=False), autograph=False)
    graph = function.get_concrete_function(
        tf.TensorSpec([1, *moving_shape, 1]), tf.TensorSpec([1, *fixed_shape, 1])).graph
    blocks: collections.Counter[str] = collections.Counter()
    for op in graph.get_operations():
        flop = conv_flop(op)
        if not flop:
            continue
        # Scope names carry a "_<n>" suffix per trace; the block is the layer below the network.
        parts = [part.rsplit("_", 1)[0] if part.rsplit("_", 1)[-1].isdigit() else part
                 for part in op.name.split("/")[1:-1]]
        depth = 3 if "encoder" in parts[:2] else 2
        blocks["/".join(parts[:depth])] += flop
    return {name: flop / 1e9 for name, flop in sorted(blocks.items())}


def stages(model: tf.keras.Model) -> dict[str, Callable[[tf.Tensor, tf.Tensor], object]]:
    """The stages timed alone, each ``(moving, fixed) -> tensors``."""
    out: dict[str, Callable] = {}
    if hasattr(model, "segment") and hasattr(model, "local_net"):
        def segmentations(m, f):
            return model.segment(m, f, training=False)

        def translation(m, f):
            p_m, p_f = model.segment(m, f, training=False)
            shift = model._centroid_on_image(p_m, m) - model._centroid_on_image(p_f, f)
            field = tf.zeros_like(f[..., :1]) + tf.reshape(shift, [-1, 1, 1, 1, 3])
            return ops.warp(m, field)

        out["segmentations (both U-Nets)"] = segmentations
        out["segmentations + centroid translation + warp"] = translation
        def local(m, f):  # LocalNet reads a moving image on the fixed grid
            return model.register(ops.resize(m, f.shape[1:-1]), f, training=False)

        out["LocalNet (with the resizes around it)"] = local
    out["whole forward pass"] = lambda m, f: model([m, f], training=False)

    def forward_and_warp(m, f):
        ddf = model([m, f], training=False)
        return ops.warp(m, ddf)

    out["forward + warp of the moving image (serving)"] = forward_and_warp
    return out


def load_pair(moving_shape: tuple, fixed_shape: tuple) -> tuple[np.ndarray, np.ndarray, str]:
    """One MR/US pair of the shared sample resized to the training shapes, normalised."""
    from labelreg.data.nifti import PairedDataset
    from labelreg.data.pipeline import normalise_intensity

    try:
        paired = PairedDataset(SAMPLE / "moving_images", SAMPLE / "fixed_images")
        moving = paired.read("moving_image", 0).astype(np.float32)
        fixed = paired.read("fixed_image", 0).astype(np.float32)
        moving = moving.reshape(1, *moving.shape[:3], 1)
        fixed = fixed.reshape(1, *fixed.shape[:3], 1)
        source = f"{SAMPLE.name}/{paired.names[0]}"
    except Exception:  # noqa: BLE001 - a benchmark runs on random data without the sample
        rng = np.random.default_rng(0)
        moving = rng.random((1, *moving_shape, 1), np.float32)
        fixed = rng.random((1, *fixed_shape, 1), np.float32)
        source = "random data"
    moving = ops.resize(normalise_intensity(moving[0])[None], moving_shape).numpy()
    fixed = ops.resize(normalise_intensity(fixed[0])[None], fixed_shape).numpy()
    return moving, fixed, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="configs/mrus.ini")
    parser.add_argument("--checkpoint", default=None, help="a trained run instead")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override a setting of the config")
    args = parser.parse_args()

    model, moving_shape, fixed_shape = build(args.config, args.checkpoint, args.overrides)
    moving, fixed, source = load_pair(moving_shape, fixed_shape)
    print(cpu_line())
    print(f"{type(model).__name__}, {model.count_params():,} parameters; moving "
          f"{list(moving_shape)}, fixed {list(fixed_shape)}; pair {source}")

    gflop = block_gflop(model, moving_shape, fixed_shape)
    total = sum(gflop.values())
    print(f"\nconvolution GFLOP per registration: {total:.2f}")
    print(f"{'block':<44}{'GFLOP':>10}{'share':>9}")
    for name, value in gflop.items():
        print(f"{name:<44}{value:>10.3f}{100 * value / total:>8.1f}%")

    m, f = tf.constant(moving), tf.constant(fixed)
    a = tf.random.stateless_normal([MATMUL_SIZE, MATMUL_SIZE], [1, 2])
    def bound(fn: Callable) -> Callable[[], object]:
        traced = tf.function(fn, autograph=False)
        return lambda: traced(m, f)

    timed: dict[str, Callable[[], object]] = {name: bound(fn) for name, fn in stages(model).items()}
    matmul = tf.function(lambda: tf.matmul(a, a))
    timed["float32 matmul (same run)"] = matmul
    times: dict[str, list[float]] = {name: [] for name in timed}
    for fn in timed.values():  # trace and warm up
        for _ in range(2):
            tf.nest.map_structure(lambda t: t.numpy(), fn())
    for _ in range(args.repeats):
        for name, fn in timed.items():
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn())
            times[name].append(time.perf_counter() - start)
    matmul_ms = statistics.median(times["float32 matmul (same run)"]) * 1e3
    matmul_rate = 2 * MATMUL_SIZE**3 / (matmul_ms / 1e3) / 1e9
    print(f"\n{'stage':<48}{'median ms':>11}{'reg/s':>8}")
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        rate = f"{1e3 / ms:8.2f}" if "matmul" not in name else f"{matmul_rate:6.0f} GFLOP/s"
        print(f"{name:<48}{ms:>11.1f}{rate:>8}")
    whole = statistics.median(times["whole forward pass"])
    print(f"\nthe forward pass runs its {total:.1f} GFLOP at {total / whole:.0f} GFLOP/s, "
          f"{100 * total / whole / matmul_rate:.0f}% of the same-run matmul rate")


if __name__ == "__main__":
    main()
