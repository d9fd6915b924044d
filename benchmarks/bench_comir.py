"""CoMIR training throughput on this machine.

Times the compiled training step (both networks, C4 turns, InfoNCE, SGD) on augmented synthetic
128x128 patch pairs, for the paper's biomedical Tiramisu, the Zurich-sized one and the demo's,
and prints steps per second next to the parameter counts.

    python benchmarks/bench_comir.py [--batch 8] [--patch 128] [--steps 5] [--models default,...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks._timing import cpu_line, peak_rss_mib, row  # noqa: E402

MODELS = {
    # name: (init_filters, down/up blocks, bottleneck, compression, dropout, latent channels)
    "default": (32, (4,) * 6, 4, 0.75, 0.2, 1),
    "zurich": (16, (2,) * 3, 3, 1.0, 0.0, 3),
    "demo": (16, (2,) * 3, 3, 1.0, 0.0, 1),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after 2 warm-up steps")
    parser.add_argument("--models", default="default,zurich")
    args = parser.parse_args(argv)
    print(cpu_line())

    import keras
    import numpy as np

    from comir_tf.data import load_pairs, make_patch_dataset
    from comir_tf.synthetic import write_synthetic_pairs
    from comir_tf.tiramisu import Tiramisu
    from labelreg.methods.comir import make_train_step

    folder = write_synthetic_pairs(os.path.join(tempfile.mkdtemp(), "pairs"), 4, 256)
    pairs = load_pairs(folder, "_SHG", "_BF", 1, 3)
    dataset = make_patch_dataset(pairs, args.patch, args.batch, seed=0)
    print(f"CoMIR training step, batch {args.batch} of {args.patch}x{args.patch} pairs "
          f"(SHG 1 ch -> BF 3 ch), {os.cpu_count()} CPU cores")
    print(row("model", "trainable (A)", "steps/s", "s/step"))
    for name in args.models.split(","):
        filters, blocks, bottleneck, compression, dropout, latent = MODELS[name]
        keras.utils.set_random_seed(0)
        models = [Tiramisu(c, latent, filters, blocks, blocks, bottleneck, 12, compression,
                           dropout) for c in (1, 3)]
        optimizers = []
        for model in models:
            model.build((None, None, None, model.in_channels))
            optimizer = keras.optimizers.SGD(1e-2, momentum=0.9)
            optimizer.build(model.trainable_variables)
            optimizers.append(optimizer)
        step = make_train_step(*models, *optimizers)
        iterator = iter(dataset)
        for _ in range(2):
            step(next(iterator))["loss"].numpy()
        batches = [next(iterator) for _ in range(args.steps)]
        start = time.perf_counter()
        for batch in batches:
            loss = step(batch)["loss"]
        loss.numpy()
        seconds = (time.perf_counter() - start) / args.steps
        trainable = int(sum(np.prod(v.shape) for v in models[0].trainable_variables))
        print(row(name, f"{trainable:,}", f"{1.0 / seconds:.3f}",
                  f"{seconds:.2f}"))
    print(f"peak memory {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
