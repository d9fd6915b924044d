"""Per-pair fault tolerance of ``inference.py``: a bad pair fails alone, reruns redo what is missing.

One tiny saved network is shared; every test writes its own three-case dataset and output folder.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from labelreg import config
from labelreg.cli import infer_main
from labelreg.errors import DataError
from labelreg.infer import infer
from tests.conftest import save_untrained_run
from tests.test_pipeline_e2e import write_config, write_dataset

CASES = ["case00", "case01", "case02"]
OUTPUTS = ("ddf.nii.gz", "warped_image.nii.gz", "warped_label.nii.gz", "metrics.csv")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained label-driven network saved as ``training.py`` saves one; returns its
    ``file_model_save`` (see :func:`tests.conftest.save_untrained_run`)."""
    root = tmp_path_factory.mktemp("untrained")
    ini = write_config(root / "train.ini", write_dataset(root / "data", num_cases=2))
    return save_untrained_run(ini)


def _setup(tmp_path: Path, checkpoint: Path, **inference: str) -> tuple[Path, Path, Path]:
    """A three-case dataset and a config using the shared checkpoint: ``(ini, data, dir_save)``."""
    data = write_dataset(tmp_path / "data", num_cases=3, seed=3)
    ini = write_config(tmp_path / "x.ini", data, Train={"file_model_save": str(checkpoint)},
                       Inference={"save_png": "false", "minibatch_size": "2", **inference})
    return ini, data, tmp_path / "out"


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _case_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _metric_cases(folder: Path) -> list[str]:
    with (folder / "metrics.csv").open(newline="") as stream:
        return sorted(row["case"] for row in csv.DictReader(stream))


def test_corrupt_pair_fails_alone_and_a_rerun_redoes_only_it(tmp_path, checkpoint, capsys):
    ini, data, out = _setup(tmp_path, checkpoint)
    bad = data / "moving_images" / "case01.nii.gz"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 2])  # a truncated gzip stream

    assert infer_main([str(ini)]) == 1
    captured = capsys.readouterr()
    assert f"registered 2 of 3 pairs; 1 failed, see {out / 'failed.csv'}" in captured.out
    assert f"case01: FAILED: {bad}" in captured.out  # the log names the case, file and reason
    assert "1 pair(s) failed (case01)" in captured.err
    assert _case_folders(out) == ["case00", "case02"]
    for case in ("case00", "case02"):
        assert all((out / case / name).is_file() for name in OUTPUTS)
    with (out / "failed.csv").open(newline="") as stream:
        failed = list(csv.DictReader(stream))
    assert [(row["case"], row["file"]) for row in failed] == [("case01", str(bad))]
    assert "truncated or damaged" in failed[0]["error"]
    assert _metric_cases(out) == ["case00", "case00", "case02", "case02"]  # 2 labels per pair
    assert _hidden(out) == []

    # Fixed input, same command: only case01 is computed, the others are left untouched.
    bad.write_bytes(good_bytes)
    before = {case: (out / case / "ddf.nii.gz").stat().st_ino for case in ("case00", "case02")}
    assert infer_main([str(ini)]) == 0
    captured = capsys.readouterr()
    assert "skipped 2 already registered pairs" in captured.out
    assert "registering 1 pair(s)" in captured.out
    assert "registered 3 of 3 pairs (2 by an earlier run)" in captured.out
    assert {case: (out / case / "ddf.nii.gz").stat().st_ino for case in before} == before
    assert _case_folders(out) == CASES
    assert _metric_cases(out) == sorted(CASES * 2)
    assert not (out / "failed.csv").exists()

    # --overwrite recomputes every pair.
    inodes = {case: (out / case / "ddf.nii.gz").stat().st_ino for case in CASES}
    assert infer_main([str(ini), "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "skipped" not in captured.out and "registering 3 pair(s)" in captured.out
    assert all((out / case / "ddf.nii.gz").stat().st_ino != inodes[case] for case in CASES)
    assert _metric_cases(out) == sorted(CASES * 2)
    assert _hidden(out) == []


@pytest.mark.parametrize("damage", ["zero_byte_image", "nan_in_image", "label_of_another_shape",
                                    "label_count_mismatch"])
def test_each_kind_of_bad_file_fails_only_its_pair(tmp_path, checkpoint, damage):
    ini, data, out = _setup(tmp_path, checkpoint)
    if damage == "zero_byte_image":
        culprit = data / "fixed_images" / "case02.nii.gz"
        culprit.write_bytes(b"")
    elif damage == "nan_in_image":
        culprit = data / "moving_images" / "case02.nii.gz"
        image = nib.load(culprit)
        values = image.get_fdata().astype(np.float32)
        values[2, 3, 4] = np.nan
        nib.save(nib.Nifti1Image(values, image.affine), culprit)
    elif damage == "label_of_another_shape":
        culprit = data / "moving_labels" / "case02.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((10, 12, 9, 2), np.float32), np.eye(4)), culprit)
    else:
        culprit = data / "fixed_labels" / "case02.nii.gz"
        label = nib.load(culprit)
        nib.save(nib.Nifti1Image(label.get_fdata()[..., :1].astype(np.float32), label.affine),
                 culprit)
    lines: list[str] = []
    result = infer(config.load(ini), log=lines.append)
    assert result.cases == result.registered == ["case00", "case01"]
    assert [(f.case, f.file) for f in result.failed] == [("case02", str(culprit))]
    assert any(line.startswith("case02: FAILED:") and str(culprit) in line for line in lines)
    assert _case_folders(out) == ["case00", "case01"]
    assert _metric_cases(out) == ["case00", "case00", "case01", "case01"]
    assert (out / "failed.csv").is_file() and _hidden(out) == []


def test_full_disk_mid_pair_leaves_no_partial_output(tmp_path, checkpoint, monkeypatch):
    ini, _, out = _setup(tmp_path, checkpoint, save_png="true")
    out.mkdir()
    stale = out / ".case00.partial-0badc0de"  # left by a killed run
    stale.mkdir()
    (stale / "ddf.nii.gz").write_bytes(b"\x1f\x8b half")
    real_save = nib.save

    def save(image, filename, *args, **kwargs):
        path = Path(filename)
        if path.parent.name.startswith(".case01.") and path.name == "warped_image.nii.gz":
            path.write_bytes(b"\x1f\x8b\x08 partial")  # what a write cut short leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_save(image, filename, *args, **kwargs)

    monkeypatch.setattr(nib, "save", save)
    result = infer(config.load(ini), log=lambda line: None)
    assert result.registered == ["case00", "case02"]
    (failure,) = result.failed
    assert failure.case == "case01"
    assert failure.file == str(out / "case01" / "warped_image.nii.gz")
    assert os.strerror(errno.ENOSPC) in failure.error
    assert _case_folders(out) == ["case00", "case02"]
    assert (out / "case00" / "overlay.png").is_file()
    assert _hidden(out) == []  # the failed pair's staging and the stale one are gone


def test_a_crash_mid_pair_leaves_no_case_folder(tmp_path, checkpoint, monkeypatch):
    ini, _, out = _setup(tmp_path, checkpoint, minibatch_size="3")
    real_save = nib.save

    def save(image, filename, *args, **kwargs):
        if Path(filename).parent.name.startswith(".case01."):
            raise KeyboardInterrupt
        return real_save(image, filename, *args, **kwargs)

    monkeypatch.setattr(nib, "save", save)
    with pytest.raises(KeyboardInterrupt):
        infer(config.load(ini), log=lambda line: None)
    assert _case_folders(out) == ["case00"] and _hidden(out) == []

    monkeypatch.setattr(nib, "save", real_save)
    result = infer(config.load(ini), log=lambda line: None)
    assert result.skipped == ["case00"] and result.registered == ["case01", "case02"]
    assert _metric_cases(out) == sorted(CASES * 2)


def test_unwritable_dir_save_fails_before_any_work(tmp_path, checkpoint, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    ini, _, _ = _setup(tmp_path, checkpoint, dir_save=str(locked / "results" / "out"))

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr("labelreg.pair_inference.load_trained_model", no_model)
    if os.geteuid() == 0:
        # Permission bits do not stop root: make the probe's temporary file fail as they would.
        real_temporary_file = tempfile.TemporaryFile

        def temporary_file(*args, **kwargs):
            if Path(kwargs.get("dir", "")) == locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_temporary_file(*args, **kwargs)

        monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    locked.chmod(0o500)
    try:
        with pytest.raises(DataError, match=re.escape(f"{locked} is not writable")):
            infer(config.load(ini), log=lambda line: None)
        assert infer_main([str(ini)]) == 2
        err = capsys.readouterr().err
        assert "dir_save" in err and str(locked) in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)
