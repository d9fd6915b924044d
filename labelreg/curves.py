"""Learning curves: the validation figures of training runs against the step, as a PNG.

Every run validated during training has ``<run>/validation.csv`` (written by the trainer at
each checkpoint: ``step`` and the figures of the method's ``validate()``, e.g. ``dice``, the
median gland Dice, and ``tre_mm``, the median landmark TRE). This module draws one panel per
figure with one line per run, e.g. the folds of a cross-validation::

    python -m labelreg.curves runs/mrus --output docs/images/mrus_curve.png
    python -m labelreg.curves runs/crossval/fold*/run --output curves.png \\
        --hline dice=0.505:identity --hline tre_mm=18.98:identity

``--cases`` draws every case of evaluation CSVs instead (``python -m labelreg.evaluation``,
``crossval_cases.csv``): its landmark TRE before and after registration, cases sorted by the
registered TRE::

    python -m labelreg.curves --cases runs/crossval/crossval_cases.csv --output tre.png

``--compare`` puts several methods evaluated on the same cases side by side: one column per
method (the identity first, from the first file), every case's gland Dice and landmark TRE as
dots and the median as a bar::

    python -m labelreg.curves --compare a.csv b.csv --labels recipe NMI --output methods.png

Needs matplotlib (``pip install .[plot]``); no TensorFlow import.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelreg.errors import ConfigError, DataError, LabelregError
from labelreg.files import atomic_write_bytes

__all__ = ["FIGURE_TITLES", "read_history", "plot_learning_curves", "read_cases",
           "plot_case_tre", "comparison_columns", "plot_method_comparison", "main"]

#: Panel titles of the figures that label-driven validation reports.
FIGURE_TITLES = {
    "dice": "gland Dice (median over validation cases)",
    "tre_mm": "landmark TRE, mm (median over validation cases)",
    "dice_mean": "Dice (mean over all labels)",
    "centroid_distance_mm": "centroid distance, mm (mean over all labels)",
}


def read_history(run: str | os.PathLike) -> dict[str, list[float]]:
    """The validation history of a run.

    Args:
        run: a run folder holding ``validation.csv``, or the CSV itself.

    Returns:
        ``{"step": [...], figure: [...]}``, one entry per validated checkpoint, sorted by step;
        an empty cell is NaN.

    Raises:
        DataError: the file is missing, unreadable or has no ``step`` column or no row.
    """
    path = Path(run)
    if path.is_dir() or path.suffix != ".csv":
        path = path / "validation.csv"
    if not path.is_file():
        raise DataError(f"{path}: no validation history (a run validated during training "
                        "writes validation.csv: it needs [Data] valid_fraction or dir_valid_*, and "
                        "[Train] validate = true).")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        rows.sort(key=lambda row: int(row["step"]))
        columns = list(rows[0]) if rows else []
        history = {name: [_number(row.get(name, "")) for row in rows] for name in columns}
    except (KeyError, ValueError, TypeError, csv.Error, OSError) as err:
        raise DataError(f"{path}: not a validation history (expected a CSV with a 'step' "
                        f"column and numbers): {err}") from err
    if not rows or "step" not in history:
        raise DataError(f"{path}: the validation history has no rows.")
    return history


def _number(text: str | None) -> float:
    return float(text) if text not in (None, "") else math.nan


def _pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend.

    Raises:
        ConfigError: matplotlib is not installed (``what`` names the picture).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError(f"{what} need matplotlib: pip install '.[plot]'") from err
    return plt


def _save_png(plt: Any, fig: Any, output: str | os.PathLike) -> Path:
    """Write ``fig`` as a 110 dpi PNG, atomically, and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(output, buffer.getvalue())


def plot_learning_curves(
    runs: Mapping[str, str | os.PathLike],
    output: str | os.PathLike,
    figures: Sequence[str] = ("dice", "tre_mm"),
    hlines: Sequence[tuple[str, float, str]] = (),
    title: str | None = None,
) -> Path:
    """Draw ``figures`` against the training step for every run, one panel per figure.

    Args:
        runs: legend label -> run folder (or ``validation.csv``).
        output: the PNG to write (atomically).
        figures: columns of the histories to draw; a figure no run has is skipped.
        hlines: ``(figure, value, label)`` horizontal reference lines (e.g. the identity).
        title: the figure's title.

    Returns:
        ``output``.

    Raises:
        ConfigError: matplotlib is not installed, or no run has any of ``figures``.
        DataError: a run's history is missing or unreadable.
    """
    plt = _pyplot("learning curves")
    histories = {label: read_history(run) for label, run in runs.items()}
    shown = [name for name in figures
             if any(name in h and any(math.isfinite(v) for v in h[name])
                    for h in histories.values())]
    if not shown:
        raise ConfigError(f"none of the figures {list(figures)} is in the histories of "
                          f"{', '.join(str(r) for r in runs.values())}.")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.2 * len(shown), 3.8), squeeze=False)
    for axis, name in zip(axes[0], shown, strict=True):
        for label, history in histories.items():
            if name in history:
                axis.plot(history["step"], history[name], marker="o", markersize=3, label=label)
        for figure, value, label in hlines:
            if figure == name and math.isfinite(value):
                axis.axhline(value, linestyle="--", color="grey", linewidth=1)
                axis.annotate(label, (0.01, value), xycoords=("axes fraction", "data"),
                              va="bottom", fontsize=8, color="grey")
        axis.set_title(FIGURE_TITLES.get(name, name), fontsize=10)
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
    if len(histories) > 1:
        axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save_png(plt, fig, output)


def read_cases(path: str | os.PathLike) -> list[dict[str, float | str]]:
    """The ``row = case`` rows of an evaluation CSV (``python -m labelreg.evaluation``,
    ``crossval_cases.csv``): ``case``, ``tre_mm_identity``, ``tre_mm``, ``dice_identity``,
    ``dice`` (NaN where empty).

    Raises:
        DataError: the file is missing, unreadable or has none of those columns.
    """
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except OSError as err:
        raise DataError(f"{path}: cannot read the evaluation ({err}).") from err
    wanted = ("case", "tre_mm_identity", "tre_mm", "dice_identity", "dice")
    if not rows or any(column not in rows[0] for column in wanted):
        raise DataError(f"{path}: expected an evaluation CSV with the columns "
                        f"{', '.join(wanted)} (python -m labelreg.evaluation writes one).")
    return [{"case": row["case"], **{k: _number(row[k]) for k in wanted[1:]}}
            for row in rows if row.get("row", "case") == "case"]


def plot_case_tre(cases: Sequence[Mapping[str, float | str]], output: str | os.PathLike,
                  title: str | None = None) -> Path:
    """Per-case landmark TRE, identity and registered, cases sorted by their registered TRE;
    a segment per case from one to the other, dashed lines at the two medians.

    Args:
        cases: rows as :func:`read_cases` gives them.
        output: the PNG to write (atomically).
        title: the figure's title.

    Returns:
        ``output``.

    Raises:
        ConfigError: matplotlib is not installed, or no case has a registered TRE.
    """
    plt = _pyplot("per-case plots")
    shown = sorted((c for c in cases if math.isfinite(float(c["tre_mm"]))),
                   key=lambda c: float(c["tre_mm"]))
    if not shown:
        raise ConfigError("no case has a registered TRE to plot (no landmarks found).")
    x = list(range(len(shown)))
    before = [float(c["tre_mm_identity"]) for c in shown]
    after = [float(c["tre_mm"]) for c in shown]
    fig, axis = plt.subplots(figsize=(max(6.0, 0.16 * len(shown) + 2.0), 3.8))
    axis.vlines(x, before, after, color="lightgrey", linewidth=1)
    axis.scatter(x, before, s=14, color="tab:grey", label="identity")
    axis.scatter(x, after, s=16, color="tab:blue", label="registered")
    for values, color, name in ((before, "tab:grey", "identity"), (after, "tab:blue",
                                                                    "registered")):
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            median = statistics.median(finite)
            axis.axhline(median, linestyle="--", color=color, linewidth=1)
            axis.annotate(f"{name} median {median:.2f} mm", (0.01, median),
                          xycoords=("axes fraction", "data"), va="bottom", fontsize=8,
                          color=color)
    axis.set_xticks(x)
    axis.set_xticklabels([str(c["case"]) for c in shown], rotation=90, fontsize=6)
    axis.set_ylabel("landmark TRE (mm), mean per case")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, 0.9))
    axis.set_title(title or f"{len(shown)} cases, sorted by registered TRE", fontsize=10)
    fig.tight_layout()
    return _save_png(plt, fig, output)


def comparison_columns(tables: Mapping[str, Sequence[Mapping[str, float | str]]]
                       ) -> list[tuple[str, list[float], list[float]]]:
    """The columns of :func:`plot_method_comparison`: ``(label, gland Dice per case, landmark
    TRE per case)``, the identity first (from the first table), then one per table, every
    column in the first table's case order.

    Args:
        tables: label -> rows of :func:`read_cases`, all of the same cases.

    Raises:
        DataError: no table, or a table whose cases differ from the first's (naming both).
    """
    if not tables:
        raise DataError("no evaluation to compare.")
    labels = list(tables)
    order = [str(row["case"]) for row in tables[labels[0]]]
    columns = [("identity", [float(r["dice_identity"]) for r in tables[labels[0]]],
                [float(r["tre_mm_identity"]) for r in tables[labels[0]]])]
    for label in labels:
        rows = {str(row["case"]): row for row in tables[label]}
        if sorted(rows) != sorted(order):
            raise DataError(f"{label!r} was evaluated on other cases than {labels[0]!r} "
                            f"({len(rows)} against {len(order)}): compare the same split.")
        columns.append((label, [float(rows[c]["dice"]) for c in order],
                        [float(rows[c]["tre_mm"]) for c in order]))
    return columns


def plot_method_comparison(tables: Mapping[str, Sequence[Mapping[str, float | str]]],
                           output: str | os.PathLike, title: str | None = None) -> Path:
    """Methods side by side on the same cases: two panels (gland Dice, landmark TRE), a column
    per method (:func:`comparison_columns`), a dot per case and a bar at the median.

    Args:
        tables: label -> rows of :func:`read_cases` (evaluation CSVs of the same cases).
        output: the PNG to write (atomically).
        title: the figure's title.

    Returns:
        ``output``.

    Raises:
        ConfigError: matplotlib is not installed.
        DataError: see :func:`comparison_columns`.
    """
    columns = comparison_columns(tables)
    plt = _pyplot("method comparisons")
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.5 * len(columns) + 3.0), 4.2))
    panels = (("gland Dice (per case)", 1), ("landmark TRE, mm (mean per case)", 2))
    for axis, (name, index) in zip(axes, panels, strict=True):
        for x, column in enumerate(columns):
            values = [v for v in column[index] if math.isfinite(v)]
            color = "tab:grey" if x == 0 else f"C{(x - 1) % 10}"
            # A fixed sideways spread per case, so the dots of one column do not overlap.
            spread = [x + 0.25 * ((k % 7) / 6 - 0.5) for k in range(len(values))]
            axis.scatter(spread, values, s=12, color=color, alpha=0.8)
            if values:
                median = statistics.median(values)
                axis.hlines(median, x - 0.3, x + 0.3, color="black", linewidth=2)
                axis.annotate(f"{median:.2f}" if index == 1 else f"{median:.1f}",
                              (x + 0.32, median), va="center", fontsize=7)
        axis.set_xticks(range(len(columns)))
        axis.set_xticklabels([c[0] for c in columns], rotation=30, ha="right", fontsize=8)
        axis.set_title(name, fontsize=10)
        axis.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save_png(plt, fig, output)


def _parse_hline(text: str) -> tuple[str, float, str]:
    """``FIGURE=VALUE[:LABEL]`` -> ``(figure, value, label)``."""
    head, _, label = text.partition(":")
    figure, sep, value = head.partition("=")
    try:
        if not sep or not figure:
            raise ValueError(text)
        return figure.strip(), float(value), label.strip()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FIGURE=VALUE[:LABEL], e.g. dice=0.505:identity; received {text!r}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labelreg.curves``; returns the exit code (0 done, 2 a missing history or
    matplotlib, with the message on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m labelreg.curves",
        description="Validation figures of training runs against the step, as a PNG.")
    parser.add_argument("runs", nargs="+", help="run folders (or their validation.csv)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="legend labels, one per run (default: the folder names)")
    parser.add_argument("--figures", nargs="+", default=["dice", "tre_mm"],
                        help="columns of validation.csv to draw (default: dice tre_mm)")
    parser.add_argument("--hline", action="append", default=[], type=_parse_hline,
                        metavar="FIGURE=VALUE[:LABEL]",
                        help="a horizontal reference line, e.g. dice=0.505:identity "
                             "(repeatable)")
    parser.add_argument("--title", default=None, help="the figure's title")
    parser.add_argument("--cases", action="store_true",
                        help="the inputs are evaluation CSVs (python -m labelreg.evaluation, "
                             "crossval_cases.csv): draw every case's TRE, identity and "
                             "registered, instead of learning curves")
    parser.add_argument("--compare", action="store_true",
                        help="the inputs are evaluation CSVs of the same cases, one per method "
                             "(--labels names them): draw the methods side by side, identity "
                             "first")
    from labelreg.logs import parse_args

    args = parse_args(parser, argv)
    if args.compare or not args.cases:
        default = (lambda path: Path(path).stem) if args.compare else _run_label
        labels = args.labels or [default(run) for run in args.runs]
        if len(labels) != len(args.runs):
            parser.error(f"--labels needs one label per input ({len(args.runs)}); "
                         f"received {len(labels)}.")
    try:
        if args.compare:
            tables = {label: read_cases(path)
                      for label, path in zip(labels, args.runs, strict=True)}
            output = plot_method_comparison(tables, args.output, args.title)
        elif args.cases:
            cases = [row for path in args.runs for row in read_cases(path)]
            output = plot_case_tre(cases, args.output, args.title)
        else:
            output = plot_learning_curves(dict(zip(labels, args.runs, strict=True)),
                                          args.output, args.figures, args.hline, args.title)
    except LabelregError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


def _run_label(run: str) -> str:
    path = Path(run)
    path = path.parent if path.suffix == ".csv" else path
    # A cross-validation fold's run is <output>/fold<k>/run: name it by its fold.
    return path.parent.name if path.name == "run" else path.name


if __name__ == "__main__":
    sys.exit(main())
