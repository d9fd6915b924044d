"""Command-line entry points of a CoMIR run.

``training.py`` and ``inference.py`` hand an INI file with a ``[CoMIR]`` section to
:func:`train` and :func:`infer`; ``python -m comir_tf.evaluate`` calls :func:`evaluate`. Each
returns a process exit code: 0 on success, 2 for a configuration or data error (one message
naming the file, section and key), 130 when training was interrupted (after saving).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from labelreg.errors import LabelregError

__all__ = ["train", "infer", "evaluate"]


def _fail(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def train(config_path: str | os.PathLike, overrides: Sequence[str] = ()) -> int:
    """Train the two CoMIR networks of a config (resuming from the run folder's checkpoints)."""
    from comir_tf.config import load
    from comir_tf.train import train as run

    try:
        result = run(load(config_path, overrides))
    except (LabelregError, FloatingPointError) as err:
        return _fail(err)
    if result.interrupted:
        print(f"interrupted at step {result.last_step}; rerun the same command to resume")
        return 130
    print(f"done: step {result.last_step}, checkpoint {result.checkpoint}")
    return 0


def infer(config_path: str | os.PathLike, overrides: Sequence[str] = ()) -> int:
    """Write the CoMIR of every test image (float32 TIFF and PNG preview)."""
    from comir_tf.config import load
    from comir_tf.generate import generate, write_comir
    from comir_tf.train import ensure_data, read_pairs, restore_models

    try:
        cfg = load(config_path, overrides)
        ensure_data(cfg)
        pairs = read_pairs(cfg, "test_dir")
        model_a, model_b, checkpoint = restore_models(cfg)
        inf, data = cfg["Inference"], cfg["Data"]
        out_dir = Path(inf["output_dir"] or Path(cfg["Train"]["run_dir"]) / "comirs")
        margin = None if inf["margin"] < 0 else inf["margin"]
        print(f"CoMIRs of {len(pairs)} test pairs with {checkpoint} -> {out_dir}")
        for i, name in enumerate(pairs.names):
            for model, image, suffix in ((model_a, pairs.images_a[i], data["suffix_a"]),
                                         (model_b, pairs.images_b[i], data["suffix_b"])):
                comir = generate(model, image, tile=inf["tile"] or None, margin=margin)
                written = write_comir(comir, out_dir / f"{name}{suffix}_comir.tif",
                                      png=inf["write_png"])
                print("wrote " + ", ".join(str(p) for p in written))
    except LabelregError as err:
        return _fail(err)
    return 0


def evaluate(config_path: str | os.PathLike, overrides: Sequence[str] = ()) -> int:
    """Register known random rigid transforms of the test pairs and report success rates."""
    from comir_tf.config import load
    from comir_tf.evaluate import evaluate as run

    try:
        run(load(config_path, overrides))
    except (LabelregError, ImportError) as err:
        return _fail(err)
    return 0
