"""Command lines of ``training.py`` and ``inference.py``.

``python training.py config.ini [--set Section.key=value ...] [--fresh]`` trains;
``python inference.py config.ini [--set ...] [--export DIR]`` registers the test pairs (or exports
the trained model for TF-Serving). An INI file with a ``[CoMIR]`` section is handed to
:mod:`comir_tf.cli` instead. Errors in the configuration or the data end the program with exit
code 2 and one message naming the file, section and key at fault.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from labelreg.errors import LabelregError

__all__ = ["train_main", "infer_main", "is_comir_config"]

_SET_HELP = (
    "override one setting, e.g. --set Train.learning_rate=1e-4 (repeatable; values are parsed "
    "like the INI file's)"
)


def is_comir_config(path: str | os.PathLike) -> bool:
    """Whether an INI file describes a CoMIR run (it has a ``[CoMIR]`` section)."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return False  # the full parser reports the problem with its location
    return parser.has_section("CoMIR")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help="the INI file (see docs/config.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help=_SET_HELP)
    return parser


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _fail(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def _ensure_demo_data(cfg) -> None:
    folder = cfg["Data"].get("demo_data")
    if folder is not None:
        from labelreg.data.demo import generate_demo_data

        generate_demo_data(folder)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training.py``; returns the process exit code."""
    parser = _parser("training.py", "Train a registration network from an INI config.")
    parser.add_argument("--fresh", action="store_true",
                        help="start from step 0 even if the run folder has checkpoints (they are "
                             "moved aside, not deleted)")
    args = parser.parse_args(argv)
    _quiet_tensorflow()
    if not Path(args.config).is_file():
        return _fail(LabelregError(f"{args.config}: config file not found."))
    try:
        if is_comir_config(args.config):
            from comir_tf import cli as comir_cli

            overrides = [*args.overrides, *(["Train.resume=false"] if args.fresh else [])]
            return comir_cli.train(args.config, overrides)
        from labelreg import config
        from labelreg.train import train

        cfg = config.load(args.config, args.overrides)
        _ensure_demo_data(cfg)
        result = train(cfg, fresh=args.fresh)
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
                     "Register the test pairs of an INI config with a trained network.")
    parser.add_argument("--export", metavar="BASE_DIR",
                        help="instead of registering, export the trained model for TF-Serving "
                             "to BASE_DIR/<name>/<version>/")
    parser.add_argument("--name", default="labelreg",
                        help="model name for --export (a CoMIR config defaults to 'comir')")
    parser.add_argument("--version", type=int, default=None,
                        help="version for --export (default: next free integer)")
    args = parser.parse_args(argv)
    _quiet_tensorflow()
    if not Path(args.config).is_file():
        return _fail(LabelregError(f"{args.config}: config file not found."))
    try:
        if is_comir_config(args.config):
            if args.export:
                from labelreg.export import export_comir_run

                name = "comir" if args.name == "labelreg" else args.name
                print(f"exported {export_comir_run(args.config, args.export, name, args.version)}")
                return 0
            from comir_tf import cli as comir_cli

            return comir_cli.infer(args.config, args.overrides)
        from labelreg import config

        cfg = config.load(args.config, args.overrides)
        if args.export:
            from labelreg.export import export_saved_model

            path = export_saved_model(
                cfg["Inference"]["file_model_saved"], args.export, args.name, args.version,
                label_interpolation=cfg["Inference"]["label_interpolation"],
            )
            print(f"exported {path}")
            return 0
        _ensure_demo_data(cfg)
        from labelreg.infer import infer

        result = infer(cfg)
    except LabelregError as err:
        return _fail(err)
    print(f"wrote {len(result.cases)} registered pair(s) to {result.dir_save}")
    if result.rows:
        print(f"gland (label 0) Dice: before {result.mean('dice_before'):.3f}, "
              f"after {result.mean('dice'):.3f}; centroid distance: before "
              f"{result.mean('centroid_distance_mm_before'):.2f} mm, after "
              f"{result.mean('centroid_distance_mm'):.2f} mm")
    return 0
