"""End-to-end: training.py / inference.py on a tiny generated dataset, resume, outputs, errors."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from labelreg import config, metrics
from labelreg.cli import infer_main, train_main
from labelreg.engine import train

MOVING, FIXED = (16, 16, 16), (14, 15, 13)
FIXED_AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 1.5, 0, 4.0], [0, 0, 2.0, 7.5], [0, 0, 0, 1]])


def ball_label(shape, centre, radius):
    """A binary ball label: 1 within ``radius`` voxels of ``centre``, float32 of ``shape``."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius).astype(np.float32)


def write_case(root: Path, name: str, rng: np.random.Generator, num_labels: int = 2) -> None:
    shift = rng.uniform(-1.5, 1.5, size=3)
    moving_labels = np.stack([ball_label(MOVING, (8, 8, 8), 5), ball_label(MOVING, (6, 9, 7), 2)][:num_labels], -1)
    fixed_labels = np.stack([ball_label(FIXED, 7 + shift, 5), ball_label(FIXED, (5, 8, 6) + shift, 2)][:num_labels], -1)
    moving = (moving_labels[..., 0] * 100 + rng.normal(0, 5, MOVING)).astype(np.float32)
    fixed = (fixed_labels[..., 0] * 60 + rng.normal(0, 5, FIXED)).astype(np.int16)
    for folder, data, affine in (
        ("moving_images", moving, np.diag([1.0, 1.0, 1.0, 1.0])),
        ("fixed_images", fixed, FIXED_AFFINE),
        ("moving_labels", moving_labels, np.diag([1.0, 1.0, 1.0, 1.0])),
        ("fixed_labels", fixed_labels, FIXED_AFFINE),
    ):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), root / folder / f"{name}.nii.gz")


def write_dataset(root: Path, num_cases: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        write_case(root, f"case{i:02d}", rng)
    return root


def write_config(path: Path, data: Path, **sections: dict) -> Path:
    values = {
        "Data": {f"dir_{role}": str(data / folder) for role, folder in (
            ("moving_image", "moving_images"), ("fixed_image", "fixed_images"),
            ("moving_label", "moving_labels"), ("fixed_label", "fixed_labels"))},
        "Network": {"network_type": "local", "num_channel_initial": "4"},
        "Loss": {"similarity_scales": "[0, 1, 2]"},
        "Train": {"total_iterations": "3", "minibatch_size": "2", "learning_rate": "1e-3",
                  "freq_info_print": "1", "freq_model_save": "2",
                  "file_model_save": str(path.parent / "run" / "model.ckpt")},
        "Inference": {"dir_moving_image": str(data / "moving_images"),
                      "dir_fixed_image": str(data / "fixed_images"),
                      "dir_moving_label": str(data / "moving_labels"),
                      "dir_fixed_label": str(data / "fixed_labels"),
                      "dir_save": str(path.parent / "out"), "minibatch_size": "3"},
    }
    for section, entries in sections.items():
        values.setdefault(section, {}).update(entries)
    text = "".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in e.items()) + "\n"
                   for s, e in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


#: The affine network: about half of LocalNet's layers to trace, for tests of the trainer's
#: behaviour that any network shows.
GLOBAL = {"network_type": "global", "num_channel_initial": "4"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data"))


def test_train_resume_infer_end_to_end(tmp_path, dataset, capsys):
    ini = write_config(tmp_path / "run.ini", dataset)
    assert train_main([str(ini)]) == 0
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").glob("*.index")) == [
        "model.ckpt-2.index", "model.ckpt-3.index"]
    assert (run / "config.ini").is_file() and (run / "model.json").is_file()
    assert any((run / "tensorboard").iterdir())

    # Rerunning with more steps resumes at step 3 and goes on to step 5.
    assert train_main([str(ini), "--set", "Train.total_iterations=5"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "model.ckpt-3" in out and "step 4/5" in out
    assert "step 1/5" not in out
    assert (run / "checkpoints" / "model.ckpt-5.index").is_file()
    # That the resumed run reaches the weights of an uninterrupted one: the next test
    # (make test-slow), and tests/test_training_faults.py for a killed process.

    assert infer_main([str(ini), "--set", "Train.total_iterations=5"]) == 0
    out_dir = tmp_path / "out"
    cases = sorted(p.name for p in out_dir.iterdir() if p.is_dir())
    assert cases == ["case00", "case01", "case02", "case03"]
    for case in cases:
        fixed = nib.load(dataset / "fixed_images" / f"{case}.nii.gz")
        for name, shape in (("ddf", FIXED + (3,)), ("warped_image", FIXED),
                            ("warped_label", FIXED + (2,))):
            image = nib.load(out_dir / case / f"{name}.nii.gz")
            assert image.shape == shape
            np.testing.assert_allclose(image.affine, fixed.affine)
            assert np.all(np.isfinite(image.get_fdata()))
        assert (out_dir / case / "overlay.png").stat().st_size > 0

    rows = list(csv.DictReader((out_dir / "metrics.csv").open()))
    assert len(rows) == 8  # 4 pairs x 2 labels
    for row in rows:
        warped = nib.load(out_dir / row["case"] / "warped_label.nii.gz").get_fdata()
        fixed = nib.load(dataset / "fixed_labels" / f"{row['case']}.nii.gz").get_fdata()
        j = int(row["label_index"])
        expected = metrics.dice(fixed[None, ..., j, None], warped[None, ..., j, None]).numpy()[0]
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-5)
        distance = metrics.centroid_distance(fixed[None, ..., j, None], warped[None, ..., j, None],
                                             spacing=(1.5, 1.5, 2.0)).numpy()[0]
        assert float(row["centroid_distance_mm"]) == pytest.approx(distance, abs=1e-4)
        assert 0.0 <= float(row["folding_ratio"]) <= 1.0


# A third training (make test-slow).
@pytest.mark.slow
def test_a_resumed_run_reaches_the_weights_of_an_uninterrupted_one(tmp_path, dataset):
    import tensorflow as tf

    def run_to(folder: str, steps: list[int]) -> Path:
        ini = write_config(tmp_path / folder / "run.ini", dataset)
        for total in steps:
            result = train(config.load(ini, overrides=[f"Train.total_iterations={total}"]),
                           log=lambda line: None)
            assert result.last_step == total
        return tmp_path / folder / "run" / "checkpoints" / "model.ckpt-5"

    reader_a = tf.train.load_checkpoint(str(run_to("straight", [5])))
    reader_b = tf.train.load_checkpoint(str(run_to("resumed", [3, 5])))
    names = [n for n in reader_a.get_variable_to_shape_map() if n.startswith("model/")]
    assert len(names) > 20
    for name in names:
        np.testing.assert_allclose(reader_a.get_tensor(name), reader_b.get_tensor(name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_ctrl_c_saves_a_checkpoint(tmp_path, dataset):
    # What an interrupt does is the trainer's: the cheapest network to trace (GlobalNet) does.
    cfg = config.load(write_config(tmp_path / "c.ini", dataset, Network=GLOBAL,
                                   Train={"total_iterations": "50", "freq_model_save": "100"}))

    def interrupt(line: str) -> None:
        if line.startswith("step 2/"):
            raise KeyboardInterrupt

    result = train(cfg, log=interrupt)
    assert result.interrupted and result.last_step == 2
    assert (tmp_path / "run" / "checkpoints" / "model.ckpt-2.index").is_file()


# The full-size LocalNet (c=32, six Dice scales), one step (make test-slow).
@pytest.mark.slow
def test_label_reg_config_demo_trains_with_only_paths_changed(tmp_path, dataset):
    # label-reg's config_demo.ini, key for key, with its paths pointed at the tiny dataset.
    text = f"""[Data]
dir_moving_image = {dataset}/moving_images
dir_fixed_image = {dataset}/fixed_images
dir_moving_label = {dataset}/moving_labels
dir_fixed_label = {dataset}/fixed_labels

[Network]
network_type = local

[Loss]
similarity_type = dice
similarity_scales = [0, 1, 2, 4, 8, 16]
regulariser_type = bending
regulariser_weight = 0.5

[Train]
total_iterations = 10000
minibatch_size = 4
learning_rate = 1e-5
freq_info_print = 100
freq_model_save = 500
file_model_save = {tmp_path}/data/model.ckpt

[Inference]
file_model_saved = {tmp_path}/data/model.ckpt
dir_moving_image = {dataset}/moving_images
dir_fixed_image = {dataset}/fixed_images
dir_save = {tmp_path}/data/
dir_moving_label = {dataset}/moving_labels
dir_fixed_label = {dataset}/fixed_labels
"""
    ini = tmp_path / "config_demo.ini"
    ini.write_text(text)
    cfg = config.load(ini, ["Train.total_iterations=1"])  # one step of the full-size LocalNet
    assert cfg["Train"]["minibatch_size"] == 4 and cfg["Loss"]["regulariser_weight"] == 0.5
    result = train(cfg, log=lambda line: None)
    assert result.last_step == 1 and np.isfinite(result.last_values["loss"])


# A training step at the real shapes (MR 69x69x64, US 47x63x44): make test-slow. The real
# files' loading and batching run in the default suite (tests/test_data_pipeline.py).
@pytest.mark.slow
def test_one_training_step_on_the_shared_real_data(tmp_path, mrus_sample_dir):
    # With the centroid term, the random shifts and the intensity augmentation on.
    data = Path(mrus_sample_dir)
    ini = write_config(tmp_path / "real.ini", data,
                       Train={"total_iterations": "1", "minibatch_size": "2"},
                       Loss={"centroid_weight": "0.05"},
                       Data={"translation": "3", "intensity_gamma": "0.3",
                             "intensity_noise": "0.05"},
                       Network={"moving_input": "identity"})
    result = train(config.load(ini), log=lambda line: None)
    assert result.last_step == 1
    values = result.last_values
    assert 0.0 <= values["dice"] <= 1.0 and np.isfinite(values["loss"])
    # The gland's Dice and the landmarks' distance, each over the pairs that sampled it (NaN
    # when no pair of the step did); together they cover both pairs.
    gland, tre = values["dice_gland"], values["tre_mm"]
    assert np.isfinite(gland) or np.isfinite(tre)
    assert not np.isfinite(gland) or 0.0 <= gland <= 1.0
    assert not np.isfinite(tre) or tre >= 0.0
    # The centroid term is logged and, at the first step (zero field), equals the label
    # distance the monitoring metric measures on the same augmented pair.
    assert np.isfinite(values["centroid_loss_mm"])
    assert values["centroid_loss_mm"] == pytest.approx(values["centroid_distance_mm"], rel=0.05)
    assert values["loss"] == pytest.approx(values["label_loss"] + 0.05 * values["centroid_loss_mm"]
                                           + 0.5 * values.get("regulariser", 0.0), rel=1e-4)


def test_intensity_keys_reach_the_training_augmentation(tmp_path, dataset):
    from labelreg._tf import tf
    from labelreg.methods.label_driven import LabelDriven

    rng = np.random.default_rng(0)
    batch = {"moving_image": rng.random((2, 8, 9, 7, 1), np.float32),
             "fixed_image": rng.random((2, 8, 9, 7, 1), np.float32),
             "moving_label": (rng.random((2, 8, 9, 7, 1)) > 0.5).astype(np.float32),
             "fixed_label": (rng.random((2, 8, 9, 7, 1)) > 0.5).astype(np.float32),
             "step": tf.constant(4, tf.int64), "case_index": tf.constant([0, 1])}
    out = {}
    for name, extra in (("plain", {}), ("intensity", {"intensity_gamma": "0.4",
                                                      "intensity_noise": "0.1"})):
        ini = write_config(tmp_path / f"{name}.ini", dataset, Data=extra)
        method = LabelDriven(config.load(ini), log=lambda line: None)
        method.source.spacing_table = tf.ones([2, 3])
        out[name] = method.preprocess(dict(batch))
    for key in ("moving_label", "fixed_label", "moving_affine", "fixed_affine"):
        np.testing.assert_array_equal(out["intensity"][key].numpy(), out["plain"][key].numpy())
    for key in ("moving_image", "fixed_image"):
        assert np.abs(out["intensity"][key].numpy() - out["plain"][key].numpy()).max() > 0.01


def test_flip_axes_key_reaches_the_training_augmentation(tmp_path, dataset):
    from labelreg._tf import tf
    from labelreg.methods.label_driven import LabelDriven

    rng = np.random.default_rng(1)
    batch = {"moving_image": rng.random((8, 8, 9, 7, 1), np.float32),
             "fixed_image": rng.random((8, 8, 9, 7, 1), np.float32),
             "step": tf.constant(2, tf.int64), "case_index": tf.zeros([8], tf.int32)}
    out = {}
    for name, extra in (("plain", {}), ("flip", {"flip_axes": "[1]"})):
        ini = write_config(tmp_path / f"{name}.ini", dataset, Data=extra,
                           Train={"minibatch_size": "2"})
        method = LabelDriven(config.load(ini), log=lambda line: None)
        method.source.spacing_table = tf.ones([1, 3])
        out[name] = method.preprocess(dict(batch))["moving_affine"].numpy()
    # A mirrored pair's affine has its axis-1 column negated; the others are untouched.
    signs = np.sign(out["flip"][:, 1, 1]) * np.sign(out["plain"][:, 1, 1])
    assert set(signs.tolist()) == {-1.0, 1.0}
    np.testing.assert_allclose(out["flip"][..., [0, 2]], out["plain"][..., [0, 2]], atol=1e-6)


def test_flip_axes_beyond_the_images_axes(tmp_path, dataset, capsys):
    ini = write_config(tmp_path / "x.ini", dataset, Data={"flip_axes": "[0, 3]"})
    _expect_failure(capsys, [str(ini)], "[Data] flip_axes", "in [0, 2]")
    ini = write_config(tmp_path / "y.ini", dataset, Data={"flip_axes": "[1, 1]"})
    _expect_failure(capsys, [str(ini)], "[Data] flip_axes", "distinct spatial axes in [0, 3)")
    assert not (tmp_path / "run").exists()


# ---- bad input: a clear error naming the culprit, exit code 2, and nothing written ----------


def _expect_failure(capsys, argv, *fragments):
    code = train_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def test_missing_folder(tmp_path, dataset, capsys):
    ini = write_config(tmp_path / "x.ini", dataset,
                       Data={"dir_moving_image": str(tmp_path / "nowhere")})
    _expect_failure(capsys, [str(ini)], "x.ini", "[Data] dir_moving_image", "nowhere",
                    "folder not found")
    assert not (tmp_path / "run").exists()
    # Inference names its own key; --export reads no test folder.
    ini = write_config(tmp_path / "y.ini", dataset,
                       Inference={"dir_fixed_label": str(tmp_path / "gone")})
    assert infer_main([str(ini)]) == 2
    err = capsys.readouterr().err
    assert "[Inference] dir_fixed_label" in err and "gone" in err and "folder not found" in err


MISSING_FOLDER_SCRIPT = """
import sys
from labelreg.cli import infer_main, train_main
main = train_main if sys.argv[1] == "train" else infer_main
code = main([sys.argv[2]])
print(code, "tensorflow" in sys.modules)
"""


@pytest.mark.parametrize("command", ["train", "infer"])
def test_a_missing_folder_is_reported_before_tensorflow_loads(tmp_path, dataset, command):
    import subprocess
    import sys

    section = "Data" if command == "train" else "Inference"
    ini = write_config(tmp_path / "x.ini", dataset,
                       **{section: {"dir_fixed_image": str(tmp_path / "nowhere")}})
    done = subprocess.run([sys.executable, "-c", MISSING_FOLDER_SCRIPT, command, str(ini)],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert f"[{section}] dir_fixed_image" in done.stderr and "folder not found" in done.stderr


def test_a_demo_dataset_still_to_be_generated_is_not_a_missing_folder(tmp_path):
    from labelreg.methods.label_driven_config import check_inputs

    root = tmp_path / "demo_data"
    ini = write_config(tmp_path / "demo.ini", root / "train",
                       Data={"demo_data": str(root)})
    cfg = config.load(ini)
    check_inputs(cfg, "train")  # generated on first use
    root.mkdir()
    with pytest.raises(config.ConfigError, match=r"\[Data\] dir_moving_image.*folder not found"):
        check_inputs(cfg, "train")


def test_folders_with_different_names(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=3)
    os.rename(data / "fixed_images" / "case01.nii.gz", data / "fixed_images" / "other.nii.gz")
    ini = write_config(tmp_path / "x.ini", data)
    _expect_failure(capsys, [str(ini)], "case01", "fixed_images")
    assert not (tmp_path / "run").exists()


def test_different_label_counts(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=3)
    # A 3-D fixed label where the moving label holds 2 landmarks.
    write_case(data, "case02", np.random.default_rng(5), num_labels=2)
    label = nib.load(data / "fixed_labels" / "case02.nii.gz")
    nib.save(nib.Nifti1Image(label.get_fdata()[..., 0].astype(np.float32), label.affine),
             data / "fixed_labels" / "case02.nii.gz")
    ini = write_config(tmp_path / "x.ini", data)
    _expect_failure(capsys, [str(ini)], "case02", "2 label(s)", "1")
    assert not (tmp_path / "run").exists()


def test_corrupt_nifti(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=3)
    (data / "moving_images" / "case01.nii.gz").write_bytes(b"\x1f\x8bnot really gzip")
    ini = write_config(tmp_path / "x.ini", data)
    _expect_failure(capsys, [str(ini)], "case01.nii.gz")
    assert not list((tmp_path / "run").glob("checkpoints/*.index"))


def test_nan_in_an_image(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", num_cases=3)
    image = nib.load(data / "moving_images" / "case02.nii.gz")
    values = image.get_fdata().astype(np.float32)
    values[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine), data / "moving_images" / "case02.nii.gz")
    ini = write_config(tmp_path / "x.ini", data)
    _expect_failure(capsys, [str(ini)], "case02.nii.gz", "NaN")
    assert not list((tmp_path / "run").glob("checkpoints/*.index"))


def test_misspelt_key_and_wrong_type(tmp_path, dataset, capsys):
    ini = write_config(tmp_path / "x.ini", dataset, Train={"learnin_rate": "1e-3"})
    _expect_failure(capsys, [str(ini)], "x.ini", "[Train]", "learnin_rate", "learning_rate")
    ini = write_config(tmp_path / "y.ini", dataset, Train={"minibatch_size": "four"})
    _expect_failure(capsys, [str(ini)], "y.ini", "minibatch_size", "four")
    _expect_failure(capsys, [str(write_config(tmp_path / "z.ini", dataset)),
                             "--set", "Train.total_iterations=-3"], "total_iterations", "-3")
    assert not (tmp_path / "run").exists()


def test_minibatch_larger_than_the_dataset(tmp_path, dataset, capsys):
    ini = write_config(tmp_path / "x.ini", dataset, Train={"minibatch_size": "9"})
    _expect_failure(capsys, [str(ini)], "minibatch_size", "9", "4")
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def trained_ini(tmp_path_factory, dataset) -> Path:
    """A saved (untrained) network for the module's dataset, for the tests that only read a
    checkpoint."""
    from tests.conftest import save_untrained_run

    ini = write_config(tmp_path_factory.mktemp("trained") / "trained.ini", dataset)
    save_untrained_run(ini)
    return ini


def test_unwritable_dir_save(tmp_path, dataset, trained_ini, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ini = write_config(tmp_path / "x.ini", dataset, Inference={
        "dir_save": str(blocker / "out"),
        "file_model_saved": str(trained_ini.parent / "run" / "model.ckpt")})
    assert infer_main([str(ini)]) == 2
    err = capsys.readouterr().err
    assert "dir_save" in err and "a-file" in err


def test_inference_failure_keeps_the_other_pairs(tmp_path, dataset, trained_ini, capsys):
    # One unreadable file fails its own pair (exit code 1); the other pairs are written whole.
    import shutil

    data = Path(shutil.copytree(dataset, tmp_path / "data"))
    for folder in data.iterdir():
        (folder / "case03.nii.gz").unlink()
    ini = write_config(tmp_path / "x.ini", data, Inference={
        "file_model_saved": str(trained_ini.parent / "run" / "model.ckpt")})
    (data / "fixed_images" / "case02.nii.gz").write_bytes(b"garbage")
    assert infer_main([str(ini)]) == 1
    assert "case02.nii.gz" in capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["case00", "case01", "failed.csv",
                                                     "metrics.csv"]
    assert "case02.nii.gz" in (out / "failed.csv").read_text()


@pytest.mark.parametrize(("probability", "expected"), [("1", {0}), ("0", {1})])
def test_label0_probability_reaches_the_training_stream(tmp_path, dataset, probability,
                                                       expected):
    from labelreg.methods.label_driven import LabelDriven

    ini = write_config(tmp_path / "x.ini", dataset, Data={"label0_probability": probability})
    method = LabelDriven(config.load(ini), log=lambda line: None)
    method.prepare_data()
    labels = set()
    for batch in method.source.train_dataset(seed=0, start_step=0).take(4):
        labels |= set(batch["label_index"].numpy().tolist())
    assert labels == expected  # write_case: a gland (0) and one landmark (1) per case
