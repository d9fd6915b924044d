"""k-fold cross-validation of a registration config: train on k-1 folds, evaluate the held-out one.

``python -m labelreg.crossval config.ini [--folds 5] [--seed 0] [--set ...] [--dir DIR]
[--groups CSV] [--inner-valid FRACTION] [--add-cases DIR ...] [--fold K ...]``:

1. The training cases of the config (``[Data] dir_*``), the validation cases when
   ``[Data] dir_valid_*`` are set with labels, and the cases of each ``--add-cases DIR`` are
   pooled by case name and shuffled with ``--seed`` (NumPy's ``default_rng``), then cut into
   ``--folds`` folds of near-equal size (``numpy.array_split``). Every case is validated in
   exactly one fold. With ``--groups CSV`` (``case,group`` rows, e.g. a patient ID per case;
   default the config's ``[Data] case_groups``) whole groups are shuffled and dealt to the
   smallest fold instead, so the cases of one patient never sit on both sides of a fold. With
   ``--inner-valid FRACTION`` (default the config's ``[Data] valid_fraction``) whole groups of
   each fold's training cases, about that fraction, are set aside as the fold's inner
   validation split (:func:`make_inner_split`, seeded with ``seed + k``).
2. Fold ``k`` (1-based) gets ``DIR/fold<k>/train/``, ``DIR/fold<k>/valid/`` (its held-out
   cases) and, with an inner split, ``DIR/fold<k>/inner/``, each with the four folders
   ``moving_images``, ``fixed_images``, ``moving_labels``, ``fixed_labels`` of symbolic links
   to the original files (copies where links cannot be made).
3. The config is trained with those folders as ``[Data] dir_*`` / ``dir_valid_*`` and the run
   folder ``DIR/fold<k>/run`` (``--set`` overrides apply to every fold), through the one trainer
   (:func:`labelreg.engine.train`). Validation at checkpoints (the curve, ``keep_best``) uses
   the inner split when there is one, else the held-out fold; ``keep_best`` without an inner
   split is refused, since it would choose the checkpoint on the cases reported.
4. The fold's checkpoint (the one ``keep_best`` kept, else the latest;
   :func:`fold_checkpoint`) is evaluated on its held-out cases with
   :func:`labelreg.evaluation.evaluate` (gland Dice and landmark TRE beside the identity;
   ``DIR/fold<k>/evaluation.csv``).

``DIR/crossval.csv`` has one row per fold and a last ``pooled`` row (:data:`CROSSVAL_COLUMNS`):
the validated cases, the median gland Dice and median TRE (mm) over them, identity and
registered, the counted and lost landmarks, and the training wall time in seconds (summed over
the runs of the command that trained the fold). The pooled row takes the medians over all
validated cases of all folds; ``DIR/crossval_cases.csv`` holds those cases' evaluation rows.
``DIR/crossval_curves.png`` draws every fold's validation Dice and TRE against the step, and
``DIR/crossval_tre.png`` every held-out case's TRE before and after registration
(:mod:`labelreg.curves`; skipped with a note when matplotlib is not installed).

Rerunning the command resumes: a fold whose run already reached ``[Train] total_iterations`` is
not trained again (the trainer says "nothing to do"), a fold interrupted part-way resumes from its
latest checkpoint, and the evaluation of every fold is redone (it is cheap). ``DIR/folds.json``
records the split; a rerun whose split differs (another seed, fold count or set of cases) stops
with an error rather than mixing runs of two splits.

``--fold K`` (repeatable) trains and evaluates only fold ``K`` of the same split and writes no
table, so the folds can run at the same time on separate devices or machines that share ``DIR``
(e.g. one process per CPU core pinned with ``taskset``). A last run without ``--fold`` then finds
every fold trained and writes the tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from labelreg.cli import command_parser, run_command
from labelreg.data.nifti import PairedDataset
from labelreg.data.splits import read_groups, split_by_group
from labelreg.errors import ConfigError, DataError, LabelregError
from labelreg.files import atomic_write_text
from labelreg.logs import log_line
from labelreg.scoring import (
    CaseResult,
    EvaluationTable,
    evaluate,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from labelreg.config import Config

__all__ = ["CROSSVAL_COLUMNS", "FOLDERS", "FoldResult", "CrossValidation", "pool_cases",
           "make_folds", "make_inner_split", "FoldPlan", "plan_folds", "read_groups", "fold_checkpoint", "cross_validate",
           "main"]

#: ``(role, folder name)`` of the four folders of a fold's ``train/`` and ``valid/``.
FOLDERS = (("moving_image", "moving_images"), ("fixed_image", "fixed_images"),
           ("moving_label", "moving_labels"), ("fixed_label", "fixed_labels"))

#: Columns of ``crossval.csv``.
CROSSVAL_COLUMNS = ("fold", "cases", "dice_identity", "dice", "tre_mm_identity", "tre_mm",
                    "landmarks", "lost", "lost_identity", "train_seconds")


@dataclass
class FoldResult:
    """One fold: its held-out cases, their evaluation, and its training."""

    fold: int  # 1-based
    cases: list[str]
    table: EvaluationTable
    train_seconds: float  # wall time of train() over the runs that trained steps
    last_step: int

    def row(self) -> dict[str, Any]:
        """This fold's row of ``crossval.csv``."""
        return _summary_row(str(self.fold), self.table, self.train_seconds)


def _summary_row(label: str, table: EvaluationTable, seconds: float) -> dict[str, Any]:
    s = table.summary()
    return {"fold": label, "cases": int(s["cases"]), "dice_identity": s["dice_identity_median"],
            "dice": s["dice_median"], "tre_mm_identity": s["tre_mm_identity_median"],
            "tre_mm": s["tre_mm_median"], "landmarks": int(s["landmarks"]),
            "lost": int(s["lost"]), "lost_identity": int(s["lost_identity"]),
            "train_seconds": float(seconds)}


@dataclass
class CrossValidation:
    """What :func:`cross_validate` produced."""

    directory: Path
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def pooled(self) -> EvaluationTable:
        """Every validated case of every fold, in fold order."""
        rows: list[CaseResult] = [row for fold in self.folds for row in fold.table.rows]
        return EvaluationTable(rows)

    def rows(self) -> list[dict[str, Any]]:
        """The rows of ``crossval.csv``: one per fold, then ``pooled``."""
        total = sum(fold.train_seconds for fold in self.folds)
        return [fold.row() for fold in self.folds] + [_summary_row("pooled", self.pooled, total)]

    def format(self) -> str:
        """The printed table (medians over each fold's validated cases, then pooled)."""
        header = (f"{'fold':<7} {'cases':>5}  {'Dice id':>8}  {'Dice':>8}  {'TRE id mm':>9}  "
                  f"{'TRE mm':>9}  {'landmarks':>9}  {'lost':>4}  {'train s':>8}")
        lines = [header, "-" * len(header)]

        def text(value: float, digits: int) -> str:
            return "-" if math.isnan(value) else f"{value:.{digits}f}"

        for i, row in enumerate(self.rows()):
            if i == len(self.folds):
                lines.append("-" * len(header))
            lines.append(
                f"{row['fold']:<7} {row['cases']:>5}  {text(row['dice_identity'], 3):>8}  "
                f"{text(row['dice'], 3):>8}  {text(row['tre_mm_identity'], 2):>9}  "
                f"{text(row['tre_mm'], 2):>9}  {row['landmarks']:>9}  {row['lost']:>4}  "
                f"{row['train_seconds']:>8.1f}")
        return "\n".join(lines)

    def write(self) -> Path:
        """Write ``crossval.csv`` and ``crossval_cases.csv`` in :attr:`directory`; returns the
        first."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(CROSSVAL_COLUMNS))
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else
                                 f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})
        self.pooled.write_csv(self.directory / "crossval_cases.csv")
        return atomic_write_text(self.directory / "crossval.csv", buffer.getvalue())


# -- the split -----------------------------------------------------------------------------------


def pool_cases(cfg: Config, extra: Sequence[str | os.PathLike] = ()) -> dict[str, dict[str, Path]]:
    """The files of every case to cross-validate, ``{case: {role: file}}``, in name order.

    The training folders of ``[Data]``, plus the validation folders when they are set with
    labels, plus each folder of ``extra`` (``--add-cases``: a folder holding
    ``moving_images``, ``fixed_images``, ``moving_labels`` and ``fixed_labels``).

    Raises:
        ConfigError: the config has no training labels.
        DataError: unreadable or missing folders, or a case name in two of the pooled folders.
    """
    data = cfg["Data"]
    if data.get("dir_moving_label") is None:
        raise ConfigError(f"{cfg.path}: [Data] dir_moving_label and dir_fixed_label are not "
                          "set; cross-validation evaluates gland Dice and landmark TRE, which "
                          "need labels.")
    sets = [[data[f"dir_{role}"] for role, _ in FOLDERS]]
    if data.get("dir_valid_moving_image") is not None and \
            data.get("dir_valid_moving_label") is not None:
        sets.append([data[f"dir_valid_{role}"] for role, _ in FOLDERS])
    for folder in extra:
        if not Path(folder).is_dir():
            raise DataError(f"--add-cases {folder}: folder not found; expected a folder holding "
                            f"{', '.join(name for _, name in FOLDERS)}.")
        sets.append([Path(folder) / name for _, name in FOLDERS])
    files: dict[str, dict[str, Path]] = {}
    where: dict[str, Path] = {}
    for folders in sets:
        paired = PairedDataset(*folders)
        for i, name in enumerate(paired.names):
            if name in files:
                raise DataError(
                    f"case {name!r} is in both {where[name]} and {folders[0]}; cases are "
                    "pooled by name, so names must be unique.")
            files[name] = {role: paired.file(role, i) for role, _ in FOLDERS}
            where[name] = Path(folders[0])
    return dict(sorted(files.items()))


def make_folds(names: Sequence[str], folds: int, seed: int = 0,
               groups: Mapping[str, str] | None = None) -> list[list[str]]:
    """Shuffle ``names`` with ``seed`` and cut them into ``folds`` near-equal folds (each sorted).

    Without ``groups`` the shuffled names are cut with ``numpy.array_split``. With ``groups``
    (``{case: group}``, e.g. a patient ID) the groups are shuffled instead and each goes whole to
    the fold that holds the fewest cases so far (the first such fold on a tie), so no group is
    split between training and validation.

    Raises:
        ConfigError: ``folds`` < 2, more folds than names (or than groups), or a name without
            a group.
    """
    names = sorted(names)
    if int(folds) < 2:
        raise ConfigError(f"--folds {folds}: expected at least 2 folds.")
    if int(folds) > len(names):
        raise ConfigError(f"--folds {folds}: there are only {len(names)} cases to split; expected "
                          f"2..{len(names)} folds.")
    rng = np.random.default_rng(int(seed))
    if groups is None:
        order = rng.permutation(len(names))
        return [sorted(names[i] for i in part) for part in np.array_split(order, int(folds))]
    missing = [name for name in names if name not in groups]
    if missing:
        raise ConfigError(f"groups: no group for the case(s) {', '.join(missing[:5])}"
                          f"{' ...' if len(missing) > 5 else ''}; expected one per case.")
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(groups[name], []).append(name)
    if int(folds) > len(members):
        raise ConfigError(f"--folds {folds}: the {len(names)} cases form only {len(members)} "
                          f"groups, and a group is never split; expected 2..{len(members)} folds.")
    keys = sorted(members)
    parts: list[list[str]] = [[] for _ in range(int(folds))]
    for i in rng.permutation(len(keys)):
        smallest = min(range(len(parts)), key=lambda k: len(parts[k]))
        parts[smallest] += members[keys[i]]
    return [sorted(part) for part in parts]


def make_inner_split(names: Sequence[str], fraction: float, seed: int = 0,
                     groups: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Split one fold's training cases into ``(train, inner)``: ``inner`` validates the run
    (checkpoint selection with ``[Train] keep_best``, the validation curve), so nothing is
    chosen on the held-out fold. This is :func:`labelreg.data.splits.split_by_group`.

    Raises:
        ConfigError: ``fraction`` outside (0, 1), or fewer than two groups.
    """
    return split_by_group(names, fraction, seed, groups, setting="--inner-valid")


@dataclass
class FoldPlan:
    """The cases of one fold: what trains, what validates the run (``inner``; empty without an
    inner split) and what is held out for evaluation (``valid``), each sorted."""

    train: list[str]
    inner: list[str]
    valid: list[str]


def plan_folds(names: Sequence[str], folds: int, seed: int = 0,
               groups: Mapping[str, str] | None = None,
               inner_valid: float = 0.0) -> list[FoldPlan]:
    """:func:`make_folds`, then for fold ``k`` (1-based) the training cases, less an inner
    validation split of about ``inner_valid`` of them (:func:`make_inner_split` with seed
    ``seed + k``) when ``inner_valid`` > 0.

    Raises:
        ConfigError: as :func:`make_folds` and :func:`make_inner_split`.
    """
    plans = []
    for k, valid in enumerate(make_folds(names, folds, seed, groups), start=1):
        rest = sorted(set(names) - set(valid))
        train, inner = (make_inner_split(rest, inner_valid, seed + k, groups) if inner_valid
                        else (rest, []))
        plans.append(FoldPlan(train, inner, valid))
    return plans


def _check_split(directory: Path, folds: list[list[str]], seed: int,
                 inner: list[list[str]] | None = None) -> None:
    """Record the split in ``folds.json``, or check that it is the one recorded there."""
    path = directory / "folds.json"
    record: dict[str, Any] = {"folds": len(folds), "seed": int(seed), "valid": folds}
    if inner is not None:
        record["inner"] = inner
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: unreadable ({err}); remove it or pass another --dir.") \
                from err
        if old.get("valid") != folds or old.get("inner") != record.get("inner"):
            raise ConfigError(
                f"{directory}: holds a cross-validation of another split (--folds "
                f"{old.get('folds')}, --seed {old.get('seed')}, other --groups or --inner-valid, "
                "or other cases); "
                "its runs would be mixed with this one's. Pass another --dir, or remove that "
                "folder.")
        return
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def _place(source: Path, target: Path) -> None:
    """``target`` becomes a link to ``source`` (a copy where links cannot be made)."""
    if target.is_symlink() and Path(os.readlink(target)) == source:
        return
    if target.exists() or target.is_symlink():
        if target.is_symlink() or not target.is_file():
            target.unlink()
        elif target.stat().st_size == source.stat().st_size:
            return  # a copy made by an earlier run
        else:
            target.unlink()
    try:
        target.symlink_to(source)
    except OSError:  # e.g. a file system or platform without symbolic links
        shutil.copy2(source, target)


def make_fold_folders(fold_dir: Path, train: Sequence[str], valid: Sequence[str],
                      files: dict[str, dict[str, Path]],
                      inner: Sequence[str] | None = None) -> dict[str, dict[str, Path]]:
    """Fill ``fold_dir/train``, ``fold_dir/valid`` (the held-out cases) and, with ``inner``,
    ``fold_dir/inner`` (see the module docstring), removing any entry an earlier run left that
    is not part of this fold.

    Returns:
        ``{"train": {role: folder}, "valid": {role: folder}[, "inner": {role: folder}]}``.
    """
    out: dict[str, dict[str, Path]] = {}
    parts = [("train", train), ("valid", valid)]
    if inner is not None:
        parts.append(("inner", inner))
    for part, cases in parts:
        out[part] = {}
        for role, name in FOLDERS:
            folder = fold_dir / part / name
            folder.mkdir(parents=True, exist_ok=True)
            wanted = {files[case][role].name: files[case][role].absolute() for case in cases}
            for entry in folder.iterdir():
                if entry.name not in wanted:
                    entry.unlink()
            for file_name, source in wanted.items():
                _place(source, folder / file_name)
            out[part][role] = folder
    return out


def fold_overrides(cfg: Config, folders: dict[str, dict[str, Path]], run_dir: Path) -> list[str]:
    """The ``Section.key=value`` settings that point a config at one fold's folders and run."""
    overrides = []
    validation = folders.get("inner", folders["valid"])
    for role, _ in FOLDERS:
        overrides.append(f"Data.dir_{role}={folders['train'][role]}")
        overrides.append(f"Data.dir_valid_{role}={validation[role]}")
    checkpoint = Path(cfg["Train"]["file_model_save"]).name
    overrides += [f"Train.dir_run={run_dir}", f"Train.file_model_save={run_dir / checkpoint}",
                  f"Train.dir_tensorboard={run_dir / 'tensorboard'}"]
    if "demo_data" in cfg["Data"]:
        overrides.append("Data.demo_data=")  # the fold's folders already hold the data
    if "valid_fraction" in cfg["Data"]:
        overrides.append("Data.valid_fraction=0")  # the fold's own validation folders serve
    if cfg.has_section("Inference"):
        overrides += [f"Inference.file_model_saved={run_dir / checkpoint}",
                      f"Inference.dir_save={run_dir / 'inference'}"]
    return overrides


# -- the run -------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def fold_checkpoint(cfg: Config, run_dir: Path) -> Path:
    """The checkpoint a fold is evaluated with: the one ``[Train] keep_best`` kept
    (``<run>/best``) when the config keeps one, else the run's latest."""
    best = run_dir / "best"
    if cfg["Train"].get("keep_best", "none") != "none" and (best / "best.json").is_file():
        return best
    return run_dir


def _evaluate_fold(cfg: Config, run_dir: Path, valid: dict[str, Path]) -> EvaluationTable:
    """The held-out cases of a fold registered by its checkpoint (:func:`fold_checkpoint`)."""
    from labelreg.infer import load_trained_model
    from labelreg.networks.apply import inference_ddf

    paired = PairedDataset(*(valid[role] for role, _ in FOLDERS))
    model, meta, _ = load_trained_model(fold_checkpoint(cfg, run_dir))
    inference = cfg["Inference"] if "Inference" in cfg else {}
    return evaluate(inference_ddf(model, inference), paired,
                    spacing=paired.fixed_spacings(tuple(cfg["Data"].get("voxel_spacing", ()))),
                    normalise=bool(meta.get("normalise", True)),
                    batch_size=int(cfg["Train"]["minibatch_size"]),
                    label_interpolation=inference.get("label_interpolation", "linear"))


def _run_fold(k: int, count: int, plan: FoldPlan, fold_dir: Path,
              files: dict[str, dict[str, Path]], config: str | os.PathLike,
              overrides: Sequence[str], cfg: Config,
              log: Callable[[str], None]) -> FoldResult:
    """Train fold ``k`` of ``count`` (or resume it) in ``fold_dir`` and evaluate its held-out
    cases; see the module docstring."""
    from labelreg.engine import train
    from labelreg.methods.registry import load_config

    training, inner, valid = plan.train, plan.inner, plan.valid
    # An inner split always holds a group, so an empty one means there is none.
    folders = make_fold_folders(fold_dir, training, valid, files, inner or None)
    run_dir = fold_dir / "run"
    _, fold_cfg = load_config(config, [*overrides, *fold_overrides(cfg, folders, run_dir)])
    prefix = f"[fold {k}/{count}] "
    if inner:
        log(f"{prefix}training on {len(training)} cases, choosing on {len(inner)} "
            f"({', '.join(inner)}), reporting {len(valid)}: {', '.join(valid)}")
    else:
        log(f"{prefix}training on {len(training)} cases, validating on {len(valid)}: "
            f"{', '.join(valid)}")
    record_path = fold_dir / "fold.json"
    record = _read_json(record_path)
    tic = time.perf_counter()
    trained = train(fold_cfg, log=lambda line, p=prefix: log(p + line))
    seconds = float(record.get("train_seconds", 0.0))
    if trained.last_step > trained.first_step:
        seconds += time.perf_counter() - tic
    atomic_write_text(record_path, json.dumps(
        {"valid": valid, "inner": inner, "train_seconds": seconds,
         "last_step": trained.last_step},
        indent=2) + "\n")
    if trained.interrupted:
        log(f"{prefix}interrupted at step {trained.last_step}; rerun the same command to "
            "resume")
        raise KeyboardInterrupt
    table = _evaluate_fold(fold_cfg, run_dir, folders["valid"])
    table.write_csv(fold_dir / "evaluation.csv")
    fold = FoldResult(k, list(valid), table, seconds, trained.last_step)
    row = fold.row()
    log(f"{prefix}gland Dice {row['dice_identity']:.3f} -> {row['dice']:.3f}, TRE "
        f"{row['tre_mm_identity']:.2f} -> {row['tre_mm']:.2f} mm (medians), "
        f"{row['lost']} of {row['landmarks']} landmarks lost")
    return fold


def cross_validate(
    config: str | os.PathLike,
    folds: int = 5,
    seed: int = 0,
    overrides: Sequence[str] = (),
    directory: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    only: Sequence[int] | None = None,
    groups: str | os.PathLike | None = None,
    inner_valid: float | None = None,
    extra: Sequence[str | os.PathLike] = (),
) -> CrossValidation:
    """Run (or resume) a k-fold cross-validation of an INI config; see the module docstring.

    Args:
        config: the INI file.
        folds: number of folds, 2..number of pooled cases.
        seed: seed of the shuffle that assigns cases to folds.
        overrides: ``Section.key=value`` settings applied to every fold.
        directory: the cross-validation folder (default ``<[Train] dir_run>/crossval``).
        log: where progress lines go (the trainer's lines carry a ``[fold k/K]`` prefix).
        only: 1-based folds to train and evaluate (default all). With a subset the result holds
            those folds and no table or picture is written.
        groups: a CSV file of ``case,group`` rows (:func:`read_groups`), e.g. patient IDs: the
            cases of one group are validated in the same fold. Default: the config's
            ``[Data] case_groups``, if set.
        inner_valid: the fraction of each fold's training cases (whole groups,
            :func:`make_inner_split`) that validates its run instead of the held-out fold, so
            that ``keep_best`` and the validation curve choose nothing on the cases reported;
            0 = validate on the held-out fold (then ``keep_best`` is refused). Default: the
            config's ``[Data] valid_fraction``.
        extra: more case folders to pool (:func:`pool_cases`).

    Returns:
        The folds' results; ``crossval.csv`` and ``crossval_cases.csv`` are written when every
        fold was run.

    Raises:
        ConfigError: a bad config or override, fewer than 2 or more folds than cases, a fold
            left with fewer training cases than ``[Train] minibatch_size``, a ``directory``
            that holds another split, or an ``only`` fold outside 1..folds.
        DataError: unreadable data or an unwritable folder.
        KeyboardInterrupt: training was interrupted (its last step is saved; rerun to resume).
    """
    from labelreg.methods.registry import load_config

    if not Path(config).is_file():
        raise ConfigError(f"{config}: config file not found.")
    _, cfg = load_config(config, overrides)
    if "dir_valid_moving_image" not in (cfg["Data"] if "Data" in cfg else {}):
        raise ConfigError(f"{config}: cross-validation needs a method trained on NIfTI folders "
                          "([Data] dir_* with labels).")
    if cfg["Data"].get("demo_data") is not None:
        from labelreg.data.demo import generate_demo_data

        generate_demo_data(cfg["Data"]["demo_data"])
    files = pool_cases(cfg, extra)
    if inner_valid is None:
        inner_valid = float(cfg["Data"].get("valid_fraction") or 0.0)
    if groups is None:
        groups = cfg["Data"].get("case_groups")
    group_of = None if groups is None else read_groups(groups, list(files))
    plans = plan_folds(list(files), folds, seed, group_of, inner_valid)
    keep_best = cfg["Train"].get("keep_best", "none")
    if keep_best != "none" and not inner_valid:
        raise ConfigError(
            f"{cfg.path}: [Train] keep_best = {keep_best} would choose each fold's checkpoint on "
            "the held-out cases it reports; pass --inner-valid (e.g. 0.2) to choose it on "
            "training patients, or --set Train.keep_best=none.")
    batch = int(cfg["Train"]["minibatch_size"])
    smallest = min(len(plan.train) for plan in plans)
    if smallest < batch:
        raise ConfigError(f"{cfg.path}: [Train] minibatch_size = {batch}, but with {len(plans)} "
                          f"folds of {len(files)} cases a fold trains on only {smallest}; use "
                          "fewer folds or a smaller minibatch_size.")
    selected = sorted(set(range(1, len(plans) + 1) if only is None else only))
    for k in selected:
        if not 1 <= int(k) <= len(plans):
            raise ConfigError(f"--fold {k}: expected a fold number in 1..{len(plans)}.")
    directory = Path(directory if directory is not None else
                     Path(cfg["Train"]["dir_run"]) / "crossval").absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{directory}: cannot create the cross-validation folder ({err}).") \
            from err
    _check_split(directory, [plan.valid for plan in plans], seed,
                 [plan.inner for plan in plans] if inner_valid else None)
    grouping = "" if group_of is None else f" of {len(set(group_of.values()))} groups"
    log(f"{len(plans)}-fold cross-validation of {len(files)} cases{grouping} (seed {seed}) in "
        f"{directory}" + (f"; each fold validates on {inner_valid:g} of its training cases"
                          if inner_valid else ""))

    result = CrossValidation(directory)
    for k, plan in enumerate(plans, start=1):
        if k not in selected:
            continue
        result.folds.append(_run_fold(
            k, len(plans), plan, directory / f"fold{k}", files, config,
            overrides, cfg, log))
    if len(selected) < len(plans):
        log(f"ran fold{'s' if len(selected) > 1 else ''} {', '.join(map(str, selected))} of "
            f"{len(plans)}; run without --fold once every fold is trained to write the tables")
        return result
    try:
        result.write()
    except OSError as err:
        raise DataError(f"{directory}: cannot write crossval.csv ({err}).") from err
    _plot_folds(directory, result, log)
    return result


def _plot_folds(directory: Path, result: CrossValidation, log: Callable[[str], None]) -> None:
    """``DIR/crossval_curves.png``: every fold's validation curve, and ``DIR/crossval_tre.png``:
    every held-out case's TRE, identity and registered, when matplotlib is there."""
    from labelreg.curves import plot_case_tre, plot_learning_curves, read_cases

    try:
        path = plot_case_tre(read_cases(directory / "crossval_cases.csv"),
                             directory / "crossval_tre.png",
                             title=f"{len(result.folds)}-fold cross-validation: every held-out "
                                   "case, sorted by registered TRE")
        log(f"wrote {path}")
    except LabelregError as err:  # no matplotlib, or no landmarks
        log(f"no per-case TRE picture: {err}")

    runs = {f"fold {fold.fold}": directory / f"fold{fold.fold}" / "run" for fold in result.folds}
    pooled = result.rows()[-1]
    hlines = [("dice", pooled["dice_identity"], "identity (pooled median)"),
              ("tre_mm", pooled["tre_mm_identity"], "identity (pooled median)")]
    try:
        path = plot_learning_curves(runs, directory / "crossval_curves.png", hlines=hlines)
    except LabelregError as err:  # no matplotlib, or runs trained without validation
        log(f"no learning-curve picture: {err}")
        return
    log(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labelreg.crossval``; returns the exit code (0 done, 2 a configuration or data
    error, 130 interrupted: rerun to resume)."""
    parser = command_parser(
        "python -m labelreg.crossval",
        "k-fold cross-validation: train on k-1 folds, evaluate gland Dice and landmark TRE on "
        "the held-out fold.", config_help="the INI file",
        set_help="override one setting of every fold (repeatable)")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the shuffle assigning cases to folds (default 0)")
    parser.add_argument("--dir", dest="directory", default=None,
                        help="cross-validation folder (default: <dir_run>/crossval)")
    parser.add_argument("--groups", default=None, metavar="CSV",
                        help="CSV file of case,group rows (e.g. patient IDs); a group's cases "
                        "stay in one fold")
    parser.add_argument("--inner-valid", dest="inner_valid", type=float, default=None,
                        metavar="FRACTION", help="validate each fold's run on this fraction of "
                        "its training cases (whole groups) instead of the held-out fold, so "
                        "keep_best chooses nothing on the reported cases (default: the config's "
                        "[Data] valid_fraction; 0 = validate on the held-out fold, and "
                        "keep_best is then refused)")
    parser.add_argument("--add-cases", dest="extra", action="append", default=[],
                        metavar="DIR", help="pool the cases of DIR too (its moving_images, "
                        "fixed_images, moving_labels and fixed_labels folders; repeatable)")
    parser.add_argument("--fold", dest="only", type=int, action="append", default=None,
                        metavar="K", help="run only fold K (repeatable; 1-based); no table is "
                        "written, so folds can run in parallel processes sharing --dir")

    def body(args) -> int:
        result = cross_validate(args.config, args.folds, args.seed, args.overrides,
                                args.directory, log=log_line, only=args.only,
                                groups=args.groups, inner_valid=args.inner_valid,
                                extra=args.extra)
        if args.only is None:
            print(result.format())
            print(f"wrote {result.directory / 'crossval.csv'}")
        return 0

    return run_command(parser, argv, body, errors=(LabelregError, FloatingPointError))


if __name__ == "__main__":
    sys.exit(main())
