"""Validation splits by patient: labelreg.data.splits, PairedDataset.subset and
``[Data] valid_fraction`` in the NIfTI data source."""

from __future__ import annotations

import numpy as np
import pytest

from labelreg.data.nifti import PairedDataset
from labelreg.data.splits import split_by_group
from labelreg.errors import ConfigError, DataError
from labelreg.methods.label_driven_config import load
from tests.test_pipeline_e2e import write_config, write_dataset

PATIENTS = {"case00": "p0", "case01": "p0", "case02": "p1", "case03": "p2", "case04": "p2",
            "case05": "p3"}


def test_split_by_group_moves_whole_groups_and_names_the_setting():
    names = sorted(PATIENTS)
    kept, aside = split_by_group(names, 0.3, seed=1, groups=PATIENTS)
    assert sorted(kept + aside) == names and not set(kept) & set(aside)
    assert {PATIENTS[c] for c in kept}.isdisjoint({PATIENTS[c] for c in aside})
    assert len(aside) >= 0.3 * len(names)
    # A pure function of its arguments, whatever the order of the names.
    assert split_by_group(names[::-1], 0.3, seed=1, groups=PATIENTS) == (kept, aside)
    with pytest.raises(ConfigError, match=r"^\[Data\] valid_fraction = 1.0: expected"):
        split_by_group(names, 1.0, setting="[Data] valid_fraction =")


def test_subset_keeps_the_named_cases_and_reads_the_same_voxels(tmp_path):
    data = write_dataset(tmp_path / "data", num_cases=4)
    full = PairedDataset(*(data / f for f in ("moving_images", "fixed_images", "moving_labels",
                                              "fixed_labels")))
    part = full.subset(["case03", "case01"])
    assert part.names == ["case01", "case03"] and part.num_cases == 2
    assert full.num_cases == 4  # the original is untouched
    assert part.num_labels == [full.num_labels[1], full.num_labels[3]]
    for role in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
        assert part.file(role, 1) == full.file(role, 3)
        np.testing.assert_array_equal(part.read(role, 0), full.read(role, 1))
    np.testing.assert_array_equal(part.fixed_spacings(), full.fixed_spacings()[[1, 3]])
    with pytest.raises(DataError, match="no case named case09"):
        full.subset(["case01", "case09"])
    with pytest.raises(DataError, match="empty list"):
        full.subset([])


def test_valid_fraction_conflicts_are_named_before_any_data_is_read(tmp_path):
    data = tmp_path / "data"  # never written: the checks come first
    both = write_config(tmp_path / "both.ini", data, Data={
        "valid_fraction": "0.2", "dir_valid_moving_image": str(data / "moving_images"),
        "dir_valid_fixed_image": str(data / "fixed_images")})
    with pytest.raises(ConfigError, match=r"\[Data\] valid_fraction .*dir_valid_moving_image"):
        load(both)
    unlabelled = write_config(tmp_path / "nolabels.ini", data, Data={
        "valid_fraction": "0.2", "dir_moving_label": "", "dir_fixed_label": ""},
        Loss={"image_loss_type": "lncc", "image_loss_weight": "1"})
    with pytest.raises(ConfigError, match=r"\[Data\] valid_fraction .*needs dir_moving_label"):
        load(unlabelled)
    too_big = write_config(tmp_path / "big.ini", data, Data={"valid_fraction": "0.95"})
    with pytest.raises(ConfigError, match="valid_fraction"):
        load(too_big)


def test_training_sets_whole_patients_aside_for_validation(tmp_path):
    from labelreg.methods.label_driven import LabelDriven

    data = write_dataset(tmp_path / "data", num_cases=6)
    groups = tmp_path / "groups.csv"
    groups.write_text("case,group\n" + "".join(f"{c},{g}\n" for c, g in PATIENTS.items()))
    ini = write_config(tmp_path / "vf.ini", data, Data={
        "valid_fraction": "0.3", "case_groups": str(groups)}, Train={"seed": "3"})
    method = LabelDriven(load(ini), log=lambda line: None)
    method.prepare_data()
    source = method.source
    train, valid = source.paired.names, source.valid.names
    assert sorted(train + valid) == sorted(PATIENTS) and len(valid) >= 2
    assert {PATIENTS[c] for c in train}.isdisjoint({PATIENTS[c] for c in valid})
    assert (train, valid) == split_by_group(sorted(PATIENTS), 0.3, 3, PATIENTS)
    assert f"{len(train)} pairs; {len(valid)} set aside for validation" in method.describe_data()
    assert ", ".join(valid) in method.describe_data()
    # Validation scores the cases set aside, with the trained (here untrained) network.
    figures = source.validate(lambda moving, fixed: np.zeros(
        (moving.shape[0], *fixed.shape[1:-1], 3), np.float32))
    assert 0.0 <= figures["dice"] <= 1.0


def test_evaluation_of_the_valid_split_scores_the_cases_training_set_aside(tmp_path):
    from labelreg.evaluation import run_evaluation, split_dataset
    from tests.conftest import save_untrained_run

    data = write_dataset(tmp_path / "data", num_cases=6)
    groups = tmp_path / "groups.csv"
    groups.write_text("case,group\n" + "".join(f"{c},{g}\n" for c, g in PATIENTS.items()))
    ini = write_config(tmp_path / "vf.ini", data, Data={
        "valid_fraction": "0.3", "case_groups": str(groups)},
        Network={"network_type": "global"}, Train={"seed": "3"})
    cfg = load(ini)
    expected = split_by_group(sorted(PATIENTS), 0.3, 3, PATIENTS)[1]
    assert split_dataset(cfg, "valid").names == expected
    save_untrained_run(ini)
    table, _ = run_evaluation(cfg, "valid", output=tmp_path / "eval.csv", log=lambda line: None)
    assert [case.case for case in table.rows] == expected
