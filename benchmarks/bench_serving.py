"""Serving latency in float32 and bfloat16: ``serving_default`` of exported networks.

Run: ``.venv/bin/python benchmarks/bench_serving.py [--repeats 30] [--widths 32 16]
[--checkpoint RUN] [--more-paths]``.

For each width ``c`` (default 32 and 16) a 3-D LocalNet for the prostate shapes (moving
69x69x64, fixed 47x63x44) is exported twice from the same weights, with ``precision="float32"``
and ``precision="bfloat16"`` (:func:`labelreg.export.export_model`), each SavedModel is loaded
with ``tf.saved_model.load`` and ``serving_default`` is timed on one real MR/US pair of the
shared sample (a random pair of those shapes when it is missing). A 3072x3072 matmul in float32
and in bfloat16 is timed in the same rounds, so that the network's achieved rate can be read
against what the CPU's matrix units give this process under the same load. Every path is called
once per round, round after round, so all of them see the same background load of a shared
machine.

The weights are random (a trained run with ``--checkpoint`` instead, at its own width): the
convolutions are Glorot-uniform as at initialisation; the batch-norm statistics are set from
the pair itself (one training-mode pass with momentum 0), so every layer sees features of the
spread a trained network's statistics give them; the zero-initialised DDF heads get random
weights scaled so that the 95th percentile of the displacement length is 10 voxels (the demo
network's displacements on this pair reach 17-21 voxels). The bfloat16 DDF error grows with the
displacement, so it is also printed relative to that 95th percentile.

Prints, per path: median, p99 and minimum latency in milliseconds, registrations per second
(from the median), the network's convolution GFLOP per registration (counted from the traced
graph: ``2 x output voxels x kernel volume x C_in x C_out`` for every convolution and
transposed convolution) divided by the median latency, and the matmul rates; then the DDF
difference between the bfloat16 and float32 exports (length of the per-voxel difference
vector, max and 95th percentile, in fixed-image voxels). ``--more-paths`` adds the float32
export with XLA-compiled warps and the float32 Keras model (eager and in a ``tf.function``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import conv_flop, cpu_line, peak_rss_mib, row  # noqa: E402

from labelreg import export, ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402
from labelreg.networks import LocalNet  # noqa: E402

MOVING, FIXED = (69, 69, 64), (47, 63, 44)
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-sample"
MATMUL_SIZE = 3072
TARGET_DDF_P95 = 10.0  # voxels; see the module docstring
WIDTHS = (52, 10, 10, 10, 8, 10, 10)


def load_pair() -> tuple[np.ndarray, np.ndarray, str]:
    """One MR/US pair ``[1, *S, 1]`` of raw intensities, and where it came from."""
    moving_file = SAMPLE / "moving_images" / "obs000.nii.gz"
    fixed_file = SAMPLE / "fixed_images" / "obs000.nii.gz"
    if moving_file.is_file() and fixed_file.is_file():
        import nibabel as nib

        moving = np.asarray(nib.load(moving_file).dataobj, np.float32)
        fixed = np.asarray(nib.load(fixed_file).dataobj, np.float32)
        return moving[None, ..., None], fixed[None, ..., None], f"{SAMPLE.name}/obs000"
    rng = np.random.default_rng(0)
    return (rng.uniform(0, 255, (1, *MOVING, 1)).astype(np.float32),
            rng.uniform(0, 255, (1, *FIXED, 1)).astype(np.float32), "random")


def network_inputs(moving: np.ndarray, fixed: np.ndarray,
                   fixed_shape: Sequence[int]) -> list[tf.Tensor]:
    """The pair as the exported signature hands it to the network: normalised, fixed resized."""
    net_fixed = ops.resize(export.normalise_intensity(tf.constant(fixed)), fixed_shape)
    return [export.normalise_intensity(tf.constant(moving)), net_fixed]


def random_network(width: int, inputs: list[tf.Tensor]) -> keras.Model:
    """A LocalNet with random weights, realistic batch-norm statistics and a ~10-voxel DDF."""
    keras.utils.set_random_seed(width)
    model = LocalNet(ndim=3, num_channel_initial=width)
    model(inputs, training=False)
    rng = np.random.default_rng(width)
    for head in model.ddf_heads:  # zero at initialisation: no displacement at all
        for weight in head.weights:
            weight.assign(rng.normal(0.0, 0.01, weight.shape).astype(np.float32))
    # Moving statistics = this pair's batch statistics: momentum 0 for one training-mode pass.
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(inputs, training=True)
    for layer in norms:
        layer.momentum = 0.99
    # The DDF is linear in the heads' weights: scale them to the target displacement length.
    length = np.linalg.norm(model(inputs, training=False).numpy(), axis=-1)
    scale = TARGET_DDF_P95 / float(np.percentile(length, 95))
    for head in model.ddf_heads:
        for weight in head.weights:
            weight.assign(weight.numpy() * scale)
    return model


def trained_network(checkpoint: str) -> tuple[keras.Model, tuple, tuple]:
    from labelreg.infer import load_trained_model

    model, meta, _ = load_trained_model(checkpoint)
    return model, tuple(meta["moving_shape"]), tuple(meta["fixed_shape"])


def conv_gflop(model: keras.Model, moving_shape: Sequence[int],
               fixed_shape: Sequence[int]) -> float:
    """Multiply-add FLOPs (x2) of every convolution of one forward pass, in GFLOP."""
    function = tf.function(lambda m, f: model([m, f], training=False), autograph=False)
    graph = function.get_concrete_function(
        tf.TensorSpec([1, *moving_shape, 1]), tf.TensorSpec([1, *fixed_shape, 1])).graph
    return sum(conv_flop(op) for op in graph.get_operations()) / 1e9


def folder_size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def percentile_of_sorted(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 16],
                        help="num_channel_initial of the random LocalNets")
    parser.add_argument("--checkpoint", default=None,
                        help="a training run to export instead of random networks")
    parser.add_argument("--more-paths", action="store_true",
                        help="also time the float32 export with XLA warps and the Keras model")
    args = parser.parse_args()
    print(cpu_line())

    moving, fixed, source = load_pair()
    moving_t, fixed_t = tf.constant(moving), tf.constant(fixed)
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"pair {source}: moving {list(moving.shape[1:-1])}, fixed {list(fixed.shape[1:-1])}; "
          f"{os.cpu_count()} CPU(s), {threads} intra-op threads; {args.repeats} calls per path")
    load_before = os.getloadavg()

    networks: list[tuple[str, keras.Model, tuple, tuple]] = []
    if args.checkpoint:
        model, moving_shape, fixed_shape = trained_network(args.checkpoint)
        name = f"{type(model).__name__} trained c={model.num_channel_initial}"
        networks.append((name, model, moving_shape, fixed_shape))
    else:
        inputs = network_inputs(moving, fixed, FIXED)
        for width in args.widths:
            networks.append((f"LocalNet c={width}", random_network(width, inputs), MOVING, FIXED))

    paths: dict[str, Callable[[], np.ndarray]] = {}
    info: dict[str, dict] = {}
    ddfs: dict[tuple[str, str], np.ndarray] = {}
    with tempfile.TemporaryDirectory() as base:
        for label, model, moving_shape, fixed_shape in networks:
            gflop = conv_gflop(model, moving_shape, fixed_shape)
            print(f"{label}: {model.count_params():,} parameters, "
                  f"{gflop:.1f} GFLOP of convolutions per registration")
            variants = [("float32", False), ("bfloat16", False)]
            if args.more_paths:
                variants.append(("float32", True))
            for precision, jit in variants:
                path = export.export_model(model, base, "bench", moving_shape=moving_shape,
                                           fixed_shape=fixed_shape, jit_compile=jit,
                                           precision=precision)
                signature = tf.saved_model.load(str(path)).signatures["serving_default"]
                name = f"{label} SavedModel {precision}" + (", XLA warps" if jit else "")

                def call(s=signature) -> np.ndarray:
                    return s(moving_image=moving_t, fixed_image=fixed_t)["ddf"].numpy()

                paths[name] = call
                info[name] = {"gflop": gflop, "dtype": precision,
                              "size": folder_size_mib(path)}
                if not jit:
                    ddfs[(label, precision)] = call()
            if args.more_paths:
                def keras_work(m: tf.Tensor, f: tf.Tensor, model=model) -> tf.Tensor:
                    ddf = model([export.normalise_intensity(m), export.normalise_intensity(f)],
                                training=False)
                    return ddf, ops.warp(m, ddf)

                graph = tf.function(keras_work, autograph=False)
                for kind, fn in (("eager", keras_work), ("tf.function", graph)):
                    name = f"{label} Keras float32, {kind}"
                    paths[name] = lambda fn=fn: fn(moving_t, fixed_t)[0].numpy()
                    info[name] = {"gflop": gflop, "dtype": "float32"}

        for dtype in (tf.float32, tf.bfloat16):
            a = tf.cast(tf.random.uniform((MATMUL_SIZE, MATMUL_SIZE)), dtype)
            matmul = tf.function(lambda a=a: tf.matmul(a, a))
            name = f"matmul {MATMUL_SIZE}^2 {dtype.name}"
            paths[name] = lambda matmul=matmul: matmul().numpy()
            info[name] = {"gflop": 2 * MATMUL_SIZE**3 / 1e9, "dtype": dtype.name}

        times: dict[str, list[float]] = {name: [] for name in paths}
        for round_ in range(args.warmup + args.repeats):
            for name, fn in paths.items():
                start = time.perf_counter()
                fn()
                if round_ >= args.warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    load_after = os.getloadavg()

    medians = {}
    for name, values in times.items():
        values.sort()
        medians[name] = statistics.median(values)
    matmul_rate = {info[n]["dtype"]: info[n]["gflop"] / medians[n] * 1e3
                   for n in paths if n.startswith("matmul")}
    print()
    print(row("path", "median ms", "p99 ms", "min ms", "reg/s", "GFLOP/s", "% matmul",
              widths=WIDTHS))
    for name, values in times.items():
        median = medians[name]
        rate = info[name]["gflop"] / median * 1e3
        share = f"{100 * rate / matmul_rate[info[name]['dtype']]:.0f}"
        regs = "" if name.startswith("matmul") else f"{1000.0 / median:.2f}"
        print(row(name, median, percentile_of_sorted(values, 0.99), values[0], regs,
                  f"{rate:.0f}", share, widths=WIDTHS))
    print(f"bfloat16 / float32 matmul rate: "
          f"{matmul_rate['bfloat16'] / matmul_rate['float32']:.2f}x")
    for label, *_ in networks:
        fp32 = f"{label} SavedModel float32"
        bf16 = f"{label} SavedModel bfloat16"
        print(f"{label}: bfloat16 / float32 speed-up "
              f"{medians[fp32] / medians[bf16]:.2f}x (median); export "
              f"{info[fp32]['size']:.1f} MiB (float32), {info[bf16]['size']:.1f} MiB (bfloat16)")

    print()
    print("DDF difference bfloat16 vs float32 export, same weights, same pair "
          "(length of the per-voxel difference vector, fixed-image voxels):")
    for label, *_ in networks:
        reference, fast = ddfs[(label, "float32")], ddfs[(label, "bfloat16")]
        length = np.linalg.norm(reference, axis=-1)
        diff = np.linalg.norm(fast - reference, axis=-1)
        p95_length = float(np.percentile(length, 95))
        print(f"  {label}: |ddf| p95 {p95_length:.2f}, max {length.max():.2f}; "
              f"|difference| max {diff.max():.4f}, p95 {np.percentile(diff, 95):.4f}, "
              f"mean {diff.mean():.4f} voxels (max {100 * diff.max() / p95_length:.2f}% and "
              f"p95 {100 * np.percentile(diff, 95) / p95_length:.2f}% of the p95 |ddf|)")
    print(f"load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
          f"after: {', '.join(f'{v:.2f}' for v in load_after)}")
    print(f"peak resident memory: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
