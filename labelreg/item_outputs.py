"""The inference contract every method keeps: one output folder per item, written whole or not at
all, with failures listed and the other items kept.

An *item* is what one inference step registers and writes: a NIfTI pair, a pair of consecutive
TIFF-stack frames, a learnsim test pair. For an output folder ``dir_save``:

- each item is written into a hidden staging folder ``<dir_save>/.<item>.partial-*`` and renamed
  to ``<dir_save>/<item>/`` only once every file is in it, so an item folder is always complete;
  staging folders a crash left behind are removed by the next run;
- an item whose folder already holds every expected file is skipped, unless ``overwrite``
  (``inference.py --overwrite``);
- an item that cannot be read, computed or written is logged, listed in
  ``<dir_save>/failed.csv`` (``case,file,error``) and has no folder, while the others go on;
  :func:`raise_if_failed` then ends the command with :class:`~labelreg.errors.PartialFailure`
  (exit code 1, the other items written);
- ``<dir_save>/metrics.csv`` is rebuilt at the end from every item folder's ``metrics.csv``, so
  it covers the items of earlier runs too.

This module imports no TensorFlow and nothing above the building blocks, so every method's
inference can use it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from labelreg.errors import DataError, PartialFailure
from labelreg.files import (
    check_writable,
    hidden_sibling,
    publish_folder,
    read_csv,
    remove_folder,
    remove_stale,
    write_csv,
)

__all__ = ["ItemFailure", "FailedItem", "ItemsResult", "ItemOutputs", "FAILED_COLUMNS",
           "raise_if_failed"]

#: Columns of ``<dir_save>/failed.csv``.
FAILED_COLUMNS = ("case", "file", "error")


class ItemFailure(Exception):
    """One item cannot be used; ``file`` is the file at fault ("" when no single file is)."""

    def __init__(self, file: Path | str, reason: str) -> None:
        super().__init__(reason)
        self.file = str(file)
        self.reason = reason


class FailedItem(NamedTuple):
    """An item that could not be registered: its name, the file at fault ("" when no single
    file is), and the reason."""

    case: str
    file: str
    error: str


@dataclass
class ItemsResult:
    """What one inference run wrote.

    Attributes:
        dir_save: the output folder.
        cases: the items whose outputs are in ``dir_save`` after the run (registered now or
            skipped), in input order.
        rows: the metrics rows of those items (empty when items write no ``metrics.csv``).
        registered: the items computed by this run.
        skipped: the items left as they were because an earlier run had written them.
        failed: the items that could not be registered (also in ``<dir_save>/failed.csv``).
        noun: what an item is, for messages (``pair``, ``frame pair``).
    """

    dir_save: Path
    cases: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    registered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[FailedItem] = field(default_factory=list)
    noun: str = "pair"

    def mean(self, column: str, label_index: int | None = 0) -> float:
        """Mean of a metrics column over the rows (of one ``label_index`` when the rows have
        that column; ``None`` = every row); NaN without rows."""
        values = [r[column] for r in self.rows
                  if label_index is None or r.get("label_index", label_index) == label_index]
        return float(np.nanmean(values)) if values else float("nan")

    def summary(self) -> str:
        """One line, e.g. ``registered 99 of 100 pairs; 1 failed, see <dir_save>/failed.csv``."""
        total = len(self.cases) + len(self.failed)
        line = f"registered {len(self.cases)} of {total} {self.noun}s"
        if self.skipped:
            line += f" ({len(self.skipped)} by an earlier run)"
        if self.failed:
            line += f"; {len(self.failed)} failed, see {self.dir_save / 'failed.csv'}"
        return line


class ItemOutputs:
    """The output folder of one inference run; see the module docstring for the contract.

    Args:
        dir_save: the output folder (created when missing).
        expected: the files of a complete item folder under the current settings.
        overwrite: recompute items whose folder is complete instead of skipping them.
        log: where progress, skipped and failed items go.
        key: the setting that names ``dir_save``, for messages.
        noun: what an item is, for messages.
    """

    def __init__(self, dir_save: str | Path, expected: Sequence[str], overwrite: bool = False,
                 log: Callable[[str], None] = print, key: str = "[Inference] dir_save",
                 noun: str = "pair") -> None:
        self.dir_save = Path(dir_save)
        self.expected = tuple(expected)
        self.overwrite = overwrite
        self.log = log
        self.key = key
        self.noun = noun
        self.registered: list[str] = []
        self.skipped: list[str] = []
        self.failed: list[FailedItem] = []

    def check(self) -> None:
        """Fail before any work when ``dir_save`` cannot be created or written.

        Raises:
            DataError: naming the folder and the setting.
        """
        check_writable(self.dir_save, self.key)

    def open(self) -> None:
        """Create ``dir_save`` and remove what an interrupted run left in it.

        Raises:
            DataError: the folder cannot be prepared.
        """
        self.check()
        try:
            self.dir_save.mkdir(parents=True, exist_ok=True)
            remove_stale(self.dir_save)
        except OSError as err:
            raise DataError(f"{self.dir_save}: cannot prepare the output folder ({self.key}): "
                            f"{err}.") from err

    def is_complete(self, name: str) -> bool:
        folder = self.dir_save / name
        return folder.is_dir() and all((folder / f).is_file() for f in self.expected)

    def plan(self, names: Iterable[str]) -> list[str]:
        """The items to compute, in order: those not complete yet, or all with ``overwrite``.
        Logs how many are skipped."""
        names = list(names)
        self.skipped = [] if self.overwrite else [n for n in names if self.is_complete(n)]
        skipped = frozenset(self.skipped)
        if self.skipped:
            self.log(f"skipped {len(self.skipped)} already registered {self.noun}s "
                     "(--overwrite redoes them)")
        return [n for n in names if n not in skipped]

    def fail(self, name: str, failure: BaseException) -> None:
        """Record a failed item and drop any older ``<item>/`` folder, which is now stale."""
        if isinstance(failure, ItemFailure):
            file, reason = failure.file, failure.reason
        else:  # e.g. a label the metrics cannot handle: the item is lost, not the run
            file, reason = "", f"{type(failure).__name__}: {failure}"
        self.failed.append(FailedItem(name, file, reason))
        self.log(f"{name}: FAILED: {reason}")
        remove_folder(self.dir_save / name)

    def write(self, name: str, fill: Callable[[Path], None]) -> bool:
        """Write one item: ``fill(folder)`` writes its files into a staging folder, which is then
        renamed to ``<dir_save>/<name>/``. Any exception fails this item only.

        Returns:
            whether the item was written.
        """
        target = self.dir_save / name
        # Not tempfile.mkdtemp: it makes a private (0700) folder, and this one becomes the
        # item's folder with the umask's permissions.
        staging = hidden_sibling(target, "partial")
        try:
            try:
                staging.mkdir()
            except OSError as err:
                raise ItemFailure(target, f"{target}: cannot be written ({err})") from err
            try:
                fill(staging)
            except OSError as err:
                raise ItemFailure(target, f"{target}: cannot be written ({err})") from err
            try:
                publish_folder(staging, target)
            except OSError as err:
                raise ItemFailure(target, f"{target}: cannot be moved into place ({err})") from err
        except Exception as err:  # noqa: BLE001 - one item fails, the run goes on
            self.fail(name, err)
            return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.registered.append(name)
        return True

    def finish(self, names: Sequence[str], columns: Sequence[str] | None = None,
               text_columns: Sequence[str] = ("case",), int_columns: Sequence[str] = ()
               ) -> ItemsResult:
        """Rebuild ``metrics.csv`` from the item folders (when ``columns`` is given), rewrite
        ``failed.csv``, log the summary line.

        Args:
            names: every item of the run, in order (computed, skipped or failed).
            columns: the metrics table's columns; ``None`` = items write no metrics.
            text_columns / int_columns: how to read the item tables back (:func:`read_csv`).

        Raises:
            DataError: an item table cannot be read back, or the summary tables written.
        """
        done = set(self.registered) | set(self.skipped)
        result = ItemsResult(self.dir_save, [n for n in names if n in done],
                             registered=list(self.registered), skipped=list(self.skipped),
                             failed=list(self.failed), noun=self.noun)
        if columns is not None:
            for name in result.cases:
                path = self.dir_save / name / "metrics.csv"
                try:
                    result.rows.extend(read_csv(path, text_columns, int_columns))
                except (OSError, ValueError, TypeError, KeyError) as err:
                    raise DataError(f"{path}: cannot be read back into metrics.csv "
                                    f"({type(err).__name__}: {err}); remove the folder "
                                    f"{path.parent} or rerun with --overwrite.") from err
        try:
            if result.rows:
                write_csv(self.dir_save / "metrics.csv", result.rows, columns)
            else:  # a table of other settings' items would be stale
                (self.dir_save / "metrics.csv").unlink(missing_ok=True)
            if result.failed:
                write_csv(self.dir_save / "failed.csv",
                          [f._asdict() for f in result.failed], FAILED_COLUMNS)
            else:
                (self.dir_save / "failed.csv").unlink(missing_ok=True)
        except OSError as err:
            raise DataError(f"{self.dir_save}: cannot write the summary tables metrics.csv / "
                            f"failed.csv ({err}); the item folders are complete, rerun to write "
                            "them.") from err
        self.log(result.summary())
        return result


def raise_if_failed(result: ItemsResult, lines: list[str]) -> list[str]:
    """``lines`` when every item was written, else :class:`PartialFailure` carrying them (the
    command prints them and exits with code 1)."""
    if result.failed:
        names = ", ".join(item.case for item in result.failed[:5])
        more = ", ..." if len(result.failed) > 5 else ""
        raise PartialFailure(f"{len(result.failed)} {result.noun}(s) failed ({names}{more}); see "
                             f"{result.dir_save / 'failed.csv'}", lines)
    return lines
