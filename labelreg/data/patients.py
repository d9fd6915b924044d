"""Which cases share a patient, for splits that never put one patient on both sides.

A public MR/TRUS set holds several ultrasound sessions of some patients, each registered to the
same MR. Its files do not name the patient, but the cases of one patient share the MR and its
gland label. :func:`patient_groups` therefore groups cases whose moving label 0 is the same
volume voxel for voxel (hashed, so memory stays at one volume). A group is named after its first
case in sorted order.

``python -m labelreg.data.patients DIR [DIR ...] --output CSV`` writes the ``case,group`` rows
that ``python -m labelreg.crossval --groups CSV`` and ``[Data] case_groups`` read. Each ``DIR``
holds ``moving_labels/`` (for example ``../shared/data/mrus-sample``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from labelreg.data.nifti import NiftiReader
from labelreg.errors import DataError, LabelregError
from labelreg.files import write_csv

__all__ = ["patient_groups", "write_groups", "main"]


def _label_digest(reader: NiftiReader, index: int) -> str:
    """A digest of label 0 of one file: its shape and its voxels as float32."""
    volume = np.ascontiguousarray(reader.read(index, label_index=0), dtype=np.float32)
    digest = hashlib.sha256(repr(volume.shape).encode())
    digest.update(volume.tobytes())
    return digest.hexdigest()


def patient_groups(folders: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{case: group}`` over the cases of every ``<folder>/moving_labels``.

    Cases whose moving label 0 is voxel-identical share a group, named after the first of them
    in sorted order; a case name is its file name without ``.nii``/``.nii.gz``.

    Raises:
        DataError: a folder without ``moving_labels``, an unreadable file, or one case name in
            two folders.
    """
    digests: dict[str, str] = {}
    for folder in folders:
        reader = NiftiReader(Path(folder) / "moving_labels")
        for index, name in enumerate(reader.names):
            if name in digests:
                raise DataError(f"{folder}: case {name} is also in another folder; case names "
                                "must be unique across the folders.")
            digests[name] = _label_digest(reader, index)
    first: dict[str, str] = {}
    groups = {}
    for name in sorted(digests):
        groups[name] = first.setdefault(digests[name], name)
    return groups


def write_groups(groups: dict[str, str], path: str | os.PathLike) -> Path:
    """Write ``case,group`` rows (sorted by case) atomically; returns the path."""
    return write_csv(Path(path), [{"case": c, "group": g} for c, g in sorted(groups.items())],
                     ("case", "group"))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m labelreg.data.patients``; returns the exit code (0 done, 2 a data error)."""
    parser = argparse.ArgumentParser(
        prog="python -m labelreg.data.patients",
        description="Group cases whose moving label 0 is voxel-identical (one patient's MR) "
                    "and write case,group rows.")
    parser.add_argument("folders", nargs="+", help="folders holding moving_labels/")
    parser.add_argument("--output", required=True, help="the CSV file to write")
    args = parser.parse_args(argv)
    try:
        groups = patient_groups(args.folders)
        path = write_groups(groups, args.output)
    except LabelregError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(groups)} cases, {len(set(groups.values()))} patients: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
