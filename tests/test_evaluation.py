"""labelreg.evaluation: gland Dice and landmark TRE against known translations, the lost-landmark
rule, the summary statistics, and the command on a tiny trained run."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from labelreg import config
from labelreg.data import CaseCache, PairedDataset
from labelreg.engine import train
from labelreg.evaluation import EVALUATION_COLUMNS, evaluate, main
from tests.test_pipeline_e2e import GLOBAL, write_config, write_dataset

MOVING, FIXED = (16, 16, 16), (14, 15, 14)
SPACING = (1.5, 1.5, 2.0)  # fixed voxel size (mm)
GLAND_CENTRE, GLAND_RADIUS = np.array([8, 8, 8]), 4.0
# Per case: the translation d (moving voxels; fixed(x) = moving(x + d)) and the landmarks of the
# moving label, as (centre, radius); radius 0 is a single voxel.
CASES = {
    "case0": ((1, -2, 1), [((6, 9, 7), 1.5), ((10, 6, 9), 1.5)]),
    "case1": ((0, 2, -1), [((6, 9, 7), 1.5)]),
    "case2": ((2, 0, 0), []),
    "case3": ((-1, 1, 2), [((10, 6, 9), 1.5), ((6, 9, 7), 1.5), ((8, 8, 8), 0.0)]),
    "case4": ((1, 1, -1), [((10, 6, 9), 1.5)]),
}


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (np.linalg.norm(grid - np.asarray(centre, float), axis=-1) <= radius).astype(np.float32)


def labels(shape, shift, landmarks) -> np.ndarray:
    """``[*shape, L]``: the gland and the landmarks, all moved by ``-shift``."""
    shift = np.asarray(shift)
    return np.stack([ball(shape, GLAND_CENTRE - shift, GLAND_RADIUS)]
                    + [ball(shape, np.asarray(c) - shift, r) for c, r in landmarks], -1)


@pytest.fixture(scope="module")
def translated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("translated")
    for name, (shift, landmarks) in CASES.items():
        moving_labels = labels(MOVING, (0, 0, 0), landmarks)
        fixed_labels = labels(FIXED, shift, landmarks)
        for folder, data, affine in (
            ("moving_images", moving_labels[..., 0] * 100, np.eye(4)),
            ("fixed_images", fixed_labels[..., 0] * 60, np.diag([*SPACING, 1.0])),
            ("moving_labels", moving_labels, np.eye(4)),
            ("fixed_labels", fixed_labels, np.diag([*SPACING, 1.0])),
        ):
            (root / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data.astype(np.float32), affine),
                     root / folder / f"{name}.nii.gz")
    return root


def paired_of(root: Path) -> PairedDataset:
    return PairedDataset(*(root / f for f in ("moving_images", "fixed_images", "moving_labels",
                                              "fixed_labels")))


def translation_network(offset=(0.0, 0.0, 0.0)):
    """A stand-in network: the translation between the glands' centroids (rounded to whole
    voxels), plus ``offset``, as a constant DDF on the fixed grid."""
    def centroid(image: np.ndarray) -> np.ndarray:
        return np.argwhere(image >= 0.5).mean(axis=0)

    def ddf_function(moving, fixed):
        moving, fixed = np.asarray(moving)[..., 0], np.asarray(fixed)[..., 0]
        shifts = [np.round(centroid(m) - centroid(f)) + offset for m, f in zip(moving, fixed, strict=True)]
        return np.stack([np.broadcast_to(s, (*f.shape, 3)) for s, f in zip(shifts, fixed, strict=True)]
                        ).astype(np.float32)

    return ddf_function


def numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a >= 0.5, b >= 0.5
    return 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))


def test_exact_translation_is_perfect_and_the_identity_is_analytic(translated):
    table = evaluate(translation_network(), paired_of(translated), batch_size=2)
    assert [row.case for row in table.rows] == list(CASES)
    for row in table.rows:
        shift, landmarks = CASES[row.case]
        assert row.dice == pytest.approx(1.0)
        moving = labels(MOVING, (0, 0, 0), landmarks)
        fixed = labels(FIXED, shift, landmarks)
        # The zero DDF takes the moving voxel of the same index: the moving grid cropped.
        identity = moving[: FIXED[0], : FIXED[1], : FIXED[2]]
        assert row.dice_identity == pytest.approx(numpy_dice(fixed[..., 0], identity[..., 0]),
                                                  abs=1e-6)
        assert len(row.landmarks) == len(landmarks) and row.lost == row.lost_identity == 0
        shift_mm = float(np.linalg.norm(np.asarray(shift) * SPACING))
        for landmark in row.landmarks:
            assert landmark.distance_mm == pytest.approx(0.0, abs=1e-5)
            assert landmark.distance_mm_identity == pytest.approx(shift_mm, abs=1e-4)
        if landmarks:
            assert row.tre_mm == pytest.approx(0.0, abs=1e-5)
            assert row.tre_mm_identity == pytest.approx(shift_mm, abs=1e-4)
        else:
            assert np.isnan(row.tre_mm) and np.isnan(row.tre_mm_identity)
    summary = table.summary()
    assert summary["cases"] == 5 and summary["landmarks"] == 7 and summary["lost"] == 0
    assert summary["dice_median"] == pytest.approx(1.0)
    assert summary["tre_mm_all_median"] == pytest.approx(0.0, abs=1e-5)

    # The same from a cache read in memory, one case per batch (validation's path).
    paired = paired_of(translated)
    cached = evaluate(translation_network(), paired, cache=CaseCache(paired), batch_size=1)
    assert cached.summary() == pytest.approx(summary, nan_ok=True)
    np.testing.assert_allclose([(r.dice, r.dice_identity, r.tre_mm_identity) for r in cached.rows],
                               [(r.dice, r.dice_identity, r.tre_mm_identity) for r in table.rows])


def test_summary_is_numpys_median_and_quartiles(translated):
    table = evaluate(translation_network(), paired_of(translated), batch_size=3)
    summary = table.summary()

    def numpy_stats(values):
        values = np.asarray([v for v in values if np.isfinite(v)])
        return np.percentile(values, [25, 50, 75])

    figures = {
        "dice_identity": [row.dice_identity for row in table.rows],
        "tre_mm_identity": [row.tre_mm_identity for row in table.rows],
        "tre_mm_all_identity": [lm.distance_mm_identity for row in table.rows
                                for lm in row.landmarks],
    }
    for name, values in figures.items():
        q1, median, q3 = numpy_stats(values)
        assert summary[f"{name}_q1"] == pytest.approx(q1)
        assert summary[f"{name}_median"] == pytest.approx(median)
        assert summary[f"{name}_q3"] == pytest.approx(q3)
    assert len(figures["tre_mm_all_identity"]) == 7  # the case without landmarks adds none
    # The validation keys of PairwiseMethod.validate come from the same table.
    means = table.label_means()
    all_dice = [label.dice for row in table.rows for label in row.labels]
    assert means["dice_mean"] == pytest.approx(np.mean(all_dice))


def test_a_landmark_that_vanishes_is_lost_and_left_out_of_the_tre(translated, tmp_path):
    # Half a voxel off on every axis: linear interpolation spreads the single-voxel landmark of
    # case3 over 8 voxels of 1/8 each, below the 0.5 threshold; the balls survive.
    table = evaluate(translation_network(offset=(0.5, 0.5, 0.5)), paired_of(translated))
    rows = {row.case: row for row in table.rows}
    case3 = rows["case3"]
    assert len(case3.landmarks) == 3 and case3.lost == 1 and case3.lost_identity == 0
    vanished = case3.landmarks[2]
    assert vanished.lost and np.isnan(vanished.distance_mm)
    found = [lm.distance_mm for lm in case3.landmarks[:2]]
    assert all(np.isfinite(found)) and case3.tre_mm == pytest.approx(np.mean(found))
    assert sum(row.lost for row in table.rows) == 1 == table.summary()["lost"]
    assert len(table.figure("tre_mm_all")) == 6  # 7 counted, 1 lost

    path = table.write_csv(tmp_path / "evaluation.csv")
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == EVALUATION_COLUMNS
        written = list(reader)
    assert [r["case"] for r in written if r["row"] == "case"] == list(CASES)
    assert sum(r["row"] == "landmark" for r in written) == 7
    lost_row = next(r for r in written if r["row"] == "landmark" and r["lost"] == "1")
    assert lost_row["case"] == "case3" and lost_row["label_index"] == "3"
    assert lost_row["tre_mm"] == "" and float(lost_row["tre_mm_identity"]) > 0


# -- the command on a tiny trained run ------------------------------------------------------------


def _valid_keys(data: Path) -> dict[str, str]:
    return {f"dir_valid_{role}": str(data / folder) for role, folder in (
        ("moving_image", "moving_images"), ("fixed_image", "fixed_images"),
        ("moving_label", "moving_labels"), ("fixed_label", "fixed_labels"))}


def test_command_on_a_trained_run(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=4)
    ini = write_config(tmp_path / "run.ini", data, Data=_valid_keys(data), Network=GLOBAL,
                       Train={"total_iterations": "2", "freq_model_save": "2"})
    result = train(config.load(ini), log=lambda line: None)
    # Validation at the checkpoint reports the gland / TRE medians and the former means.
    assert set(result.validation) == {"dice", "tre_mm", "dice_mean", "centroid_distance_mm"}

    output = tmp_path / "eval.csv"
    assert main([str(ini), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    with output.open(newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == EVALUATION_COLUMNS
        rows = list(reader)
    cases = [r for r in rows if r["row"] == "case"]
    assert [r["case"] for r in cases] == ["case00", "case01", "case02", "case03"]
    assert all(r["landmarks"] == "1" for r in cases)  # write_case: a gland and one landmark
    for word in ("median", "q1", "q3", "TRE over all 4 landmarks", "landmarks: 4 counted",
                 f"wrote {output}"):
        assert word in printed
    dices = sorted(float(r["dice"]) for r in cases)
    assert result.validation["dice"] == pytest.approx(np.median(dices), abs=0.01)

    # The [Inference] folders (the same pairs here), with the default output path.
    assert main([str(ini), "--split", "inference"]) == 0
    default = tmp_path / "run" / "evaluation_inference.csv"
    assert default.is_file() and f"wrote {default}" in capsys.readouterr().out


def test_command_errors_name_the_keys_and_the_checkpoint(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=2)
    ini = write_config(tmp_path / "plain.ini", data)
    assert main([str(ini)]) == 2
    err = capsys.readouterr().err
    assert "[Data] dir_valid_moving_image, dir_valid_fixed_image, dir_valid_moving_label, " \
           "dir_valid_fixed_label are not set" in err and "--split inference" in err

    ini = write_config(tmp_path / "valid.ini", data, Data=_valid_keys(data))
    missing = tmp_path / "nowhere" / "model.ckpt"
    assert main([str(ini), "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no checkpoint found" in err
