"""labelreg.data.patients: cases whose moving label 0 is voxel-identical share a patient."""

from __future__ import annotations

import csv
import shutil

import nibabel as nib
import numpy as np
import pytest

from labelreg.data.patients import main, patient_groups
from labelreg.errors import DataError
from tests.test_pipeline_e2e import write_dataset


def test_identical_mr_labels_make_one_patient(tmp_path):
    first = write_dataset(tmp_path / "a", num_cases=3, seed=1)
    second = tmp_path / "b" / "moving_labels"
    second.mkdir(parents=True)
    # Another session of case01's patient: the same MR label file under another name; and a
    # case whose label differs from case02's in one voxel is another patient.
    shutil.copy(first / "moving_labels" / "case01.nii.gz", second / "case07.nii.gz")
    image = nib.load(first / "moving_labels" / "case02.nii.gz")
    data = image.get_fdata().astype(np.float32)
    data[0, 0, 0, 0] = 1.0 - data[0, 0, 0, 0]
    nib.save(nib.Nifti1Image(data, image.affine), second / "case09.nii.gz")
    groups = patient_groups([first, tmp_path / "b"])
    # write_dataset gives every case the same moving labels: one patient for case00-02, 07.
    assert groups == {"case00": "case00", "case01": "case00", "case02": "case00",
                      "case07": "case00", "case09": "case09"}

    out = tmp_path / "groups.csv"
    assert main([str(first), str(tmp_path / "b"), "--output", str(out)]) == 0
    with out.open(newline="") as stream:
        assert [(r["case"], r["group"]) for r in csv.DictReader(stream)] == sorted(
            groups.items())


def test_a_case_in_two_folders_is_an_error(tmp_path):
    folder = write_dataset(tmp_path / "a", num_cases=2)
    shutil.copytree(folder, tmp_path / "b")
    with pytest.raises(DataError, match="case00 is also in another folder"):
        patient_groups([folder, tmp_path / "b"])
    assert main([str(tmp_path / "missing"), "--output", str(tmp_path / "x.csv")]) == 2
    assert not (tmp_path / "x.csv").exists()


def test_the_shipped_groups_cover_the_shared_mrus_cases(mrus_sample_dir):
    from pathlib import Path

    shipped = Path(__file__).resolve().parent.parent / "configs" / "mrus_patients.csv"
    with shipped.open(newline="") as stream:
        rows = {r["case"]: r["group"] for r in csv.DictReader(stream)}
    sample = patient_groups([mrus_sample_dir])
    assert set(sample) <= set(rows)
    assert len(rows) == 76 and len(set(rows.values())) == 52
    # The sample's own grouping agrees with the shipped one on its cases.
    for a in sample:
        for b in sample:
            assert (sample[a] == sample[b]) == (rows[a] == rows[b])
