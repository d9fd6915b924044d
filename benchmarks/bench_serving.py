"""Serving latency: ``serving_default`` of an exported SavedModel against the Keras model.

Run: ``.venv/bin/python benchmarks/bench_serving.py [--repeats 100] [--checkpoint RUN]``.

Exports LocalNet (c=32, 3-D, trained on moving 69x69x64 / fixed 47x63x44: a trained run with
``--checkpoint``, otherwise random weights, which time the same) twice, with the warps traced
without XLA (the default, for TF-Serving's stock server) and with XLA, loads each SavedModel with
``tf.saved_model.load`` and times ``serving_default`` on one real MR/US pair of the shared sample
(or a random pair of those shapes when it is missing). For comparison it times the Keras model
with the same work (normalisation, network, warp of the moving image) eagerly and inside a
``tf.function``. The four paths are called in turn, round after round, so that every path sees the
same background load on a shared machine. Prints the median, p99 and minimum latency in
milliseconds, registrations per second (from the median) and the size of each export on disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import peak_rss_mib, row  # noqa: E402

from labelreg import export, ops  # noqa: E402
from labelreg._tf import tf  # noqa: E402
from labelreg.networks import LocalNet  # noqa: E402

MOVING, FIXED = (69, 69, 64), (47, 63, 44)
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-sample"
WIDTHS = (46, 12, 12, 12, 10)


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


def build_model(checkpoint: str | None) -> tuple[keras.Model, tuple, tuple]:
    if checkpoint:
        from labelreg.infer import load_trained_model

        model, meta, _ = load_trained_model(checkpoint)
        return model, tuple(meta["moving_shape"]), tuple(meta["fixed_shape"])
    model = LocalNet(ndim=3, num_channel_initial=32)
    model([tf.zeros((1, *MOVING, 1)), tf.zeros((1, *FIXED, 1))], training=False)
    rng = np.random.default_rng(0)
    for head in model.ddf_heads:  # zero heads would make a zero DDF; the timing is the same
        for weight in head.weights:
            weight.assign(rng.normal(0.0, 0.01, weight.shape).astype(np.float32))
    return model, MOVING, FIXED


def folder_size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpoint", default=None, help="a training run to export instead")
    args = parser.parse_args()

    moving, fixed, source = load_pair()
    model, moving_shape, fixed_shape = build_model(args.checkpoint)
    threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    print(f"LocalNet c={model.num_channel_initial}, {model.count_params():,} parameters; pair "
          f"{source}: moving {list(moving.shape[1:-1])}, fixed {list(fixed.shape[1:-1])}; "
          f"{os.cpu_count()} CPU(s), {threads} intra-op threads; {args.repeats} calls each")
    print(row("path", "median ms", "p99 ms", "min ms", "reg/s", widths=WIDTHS))

    moving_t, fixed_t = tf.constant(moving), tf.constant(fixed)
    paths: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as base:
        sizes = {}
        for jit in (False, True):
            path = export.export_model(model, base, "bench", moving_shape=moving_shape,
                                       fixed_shape=fixed_shape, jit_compile=jit)
            sizes[jit] = folder_size_mib(path)
            signature = tf.saved_model.load(str(path)).signatures["serving_default"]
            label = "SavedModel serving_default, " + ("XLA warps" if jit else "no XLA (default)")
            paths[label] = lambda s=signature: s(moving_image=moving_t,
                                                 fixed_image=fixed_t)["ddf"].numpy()

        def keras_work(m: tf.Tensor, f: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            ddf = model([export.normalise_intensity(m), export.normalise_intensity(f)],
                        training=False)
            return ddf, ops.warp(m, ddf)

        graph = tf.function(keras_work, autograph=False)
        paths["Keras model, eager (warp with XLA)"] = (
            lambda: keras_work(moving_t, fixed_t)[0].numpy())
        paths["Keras model, tf.function (warp with XLA)"] = (
            lambda: graph(moving_t, fixed_t)[0].numpy())

        times: dict[str, list[float]] = {name: [] for name in paths}
        for round_ in range(args.warmup + args.repeats):
            for name, fn in paths.items():
                start = time.perf_counter()
                fn()
                if round_ >= args.warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
        for name, values in times.items():
            values.sort()
            median = statistics.median(values)
            p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
            print(row(name, median, p99, values[0], f"{1000.0 / median:.2f}", widths=WIDTHS))
        for jit, size in sizes.items():
            print(f"export size on disk ({'XLA' if jit else 'no XLA'}): {size:.1f} MiB")
    print(f"peak resident memory: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
