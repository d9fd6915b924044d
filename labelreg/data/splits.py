"""Splits of a set of cases that keep each group (e.g. each patient) on one side.

Several cases of a registration set can come from one patient (several ultrasound sessions
against one MR). A validation split that puts one of them in training and another in validation
measures memory of the patient, not registration, so every split here moves whole groups.

- :func:`read_groups` reads the ``case,group`` CSV that ``[Data] case_groups`` names
  (``python -m labelreg.data.patients`` writes one).
- :func:`split_by_group` sets about a fraction of the cases aside, whole groups at a time, with
  a seeded shuffle: ``[Data] valid_fraction`` of training and the inner validation split of
  ``python -m labelreg.crossval --inner-valid``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from labelreg.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from labelreg.config import Config
    from labelreg.data.nifti import PairedDataset

__all__ = ["read_groups", "split_by_group", "set_aside", "configured_validation"]


def read_groups(path: str | os.PathLike, names: Sequence[str]) -> dict[str, str]:
    """``{case: group}`` from a CSV file with the columns ``case`` and ``group`` (other columns
    are ignored); every one of ``names`` must be listed, once (extra rows are allowed, so one
    file can serve several folders).

    Raises:
        DataError: the file is missing or unreadable, lacks a column, lists a case twice, or
            leaves out one of ``names``.
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            if not {"case", "group"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: expected a header with the columns 'case' and 'group' "
                                f"(got {reader.fieldnames}).")
            groups: dict[str, str] = {}
            for line, row in enumerate(reader, start=2):
                case, group = (row["case"] or "").strip(), (row["group"] or "").strip()
                if not case or not group:
                    raise DataError(f"{path}, line {line}: expected a case name and a group.")
                if case in groups:
                    raise DataError(f"{path}, line {line}: case {case!r} is listed twice.")
                groups[case] = group
    except OSError as err:
        raise DataError(f"{path}: cannot read the groups file ({err}).") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV file ({err}).") from err
    missing = [name for name in names if name not in groups]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"{path}: no group for {len(missing)} of the {len(names)} cases "
                        f"({shown}); expected one row per case.")
    return {name: groups[name] for name in names}


def split_by_group(names: Sequence[str], fraction: float, seed: int = 0,
                   groups: Mapping[str, str] | None = None,
                   setting: str = "fraction") -> tuple[list[str], list[str]]:
    """``(kept, set_aside)``: whole groups set aside until they hold at least ``fraction`` of
    the cases (at least one group), keeping at least one group; both lists sorted.

    The groups (each case its own group when ``groups`` is ``None``) are visited in the order
    of NumPy's ``default_rng(seed).permutation`` over their sorted names, so a split is a pure
    function of ``(names, fraction, seed, groups)``.

    Args:
        names: the case names.
        fraction: the share of the cases to set aside, in (0, 1).
        seed: seed of the shuffle.
        groups: ``{case: group}`` covering ``names`` (:func:`read_groups`).
        setting: how the error messages name the fraction (e.g. ``[Data] valid_fraction``).

    Raises:
        ConfigError: ``fraction`` outside (0, 1), or fewer than two groups.
    """
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"{setting} {fraction}: expected a fraction of the training cases "
                          "strictly between 0 and 1 (e.g. 0.2).")
    names = sorted(names)
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(groups[name] if groups is not None else name, []).append(name)
    if len(members) < 2:
        raise ConfigError(f"{setting} {fraction}: the {len(names)} training case(s) form "
                          f"{len(members)} group(s); a validation split needs at least 2.")
    keys = sorted(members)
    aside: list[str] = []
    rng = np.random.default_rng(int(seed))
    for i in rng.permutation(len(keys))[:-1]:  # the last group visited always stays
        if len(aside) >= fraction * len(names):
            break
        aside += members[keys[i]]
    return sorted(set(names) - set(aside)), sorted(aside)


def set_aside(paired: PairedDataset, fraction: float, seed: int,
              case_groups: str | os.PathLike | None = None,
              setting: str = "[Data] valid_fraction =") -> tuple[PairedDataset, PairedDataset]:
    """``(training, validation)`` subsets of ``paired``: :func:`split_by_group` of its case
    names with the groups of the ``case_groups`` CSV (each case its own group when ``None``).
    Training (``[Data] valid_fraction``) and ``python -m labelreg.evaluation --split valid``
    both reach it through :func:`configured_validation`, so they agree on the cases.

    Raises:
        ConfigError: as :func:`split_by_group`. DataError: as :func:`read_groups`.
    """
    groups = read_groups(case_groups, paired.names) if case_groups is not None else None
    kept, aside = split_by_group(paired.names, fraction, seed, groups, setting=setting)
    return paired.subset(kept), paired.subset(aside)


def configured_validation(paired: PairedDataset, cfg: Config
                          ) -> tuple[PairedDataset, PairedDataset]:
    """:func:`set_aside` with a config's ``[Data] valid_fraction`` and ``case_groups`` and its
    ``[Train] seed``: the split training makes, and ``labelreg.evaluation --split valid``
    scores."""
    data = cfg["Data"]
    return set_aside(paired, float(data["valid_fraction"]), int(cfg["Train"]["seed"]),
                     data.get("case_groups"), setting=f"{cfg.path}: [Data] valid_fraction =")
