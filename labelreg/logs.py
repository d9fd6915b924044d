"""Console output of the command lines: one logger, three verbosities, quiet TensorFlow imports.

Every command (``training.py``, ``inference.py``, ``python -m labelreg.evaluation``,
``python -m labelreg.crossval``, ``python -m comir_tf.evaluate``) parses its arguments with
:func:`parse_args`, which adds ``-v/--verbose`` and ``-q/--quiet`` and calls :func:`configure`:

- default: progress lines (the ``labelreg`` logger at INFO) on stdout;
- ``--quiet``: only warnings (``warning: ...`` lines, failed pairs), the final result lines and
  errors; progress lines are hidden;
- ``--verbose``: DEBUG lines too, and TensorFlow's C++ start-up logs (``TF_CPP_MIN_LOG_LEVEL=0``
  and ``LABELREG_VERBOSE=1``, set before TensorFlow is imported).

Importing TensorFlow makes its C++ libraries write a few informational lines straight to file
descriptor 2 (the absl pre-initialisation notice and the oneDNN note), which no Python setting
reaches. :func:`native_stderr_filtered` holds back what is written to descriptor 2 while
TensorFlow is imported and replays it without those informational lines; everything else
(Python warnings, C++ errors) still reaches stderr, and the whole text does when the import
fails or ``LABELREG_VERBOSE=1`` is set. This module does not import TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any, TextIO

__all__ = [
    "VERBOSE_ENV", "configure", "get_logger", "log_line", "native_stderr_filtered",
    "parse_args", "quiet_tensorflow_import",
]

#: Environment variable that lets TensorFlow's C++ start-up logs through (``--verbose`` sets it).
VERBOSE_ENV = "LABELREG_VERBOSE"

_LOGGER_NAME = "labelreg"

# A line of the C++ logger (absl/glog format), e.g.
# ``I0000 00:00:1712345678.123456   27270 port.cc:153] oneDNN custom operations are on. ...``;
# the first letter is the severity: Info, Warning, Error, Fatal.
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\s\]]+:\d+\] ")
_NATIVE_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
# Printed by absl before the first logged line when logging is not initialised yet.
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written"
# The first line of what Python itself writes to stderr: a traceback or a warning.
_PYTHON_REPORT = re.compile(
    r"^(Traceback \(most recent call last\)|\S.*:\d+: \w*(Warning|Error)\b)")
# Progress lines that report a problem: kept by --quiet.
_WARNING_LINE = re.compile(r"^(\[[^\]]*\] )*warning: |: FAILED: ")


def get_logger() -> logging.Logger:
    """The ``labelreg`` logger, which the command lines' progress lines go through."""
    return logging.getLogger(_LOGGER_NAME)


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted (so a stream swapped in
    later, such as pytest's capture, receives the lines)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        # StreamHandler assigns the stream in __init__ and setStream; the lookup above wins.
        pass


def configure(verbosity: int = 0) -> None:
    """Set up console output for a command line.

    Args:
        verbosity: negative for ``--quiet`` (WARNING), 0 by default (INFO), positive for
            ``--verbose`` (DEBUG, plus TensorFlow's C++ logs).

    Installs one handler on the ``labelreg`` logger writing bare messages to stdout (calling
    this again replaces it), and, unless verbose, filters TensorFlow's import-time C++ notices
    (see :func:`quiet_tensorflow_import`). Call it before TensorFlow is imported: the
    environment variables it sets are read once, at that import.
    """
    logger = get_logger()
    for handler in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
        logger.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if verbosity < 0 else
                    logging.DEBUG if verbosity > 0 else logging.INFO)
    # The handler above is the console; a handler a library put on the root logger would
    # print every line a second time.
    logger.propagate = False
    if verbosity > 0:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ[VERBOSE_ENV] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        quiet_tensorflow_import()


def log_line(line: str) -> None:
    """Log one progress line of a method: at WARNING when it reports a problem (``warning:
    ...``, a failed pair), so ``--quiet`` keeps it, at INFO otherwise."""
    get_logger().log(logging.WARNING if _WARNING_LINE.search(line) else logging.INFO, line)


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Add ``-v/--verbose`` and ``-q/--quiet`` to ``parser``, parse ``argv`` and
    :func:`configure` the output accordingly."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true",
                       help="also print debug lines and TensorFlow's C++ start-up logs")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="hide progress lines; warnings, the final result and errors remain")
    args = parser.parse_args(argv)
    configure(int(args.verbose) - int(args.quiet))
    return args


def _verbose_native_logs() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _without_notices(text: str) -> str:
    """``text`` without absl's pre-initialisation notice and the C++ logger's records below
    ``TF_CPP_MIN_LOG_LEVEL`` (INFO when it is unset; nothing is dropped at 0, where the user
    asked for every C++ log).

    A record's message may span several lines (TensorFlow's CPU-feature note does): the lines
    after a dropped record go with it until the next record or a Python traceback or warning.
    """
    try:
        threshold = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"))
    except ValueError:
        threshold = 1
    if threshold <= 0:
        return text
    kept = []
    dropping = False
    for line in text.splitlines(keepends=True):
        match = _NATIVE_LINE.match(line)
        if match:
            dropping = _NATIVE_SEVERITY[match.group(1)] < threshold
        elif line.startswith(_ABSL_PREAMBLE):
            dropping = True
        elif dropping and _PYTHON_REPORT.match(line):
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept)


def _flush_stderr() -> None:
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()


@contextlib.contextmanager
def native_stderr_filtered() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 inside the block, then write it to
    ``sys.stderr`` without the C++ logger's informational records (see
    :func:`_without_notices`).

    The captured text is written in full if the block raises or ``LABELREG_VERBOSE`` is set
    (then nothing is captured at all). Descriptor 2 is restored in every case.
    """
    if _verbose_native_logs():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to filter
        yield
        return
    failed = True
    try:
        with tempfile.TemporaryFile() as capture:
            # Python text still buffered belongs before the block, on the real stderr.
            _flush_stderr()
            os.dup2(capture.fileno(), 2)
            try:
                yield
                failed = False
            finally:
                # Python text written inside the block was meant for stderr: into the capture.
                _flush_stderr()
                os.dup2(saved, 2)
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
                if not failed:
                    text = _without_notices(text)
                if text and sys.stderr is not None:
                    sys.stderr.write(text)
                    _flush_stderr()
    finally:
        os.close(saved)


class _FilteredLoader(importlib.abc.Loader):
    """Runs another loader's ``exec_module`` inside :func:`native_stderr_filtered`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader (resource readers, source lookups use it).
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        with native_stderr_filtered():
            self._loader.exec_module(module)


class _FilteredImportFinder(importlib.abc.MetaPathFinder):
    """Makes the first import of one top-level package, whichever module asks for it, run
    inside :func:`native_stderr_filtered`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        # One use only, and out of the way of the look-up below.
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _FilteredLoader(spec.loader)
        return spec


def quiet_tensorflow_import() -> None:
    """Filter the C++ notices of the first ``import tensorflow`` of this process (see
    :func:`native_stderr_filtered`); nothing to do once TensorFlow is imported."""
    if "tensorflow" in sys.modules or _verbose_native_logs():
        return
    # A hook on the import system rather than a filtered import here: TensorFlow is imported
    # by whichever module needs it first (often Keras), after the configuration is validated.
    if not any(isinstance(finder, _FilteredImportFinder) and finder.name == "tensorflow"
               for finder in sys.meta_path):
        sys.meta_path.insert(0, _FilteredImportFinder("tensorflow"))
