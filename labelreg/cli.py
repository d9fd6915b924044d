"""Command lines of ``training.py`` and ``inference.py``, for every method.

``python training.py config.ini [--set Section.key=value ...] [--fresh]`` trains;
``python inference.py config.ini [--set ...] [--overwrite] [--export DIR]`` runs the method's
inference (or exports the trained model for TF-Serving). The INI file names its method (see
:mod:`labelreg.methods.registry`); the file is parsed and validated before TensorFlow is
imported, so a configuration error is reported at once.

Exit codes:

- 0: done; for inference, every pair is registered (now or by an earlier run);
- 1: inference ran but some pairs failed: the other pairs are written, the failed ones are
  listed in ``<dir_save>/failed.csv`` and the log; rerunning the same command redoes only
  the missing pairs (``--overwrite`` redoes all of them);
- 2: an error in the configuration or the data that stops the whole run, normally before any
  work (an unwritable output folder included), with one message naming the file, section and
  key at fault;
- 130: training interrupted (Ctrl-C) after saving a checkpoint.

Output: progress lines go through the ``labelreg`` logger to stdout; ``-q/--quiet`` hides them
(warnings, the final result lines and errors remain), ``-v/--verbose`` adds debug lines and
TensorFlow's C++ start-up logs (see :mod:`labelreg.logs`). ``note:`` and ``error:`` lines go to
stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from labelreg.errors import LabelregError, PartialFailure
from labelreg.logs import get_logger, log_line, parse_args

__all__ = ["train_main", "infer_main", "command_parser", "fail", "run_command"]

_SET_HELP = (
    "override one setting, e.g. --set Train.learning_rate=1e-4 (repeatable; values are parsed "
    "like the INI file's)"
)


def command_parser(prog: str, description: str,
                   config_help: str = "the INI file (see docs/config.md)",
                   set_help: str = _SET_HELP) -> argparse.ArgumentParser:
    """The parser every command starts from: the INI file and repeatable ``--set`` overrides
    (``-v``/``-q`` are added by :func:`run_command`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help=config_help)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help=set_help)
    return parser


def fail(err: BaseException) -> int:
    """Print ``error: <message>`` to stderr; the exit code of a configuration or data error."""
    print(f"error: {err}", file=sys.stderr)
    return 2


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                body: Callable[[argparse.Namespace], int],
                errors: tuple[type[BaseException], ...] = (LabelregError,)) -> int:
    """Parse ``argv`` (with ``-v/--verbose`` and ``-q/--quiet``, :func:`labelreg.logs.parse_args`),
    run ``body(args)`` and return its exit code; one of ``errors`` becomes one ``error:`` line
    and exit code 2, Ctrl-C exit code 130."""
    args = parse_args(parser, argv)
    try:
        return body(args)
    except errors as err:
        return fail(err)
    except KeyboardInterrupt:
        return 130


_parser = command_parser
_fail = fail


def _load(config: str, overrides: Sequence[str], command: str | None = None):
    """The method and its validated config, without TensorFlow; deprecation notes to stderr.
    With ``command`` (``"train"``, ``"infer"``) the input folders it reads must exist.

    The method's progress lines go through the ``labelreg`` logger (see :mod:`labelreg.logs`).
    """
    from labelreg.methods.registry import check_inputs, get_method, load_config

    if not Path(config).is_file():
        raise LabelregError(f"{config}: config file not found.")
    name, cfg = load_config(config, overrides)
    if command is not None:
        check_inputs(name, cfg, command)
    for note in cfg.notes:
        print(f"note: {note}", file=sys.stderr)
    get_logger().debug(f"method {name}, config {cfg.path}")
    return get_method(name)(cfg, log=log_line), cfg


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``training.py``; returns the process exit code."""
    parser = _parser("training.py",
                     "Train any configured registration method: the one the INI file names "
                     "in [Method] name (labelreg by default; also comir, image_driven, "
                     "learnsim, deepsim_features).")
    parser.add_argument("--fresh", action="store_true",
                        help="start from step 0 even if the run folder has checkpoints (they are "
                             "moved aside, not deleted)")
    args = parse_args(parser, argv)
    try:
        method, _ = _load(args.config, args.overrides, command="train")
        from labelreg.engine import train

        result = train(method, fresh=args.fresh)
    except (LabelregError, FloatingPointError) as err:
        return _fail(err)
    if result.interrupted:
        print(f"interrupted at step {result.last_step}; rerun the same command to resume")
        return 130
    print(f"done: step {result.last_step}, checkpoint {result.checkpoint}")
    return 0


#: Exit code of ``inference.py`` when some pairs failed and the others were written.
EXIT_PAIRS_FAILED = 1

_INFER_EPILOG = (
    "exit codes: 0 every pair registered (now or by an earlier run); 1 some pairs failed, the "
    "others are written and the failed ones are listed in <dir_save>/failed.csv (rerun to redo "
    "only those); 2 configuration or data error, nothing computed."
)


def infer_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``inference.py``; returns the exit code (see the module docstring)."""
    parser = _parser("inference.py",
                     "Run a trained method on the test data of an INI config, or export it.")
    parser.epilog = _INFER_EPILOG
    parser.add_argument("--overwrite", action="store_true",
                        help="register every pair again, also those whose output folder is "
                             "already complete (they are skipped by default; use this after "
                             "retraining)")
    parser.add_argument("--export", metavar="BASE_DIR",
                        help="instead of inference, export the trained model for TF-Serving "
                             "to BASE_DIR/<name>/<version>/")
    parser.add_argument("--name", default=None,
                        help="model name for --export (default: the INI file's name, e.g. "
                             "demo for configs/demo.ini, so two configs of one method do not "
                             "share a model folder)")
    parser.add_argument("--version", type=int, default=None,
                        help="version for --export (default: next free integer)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default=None,
                        help="arithmetic of the exported networks (--export; default float32): "
                             "bfloat16 convolutions are about 1.6x faster on CPUs with AVX-512 "
                             "BF16, the DDF and the warp stay float32; for inference itself set "
                             "[Inference] precision")
    args = parse_args(parser, argv)
    try:
        method, _ = _load(args.config, args.overrides,
                          command=None if args.export else "infer")
        if args.export:
            from labelreg.export import export_saved_model

            source, options = method.checkpoint_for_export()
            if args.precision:
                options["precision"] = args.precision
            name = args.name or Path(args.config).stem
            # Tracing and saving the signatures takes a minute or more on a 2-core CPU.
            log_line(f"exporting {source} to {Path(args.export) / name}/ (tracing the serving "
                     "signatures) ...")
            path = export_saved_model(source, args.export, name, args.version, **options)
            print(f"exported {path}")
            return 0
        lines = method.infer(overwrite=args.overwrite)
    except PartialFailure as err:
        for line in err.lines:
            print(line)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PAIRS_FAILED
    except LabelregError as err:
        return _fail(err)
    for line in lines:
        print(line)
    return 0
