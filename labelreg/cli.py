"""Command lines of ``training.py`` and ``inference.py``, for every method.

``python training.py config.ini [--set Section.key=value ...] [--fresh]`` trains;
``python inference.py config.ini [--set ...] [--export DIR]`` runs the method's inference (or
exports the trained model for TF-Serving). The INI file names its method (see
:mod:`labelreg.methods.registry`); the file is parsed and validated before TensorFlow is
imported, so a configuration error is reported at once. Errors in the configuration or the data
end the program with exit code 2 and one message naming the file, section and key at fault.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from labelreg.errors import LabelregError

__all__ = ["train_main", "infer_main"]

_SET_HELP = (
    "override one setting, e.g. --set Train.learning_rate=1e-4 (repeatable; values are parsed "
    "like the INI file's)"
)


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="the INI file (see docs/config.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help=_SET_HELP)
    return parser


def _fail(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _load(config: str, overrides: Sequence[str]):
    """The method and its validated config, without TensorFlow; deprecation notes to stderr."""
    from labelreg.methods.registry import get_method, load_config

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not Path(config).is_file():
        raise LabelregError(f"{config}: config file not found.")
    name, cfg = load_config(config, overrides)
    for note in cfg.notes:
        print(f"note: {note}", file=sys.stderr)
    return get_method(name)(cfg), cfg


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training.py``; returns the process exit code."""
    parser = _parser("training.py", "Train a registration method from an INI config.")
    parser.add_argument("--fresh", action="store_true",
                        help="start from step 0 even if the run folder has checkpoints (they are "
                             "moved aside, not deleted)")
    args = parser.parse_args(argv)
    try:
        method, _ = _load(args.config, args.overrides)
        from labelreg.engine import train

        result = train(method, fresh=args.fresh)
    except (LabelregError, FloatingPointError) as err:
        return _fail(err)
    if result.interrupted:
        print(f"interrupted at step {result.last_step}; rerun the same command to resume")
        return 130
    print(f"done: step {result.last_step}, checkpoint {result.checkpoint}")
    return 0


def infer_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inference.py``; returns the process exit code."""
    parser = _parser("inference.py",
                     "Run a trained method on the test data of an INI config, or export it.")
    parser.add_argument("--export", metavar="BASE_DIR",
                        help="instead of inference, export the trained model for TF-Serving "
                             "to BASE_DIR/<name>/<version>/")
    parser.add_argument("--name", default=None,
                        help="model name for --export (default: the method's name, e.g. "
                             "labelreg or comir)")
    parser.add_argument("--version", type=int, default=None,
                        help="version for --export (default: next free integer)")
    args = parser.parse_args(argv)
    try:
        method, _ = _load(args.config, args.overrides)
        if args.export:
            from labelreg.export import export_saved_model

            source, options = method.checkpoint_for_export()
            path = export_saved_model(source, args.export, args.name or method.name,
                                      args.version, **options)
            print(f"exported {path}")
            return 0
        lines = method.infer()
    except LabelregError as err:
        return _fail(err)
    for line in lines:
        print(line)
    return 0
