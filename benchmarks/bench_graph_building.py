"""Graph building: what a training pays before its first step, and what the fused Adam saves.

Run: ``.venv/bin/python benchmarks/bench_graph_building.py [--variables 120] [--trainings 2]``.

Prints, on this CPU:

- the optimiser update of ``--variables`` small variables inside a ``tf.function``, for Keras's
  Adam and for :class:`labelreg.engine.adam.FusedAdam`: graph operations, seconds to trace, and
  seconds of the first call (TensorFlow's graph optimisation) and of a later call;
- ``--trainings`` 3-step trainings of the test suite's LocalNet (c=4, 16³ volumes, 4 generated
  cases), each in full (build, trace, first run, two checkpoints), the first one paying the
  process's one-time costs;
- ``--exports`` SavedModel exports of a LocalNet c=4 (16³, its three signatures) by
  :func:`labelreg.export.export_model`, which traces each signature once, beside the same
  signatures written by Keras's ``ExportArchive`` from the plain functions, which traces each
  of them twice (once to list the variables, once inside ``tf.saved_model.save``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labelreg  # noqa: E402, F401  (before TensorFlow: its oneDNN default)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
from _timing import cpu_line  # noqa: E402

from labelreg._tf import tf  # noqa: E402
from labelreg.engine.adam import FusedAdam  # noqa: E402


def optimiser_update(cls: type, count: int) -> tuple[int, float, float, float]:
    """Operations, trace, first-call and later-call seconds (the median of 20 calls) of one
    update of ``count`` variables of shape ``[3, 3, 3, 4, 4]``."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=(3, 3, 3, 4, 4)).astype(np.float32))
                 for _ in range(count)]
    optimizer = cls(learning_rate=1e-3)
    optimizer.build(variables)
    update = tf.function(lambda: optimizer.apply_gradients(
        [(tf.sin(v), v) for v in variables]), autograph=False)
    start = time.perf_counter()
    concrete = update.get_concrete_function()
    traced = time.perf_counter()
    update()
    first = time.perf_counter()
    calls = []
    for _ in range(20):
        begin = time.perf_counter()
        update()
        calls.append(time.perf_counter() - begin)
    return (len(concrete.graph.get_operations()), traced - start, first - traced,
            float(np.median(calls)))


def small_training(root: Path, index: int) -> float:
    """Seconds of one 3-step training of the test suite's LocalNet."""
    from labelreg import config
    from labelreg.engine import train
    from tests.test_pipeline_e2e import write_config, write_dataset

    data = root / "data"
    if not data.exists():
        write_dataset(data)
    cfg = config.load(write_config(root / f"run{index}" / "run.ini", data))
    start = time.perf_counter()
    train(cfg, log=lambda line: None)
    return time.perf_counter() - start


def export_seconds(root: Path, index: int) -> tuple[float, float]:
    """Seconds of one export of a LocalNet c=4 (16³): the project's, then Keras's plain route."""
    from labelreg import export
    from labelreg.export.registration import ServingFunctions
    from labelreg.networks import LocalNet
    from labelreg.ops import xla_disabled

    model = LocalNet(ndim=3, num_channel_initial=4)
    model([np.zeros((1, 16, 16, 16, 1), np.float32)] * 2)

    def ours() -> None:
        export.export_model(model, root / "exports", f"m{index}", moving_shape=(16, 16, 16),
                            fixed_shape=(16, 16, 16))

    def plain() -> None:
        with xla_disabled():  # as the export traces its signatures
            archive = keras.export.ExportArchive()
            functions = ServingFunctions(model, (16, 16, 16), (16, 16, 16))
            for name, (fn, specs, *_) in functions.endpoints().items():
                archive.add_endpoint(name, fn, input_signature=specs)
            archive.write_out(str(root / f"plain{index}"), verbose=False)

    seconds = {}
    # Alternate which goes first: the first export of a process pays one-time costs.
    for name, fn in sorted((("ours", ours), ("plain", plain)), reverse=bool(index % 2)):
        start = time.perf_counter()
        fn()
        seconds[name] = time.perf_counter() - start
    return seconds["ours"], seconds["plain"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variables", type=int, default=120)
    parser.add_argument("--trainings", type=int, default=2)
    parser.add_argument("--exports", type=int, default=2)
    args = parser.parse_args()
    print(cpu_line())
    print(f"optimiser update of {args.variables} variables in a tf.function")
    print(f"{'optimiser':<12}{'operations':>12}{'trace s':>10}{'first call s':>14}"
          f"{'later call ms':>15}")
    for name, cls in (("Keras Adam", keras.optimizers.Adam), ("FusedAdam", FusedAdam)):
        ops, trace, first, later = optimiser_update(cls, args.variables)
        print(f"{name:<12}{ops:>12}{trace:>10.2f}{first:>14.2f}{later * 1e3:>15.1f}")
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.trainings):
            seconds = small_training(Path(folder), i)
            print(f"3-step training of LocalNet c=4 (16³), #{i + 1}: {seconds:.1f} s")
        for i in range(args.exports):
            ours, plain = export_seconds(Path(folder), i)
            print(f"export of LocalNet c=4 (16³, 3 signatures), #{i + 1}: {ours:.1f} s traced "
                  f"once; Keras's ExportArchive from the plain functions {plain:.1f} s "
                  f"({plain / ours:.1f}x)")


if __name__ == "__main__":
    main()
