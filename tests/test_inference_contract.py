"""The inference contract (labelreg.item_outputs) on every path: one folder per item written
whole, a bad item listed in failed.csv while the others are written (exit code 1), a rerun that
skips complete items and --overwrite that redoes them. NIfTI pairs have their own, longer file
(test_inference_failures.py); here: the contract itself, TIFF stacks and learnsim."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import tifffile

from labelreg.errors import DataError
from labelreg.item_outputs import ItemFailure, ItemOutputs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def _fill(text: str):
    def fill(folder: Path) -> None:
        (folder / "a.txt").write_text(text)
        (folder / "metrics.csv").write_text(f"case,value\n{folder.name.split('.')[1]},{len(text)}\n")

    return fill


# -- the contract -----------------------------------------------------------------------------


def test_items_are_staged_skipped_overwritten_and_failed_alone(tmp_path):
    out = tmp_path / "out"
    lines: list[str] = []
    outputs = ItemOutputs(out, ["a.txt", "metrics.csv"], log=lines.append)
    outputs.open()
    (out / ".x.partial-12345678").mkdir()  # left by a crash: removed by open()
    outputs.open()
    assert list(out.iterdir()) == []
    assert outputs.plan(["x", "y", "z"]) == ["x", "y", "z"]
    assert outputs.write("x", _fill("one"))

    def broken(folder: Path) -> None:
        (folder / "a.txt").write_text("half")
        raise ValueError("the metrics cannot handle this label")

    assert not outputs.write("y", broken)
    outputs.fail("z", ItemFailure("/data/z.nii.gz", "z.nii.gz: truncated"))
    result = outputs.finish(["x", "y", "z"], columns=("case", "value"))
    # Only the complete item has a folder; no staging is left behind.
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "metrics.csv", "x"]
    assert result.cases == ["x"] and result.registered == ["x"]
    assert [f.case for f in result.failed] == ["y", "z"]
    failed = _rows(out / "failed.csv")
    assert failed[0] == {"case": "y", "file": "",
                         "error": "ValueError: the metrics cannot handle this label"}
    assert failed[1] == {"case": "z", "file": "/data/z.nii.gz", "error": "z.nii.gz: truncated"}
    assert result.rows == [{"case": "x", "value": 3.0}]
    assert "registered 1 of 3 pairs; 2 failed" in lines[-1]

    # A rerun skips the complete item and redoes the others; --overwrite redoes every one.
    again = ItemOutputs(out, ["a.txt", "metrics.csv"], log=lines.append)
    again.open()
    assert again.plan(["x", "y", "z"]) == ["y", "z"]
    for name in ("y", "z"):
        again.write(name, _fill("fine"))
    result = again.finish(["x", "y", "z"], columns=("case", "value"))
    assert result.skipped == ["x"] and result.registered == ["y", "z"] and not result.failed
    assert not (out / "failed.csv").exists()
    assert [r["value"] for r in result.rows] == [3.0, 4.0, 4.0]
    forced = ItemOutputs(out, ["a.txt", "metrics.csv"], overwrite=True, log=lines.append)
    assert forced.plan(["x", "y", "z"]) == ["x", "y", "z"]
    forced.write("x", _fill("three"))
    assert (out / "x" / "a.txt").read_text() == "three"


def test_an_item_that_fails_now_loses_its_older_folder(tmp_path):
    outputs = ItemOutputs(tmp_path / "out", ["a.txt"], log=lambda line: None)
    outputs.open()
    outputs.write("x", _fill("old"))
    outputs.fail("x", ItemFailure("", "now unreadable"))
    assert not (tmp_path / "out" / "x").exists()


def test_an_unwritable_output_folder_is_reported_before_any_work(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("not a folder")
    with pytest.raises(DataError, match=r"\[Inference\] dir_save"):
        ItemOutputs(target / "out", ["a.txt"]).check()


# -- TIFF stacks ------------------------------------------------------------------------------

STACK_INI = """
[Method]
name = image_driven

[Data]
format = tiff_stack
dir_stacks = {stacks}
train_sequences = [01]
valid_sequences = [02, 03]

[Network]
num_channel_initial = 4
depth = 2

[Loss]
image_loss_type = ssd
regulariser_weight = 0.01

[Train]
total_iterations = 1
minibatch_size = 2
freq_model_save = 100
validate = false
dir_run = {run}

[Inference]
dir_save = {run}/inference
"""


def test_tiff_stack_inference_keeps_the_contract(tmp_path, capsys):
    from labelreg.cli import infer_main
    from labelreg.data.synthetic_stacks import IMAGE_FOLDER, write_synthetic_stacks
    from tests.conftest import save_untrained_run

    stacks = write_synthetic_stacks(tmp_path / "stacks", sequences=("01", "02", "03"),
                                    frames=4, size=(32, 32), motion=2.0)
    ini = tmp_path / "stacks.ini"
    ini.write_text(STACK_INI.format(stacks=stacks, run=tmp_path / "run"))
    save_untrained_run(ini)  # an untrained network: the contract is the subject
    bad = next((stacks / IMAGE_FOLDER).glob("03.*"))
    bad.write_bytes(b"II*\x00 not a TIFF")  # a damaged test sequence
    capsys.readouterr()

    assert infer_main([str(ini)]) == 1
    captured = capsys.readouterr()
    out = tmp_path / "run" / "inference"
    assert sorted(p.name for p in out.iterdir()) == [
        "02_000", "02_001", "02_002", "failed.csv", "metrics.csv"]
    for pair in ("02_000", "02_001", "02_002"):
        assert sorted(p.name for p in (out / pair).iterdir()) == [
            "ddf.tif", "metrics.csv", "overlay.png", "warped_image.tif", "warped_label.tif"]
        assert tifffile.imread(out / pair / "ddf.tif").shape == (32, 32, 2)
    assert [r["case"] for r in _rows(out / "failed.csv")] == ["03"]
    assert str(bad) in _rows(out / "failed.csv")[0]["error"]
    assert [r["frame"] for r in _rows(out / "metrics.csv")] == ["0", "1", "2"]
    assert "processed 3/3" in captured.out and "03: FAILED" in captured.out

    # Complete pairs are skipped on a rerun and redone with --overwrite.
    stamp = (out / "02_001" / "ddf.tif").stat().st_mtime_ns
    assert infer_main([str(ini)]) == 1
    assert "skipped 3 already registered frame pairs" in capsys.readouterr().out
    assert (out / "02_001" / "ddf.tif").stat().st_mtime_ns == stamp
    assert infer_main([str(ini), "--overwrite"]) == 1
    assert (out / "02_001" / "ddf.tif").stat().st_mtime_ns != stamp


# -- learnsim ---------------------------------------------------------------------------------

LEARNSIM_INI = """
[Method]
name = learnsim

[Data]
synthetic_volumes = true
dir_synthetic = {data}
synthetic_cases = 3
synthetic_size = [16, 16, 12]

[Variational]
iterations = 3
samples = 5

[Train]
total_iterations = 1
minibatch_size = 2
dir_run = {run}
"""


def test_learnsim_inference_keeps_the_contract(tmp_path, capsys):
    from labelreg.cli import infer_main
    from tests.conftest import save_untrained_run

    ini = tmp_path / "learnsim.ini"
    ini.write_text(LEARNSIM_INI.format(data=tmp_path / "data", run=tmp_path / "run"))
    save_untrained_run(ini)  # the metric's initial (SSD) encoder: the contract is the subject
    test = tmp_path / "test"
    shutil.copytree(tmp_path / "data", test)
    bad = test / "moving_images" / "case001.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated file
    overrides = [f"--set=Inference.dir_{role}={test}/{role}s"
                 for role in ("moving_image", "fixed_image", "moving_label", "fixed_label")]
    capsys.readouterr()

    assert infer_main([str(ini), *overrides]) == 1
    out = tmp_path / "run" / "inference"
    assert sorted(p.name for p in out.iterdir()) == [
        "case000", "case002", "failed.csv", "metrics.csv"]
    failed = _rows(out / "failed.csv")
    assert [r["case"] for r in failed] == ["case001"] and failed[0]["file"] == str(bad)
    # Every sample the config asks for is written.
    assert sorted(p.name for p in (out / "case000").glob("ddf_sample_*")) == [
        f"ddf_sample_{k}.nii.gz" for k in range(5)]
    assert [r["case"] for r in _rows(out / "metrics.csv")] == ["case000", "case002"]
    capsys.readouterr()
    assert infer_main([str(ini), *overrides]) == 1
    assert "skipped 2 already registered pairs" in capsys.readouterr().out
