"""Registrations per second of an exported SavedModel, as a TensorFlow-only server runs it.

Run: ``.venv/bin/python benchmarks/bench_export.py EXPORT [EXPORT ...] [--repeats 30]
[--onednn 0 1] [--pair N]``, where each ``EXPORT`` is a version folder written by
``python inference.py CONFIG --export DIR`` (e.g. ``exports/mrus/1``).

A real MR/US pair of the shared sample (case ``--pair``), as read from its NIfTI files (the
signature normalises each image itself, as a server's client relies on), is written to a
temporary ``.npz``. Then, for each export and each value of
``TF_ENABLE_ONEDNN_OPTS`` (``--onednn``; TensorFlow enables oneDNN by itself only on CPUs with
AVX-512 VNNI/BF16 or AMX, and the folder's README tells a server to set 1), a fresh process that
imports TensorFlow and NumPy only (no labelreg, as TF-Serving would) loads the SavedModel with
``tf.saved_model.load`` and calls ``serving_default`` on the pair: ``--warmup`` calls, then
``--repeats`` timed calls. The exports are timed in turn, setting by setting, so each sees the
machine's load of its neighbours.

Prints the CPU line, then per export and setting the median, p99 and minimum latency in
milliseconds and registrations per second (from the median). The GFLOP per registration of a
config's network come from ``benchmarks/bench_breakdown.py CONFIG``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _timing import cpu_line  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-sample"

#: The process that times one export: TensorFlow and NumPy only.
CHILD = r"""
import json, statistics, sys, time
import numpy as np
import tensorflow as tf

export, pair, warmup, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = np.load(pair)
moving, fixed = tf.constant(data["moving"]), tf.constant(data["fixed"])
serve = tf.saved_model.load(export).signatures["serving_default"]
for _ in range(warmup):
    serve(moving_image=moving, fixed_image=fixed)["ddf"].numpy()
times = []
for _ in range(repeats):
    start = time.perf_counter()
    serve(moving_image=moving, fixed_image=fixed)["ddf"].numpy()
    times.append((time.perf_counter() - start) * 1e3)
times.sort()
print(json.dumps({"median": statistics.median(times), "min": times[0],
                  "p99": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]}))
"""


def write_pair(path: Path, case: int) -> str:
    """The pair ``case`` of the shared sample, float32 ``[1, *S, 1]`` arrays in ``path``;
    returns where it came from."""
    import nibabel as nib

    def load(folder: str) -> tuple[np.ndarray, str]:
        files = sorted((SAMPLE / folder).glob("*.nii*"))
        volume = np.asarray(nib.load(files[case]).dataobj, np.float32)
        return volume.reshape(1, *volume.shape[:3], 1), files[case].name

    moving, name = load("moving_images")
    fixed, _ = load("fixed_images")
    np.savez(path, moving=moving, fixed=fixed)
    return f"{SAMPLE.name}/{name} (moving {list(moving.shape[1:4])}, fixed {list(fixed.shape[1:4])})"


def time_export(export: str, pair: Path, onednn: str, warmup: int, repeats: int
                ) -> dict[str, float]:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", CHILD, export, str(pair), str(warmup),
                           str(repeats)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{export}: the TensorFlow-only process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exports", nargs="+", help="version folders of exported SavedModels")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--onednn", nargs="+", default=["0", "1"],
                        help="values of TF_ENABLE_ONEDNN_OPTS to time (default 0 1)")
    parser.add_argument("--pair", type=int, default=0, help="case index of mrus-sample")
    args = parser.parse_args()
    for export in args.exports:
        if not (Path(export) / "saved_model.pb").is_file():
            raise SystemExit(f"{export}: no saved_model.pb; expected a version folder written by "
                             "inference.py --export")
    print(cpu_line().rsplit(";", 1)[0])
    with tempfile.TemporaryDirectory() as scratch:
        pair = Path(scratch) / "pair.npz"
        print(f"pair: {write_pair(pair, args.pair)}; {args.repeats} timed calls after "
              f"{args.warmup}, one TensorFlow-only process per row\n")
        print(f"{'export':<36}{'oneDNN':>7}{'median ms':>11}{'p99 ms':>9}{'min ms':>9}"
              f"{'reg/s':>8}")
        for onednn in args.onednn:
            for export in args.exports:
                t = time_export(export, pair, onednn, args.warmup, args.repeats)
                print(f"{export:<36}{onednn:>7}{t['median']:>11.1f}{t['p99']:>9.1f}"
                      f"{t['min']:>9.1f}{1e3 / t['median']:>8.2f}")


if __name__ == "__main__":
    main()
