"""Bad inputs through the public entry points.

Every case feeds one malformed input (a config, a data file or folder, an array) to
``training.py``/``inference.py`` (:func:`labelreg.cli.train_main`, :func:`labelreg.cli.infer_main`,
including ``--export``) or to a library function of the public API, and checks two things: the
type of the failure (exit code 2 for the command lines, else the exception class) and a message
that names the culprit (file, folder, section/key or argument) and says what was expected.
The last test fuzzes the TF-free config loader with random sections, keys and values.
"""

from __future__ import annotations

import configparser
import csv
import gzip
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labelreg
from labelreg import losses, metrics
from labelreg._tf import tf
from labelreg.cli import infer_main, train_main
from labelreg.data import NiftiReader, PairedDataset
from labelreg.data.pipeline import CaseCache, normalise_intensity
from labelreg.errors import ConfigError, DataError
from labelreg.methods.registry import METHODS, load_config
from tests.conftest import save_untrained_run
from tests.test_data_nifti import write_nifti
from tests.test_pipeline_e2e import write_config

# A folder holding a stray file is expected to warn about it before failing.
pytestmark = pytest.mark.filterwarnings("ignore:.*that are not NIfTI files:UserWarning")

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 8, 8)
FOLDERS = ("moving_images", "fixed_images", "moving_labels", "fixed_labels")
CASES = ("case0", "case1")


# ------------------------------------------------------------------------------------------
# A tiny valid dataset and config; each case below breaks one thing
# ------------------------------------------------------------------------------------------


def ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    """A binary ball (uint8) of ``radius`` voxels around ``centre``."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return (np.linalg.norm(grid - np.asarray(centre), axis=-1) <= radius).astype(np.uint8)


def two_labels(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """A 4-D label volume holding a gland and a landmark, ``[*shape, 2]``."""
    return np.stack([ball(shape, (4, 4, 4), 2.5), ball(shape, (2, 3, 3), 1)], -1)


def write_tiny_dataset(root: Path) -> Path:
    """Two 8x8x8 cases in label-reg's four-folder layout, two labels each."""
    rng = np.random.default_rng(7)
    for name in CASES:
        write_nifti(root / "moving_images" / f"{name}.nii.gz",
                    rng.uniform(0, 100, SHAPE).astype(np.float32))
        write_nifti(root / "fixed_images" / f"{name}.nii.gz",
                    rng.uniform(0, 50, SHAPE).astype(np.float32))
        write_nifti(root / "moving_labels" / f"{name}.nii.gz", two_labels())
        write_nifti(root / "fixed_labels" / f"{name}.nii.gz", two_labels())
    return root


def case_file(data: Path, folder: str, case: str = "case1") -> Path:
    return data / folder / f"{case}.nii.gz"


def image_with(value: float, dtype: type = np.float32) -> np.ndarray:
    """A valid-looking image with one voxel replaced by ``value``."""
    image = np.random.default_rng(3).uniform(0, 100, SHAPE).astype(dtype)
    image[1, 2, 3] = value
    return image


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "data")


def run_cli(main: Callable[[list[str]], int], argv: list[str], capsys) -> str:
    """Run a command line that must fail with exit code 2; return its stderr."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert any(line.startswith("error: ") for line in err.splitlines()), err
    return err


def assert_mentions(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


# ------------------------------------------------------------------------------------------
# training.py: the configuration (rejected before TensorFlow builds anything)
# ------------------------------------------------------------------------------------------

# Each entry: (config changes, extra argv, fragments the message must hold). "{ini}" stands for
# the config file's path.
CONFIG_CASES = {
    "unknown_key": (
        {"Train": {"learnin_rate": "1e-3"}}, [],
        ("{ini}", "[Train] learnin_rate", "unknown key", "Did you mean 'learning_rate'?"),
    ),
    "wrong_value_type": (
        {"Train": {"minibatch_size": "two"}}, [],
        ("{ini}", "[Train] minibatch_size = 'two'", "expected an integer"),
    ),
    "value_out_of_range": (
        {"Data": {"affine_scale": "0.9"}}, [],
        ("{ini}", "[Data] affine_scale = '0.9'", "expected a number in [0.0, 0.5]"),
    ),
    "non_finite_number": (
        {"Train": {"learning_rate": "nan"}}, [],
        ("{ini}", "[Train] learning_rate = 'nan'", "expected a number"),
    ),
    "bad_list_element": (
        {"Loss": {"similarity_scales": "[0, 1, two]"}}, [],
        ("{ini}", "[Loss] similarity_scales", "a list of integers"),
    ),
    "unknown_choice": (
        {"Network": {"network_type": "lokal"}}, [],
        ("{ini}", "[Network] network_type = 'lokal'", "expected one of", "Did you mean 'local'?"),
    ),
    "unknown_section": (
        {"Trian": {"seed": "1"}}, [],
        ("{ini}", "unknown section [Trian]", "expected one of", "Did you mean 'Train'?"),
    ),
    "unknown_method": (
        {"Method": {"name": "labelrge"}}, [],
        ("{ini}", "[Method] name = 'labelrge'", "unknown method", "expected one of", "labelreg"),
    ),
    "override_out_of_range": (
        {}, ["--set", "Train.total_iterations=-3"],
        ("{ini}", "override 'Train.total_iterations=-3'", "expected an integer in [1, inf]"),
    ),
    "override_without_value": (
        {}, ["--set", "Train.learning_rate"],
        ("override 'Train.learning_rate'", "expected 'Section.key=value'"),
    ),
    "label_folder_without_partner": (
        {"Data": {"dir_fixed_label": ""}}, [],
        ("{ini}", "[Data] dir_fixed_label", "must be set together with dir_moving_label"),
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_training_refuses_a_bad_config(case: str, tmp_path: Path, data: Path, capsys) -> None:
    changes, extra, fragments = CONFIG_CASES[case]
    ini = write_config(tmp_path / "run.ini", data, **changes)
    err = run_cli(train_main, [str(ini), *extra], capsys)
    assert_mentions(err, *(f.format(ini=ini) for f in fragments))
    assert not (tmp_path / "run").exists()


def test_training_refuses_a_missing_config(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "run.ini"
    err = run_cli(train_main, [str(missing)], capsys)
    assert_mentions(err, str(missing), "not found")


def test_training_refuses_a_config_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    ini = tmp_path / "run.ini"
    ini.write_bytes(b"[Train]\nseed = \xff\xfe\n")
    err = run_cli(train_main, [str(ini)], capsys)
    assert_mentions(err, str(ini), "not a UTF-8 text file")


def test_training_refuses_a_config_that_is_not_ini(tmp_path: Path, capsys) -> None:
    ini = tmp_path / "run.ini"
    ini.write_text("seed = 1\n[Train\n")
    err = run_cli(train_main, [str(ini)], capsys)
    assert_mentions(err, str(ini), "not a valid INI file")


# ------------------------------------------------------------------------------------------
# training.py: the data (rejected in prepare_data, before a run folder or a model exists)
# ------------------------------------------------------------------------------------------


def _missing_folder(data: Path) -> tuple[dict, tuple[str, ...]]:
    missing = data / "no_such_folder"
    return {"Data": {"dir_moving_image": str(missing)}}, (str(missing), "folder not found")


def _folder_without_nifti(data: Path) -> tuple[dict, tuple[str, ...]]:
    empty = data / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    return {"Data": {"dir_fixed_image": str(empty)}}, (str(empty), "no NIfTI file")


def _missing_case_file(data: Path) -> tuple[dict, tuple[str, ...]]:
    case_file(data, "fixed_images").unlink()
    return {}, ("'case1'", str(data / "fixed_images"), "no file of that name")


def _zero_byte_file(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = case_file(data, "moving_images")
    path.write_bytes(b"")
    return {}, (str(path), "cannot be read as NIfTI", "expected a valid .nii or .nii.gz")


def _text_named_nii_gz(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = case_file(data, "fixed_labels")
    path.write_text("this is not an image\n")
    return {}, (str(path), "cannot be read as NIfTI", "expected a valid .nii or .nii.gz")


def _gzip_of_garbage(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = case_file(data, "moving_labels")
    path.write_bytes(gzip.compress(b"\x00" * 600))
    return {}, (str(path), "cannot be read as NIfTI")


def _truncated_gzip(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = case_file(data, "fixed_images")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return {}, (str(path), "cannot read the voxel data", "truncated")


def _nan_in_image(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "moving_images"), image_with(np.nan))
    return {}, (str(path), "1 NaN or Inf", "expected finite intensities")


def _inf_in_image(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "fixed_images"), image_with(-np.inf))
    return {}, (str(path), "1 NaN or Inf", "expected finite intensities")


def _beyond_float32(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "moving_images"), image_with(1e300, np.float64))
    return {}, (str(path), "float32", "1e+300")


def _complex_image(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "fixed_images"),
                       image_with(0.0).astype(np.complex64) * (1 + 1j))
    return {}, (str(path), "complex64", "expected real")


def _five_dimensional(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "moving_labels"), np.zeros((*SHAPE, 2, 2), np.uint8))
    return {}, (str(path), "(8, 8, 8, 2, 2)", "expected a 2-D, 3-D or 4-D")


def _two_d_moving_three_d_fixed(data: Path) -> tuple[dict, tuple[str, ...]]:
    for name in CASES:
        write_nifti(case_file(data, "moving_images", name), np.ones(SHAPE[:2], np.float32))
    return {}, (str(data / "moving_images"), str(data / "fixed_images"),
                "same number of spatial axes")


def _shape_differs_in_folder(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "fixed_images"), np.ones((8, 8, 7), np.float32))
    return {}, (str(path), "(8, 8, 7) differs from (8, 8, 8)", "same shape")


def _label_shape_differs_from_image(data: Path) -> tuple[dict, tuple[str, ...]]:
    for name in CASES:
        write_nifti(case_file(data, "moving_labels", name), two_labels((8, 8, 6)))
    return {}, (str(data / "moving_labels"), "label spatial shape (8, 8, 6)",
                "image shape (8, 8, 8)")


def _label_count_mismatch(data: Path) -> tuple[dict, tuple[str, ...]]:
    fixed = write_nifti(case_file(data, "fixed_labels"), two_labels()[..., 0])
    moving = case_file(data, "moving_labels")
    return {}, ("'case1'", f"{moving} holds 2 label(s)", f"{fixed} holds 1",
                "must correspond one to one")


def _label_not_binary_range(data: Path) -> tuple[dict, tuple[str, ...]]:
    path = write_nifti(case_file(data, "fixed_labels", "case0"), two_labels() * 255)
    return {}, (str(path), "must lie in [0, 1]", "[0, 255]")


def _batch_larger_than_data(data: Path) -> tuple[dict, tuple[str, ...]]:
    return {"Train": {"minibatch_size": "3"}}, ("[Train] minibatch_size = 3", "2 training cases")


DATA_CASES = {
    "missing_folder": _missing_folder,
    "folder_without_nifti": _folder_without_nifti,
    "missing_case_file": _missing_case_file,
    "zero_byte_file": _zero_byte_file,
    "text_named_nii_gz": _text_named_nii_gz,
    "gzip_of_garbage": _gzip_of_garbage,
    "truncated_gzip": _truncated_gzip,
    "nan_in_image_file": _nan_in_image,
    "inf_in_image_file": _inf_in_image,
    "value_beyond_float32": _beyond_float32,
    "complex_image_file": _complex_image,
    "five_dimensional_file": _five_dimensional,
    "2d_moving_3d_fixed": _two_d_moving_three_d_fixed,
    "shape_differs_within_folder": _shape_differs_in_folder,
    "label_shape_differs_from_image": _label_shape_differs_from_image,
    "label_count_mismatch": _label_count_mismatch,
    "label_values_0_255": _label_not_binary_range,
    "minibatch_larger_than_data": _batch_larger_than_data,
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_training_refuses_bad_data(case: str, tmp_path: Path, data: Path, capsys) -> None:
    changes, fragments = DATA_CASES[case](data)
    ini = write_config(tmp_path / "run.ini", data, **changes)
    err = run_cli(train_main, [str(ini)], capsys)
    assert_mentions(err, *fragments)
    assert not (tmp_path / "run").exists(), "the data error must come before the run folder"


# ------------------------------------------------------------------------------------------
# inference.py and inference.py --export
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("export", [False, True], ids=["infer", "export"])
def test_inference_without_a_checkpoint(export: bool, tmp_path: Path, data: Path,
                                        capsys) -> None:
    ini = write_config(tmp_path / "run.ini", data)
    argv = [str(ini), "--export", str(tmp_path / "exports")] if export else [str(ini)]
    err = run_cli(infer_main, argv, capsys)
    assert_mentions(err, str(tmp_path / "run" / "model.ckpt"), "no checkpoint found",
                    "Train first")
    assert not (tmp_path / "exports").exists() and not (tmp_path / "out").exists()


def test_inference_refuses_an_unknown_inference_key(tmp_path: Path, data: Path, capsys) -> None:
    ini = write_config(tmp_path / "run.ini", data, Inference={"dir_sav": str(tmp_path / "o")})
    err = run_cli(infer_main, [str(ini), "--export", str(tmp_path / "exports")], capsys)
    assert_mentions(err, str(ini), "[Inference] dir_sav", "Did you mean 'dir_save'?")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config of a saved (untrained) run: a narrow LocalNet on the tiny dataset."""
    root = tmp_path_factory.mktemp("trained")
    ini = write_config(
        root / "run.ini", write_tiny_dataset(root / "data"),
        Data={"augmentation": "false"}, Network={"num_channel_initial": "2"},
        Loss={"similarity_scales": "[0]"},
        Train={"total_iterations": "1", "freq_model_save": "1"},
        Inference={"save_png": "false"},
    )
    save_untrained_run(ini)
    return ini


def _set(key: str, value: object) -> list[str]:
    return ["--set", f"Inference.{key}={value}"]


def _infer_missing_test_folder(data: Path, tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    missing = tmp / "no_such_folder"
    return _set("dir_fixed_image", missing), (str(missing), "folder not found")


def _infer_2d_images_for_3d_model(data: Path, tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    for folder in ("moving", "fixed"):
        for name in CASES:
            write_nifti(tmp / folder / f"{name}.nii.gz", np.ones((8, 8), np.float32))
    argv = [*_set("dir_moving_image", tmp / "moving"), *_set("dir_fixed_image", tmp / "fixed"),
            *_set("dir_moving_label", ""), *_set("dir_fixed_label", "")]
    return argv, (str(tmp / "fixed"), "2-D images", "is 3-D")


def _export_into_a_file(data: Path, tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    blocker = tmp / "a_file"
    blocker.write_text("not a folder")
    return ["--export", str(blocker)], (str(blocker), "cannot create the model folder")


def _export_negative_version(data: Path, tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    return (["--export", str(tmp / "exports"), "--version", "-1"],
            ("version must be a positive integer", "version=-1"))


def _export_name_with_a_path(data: Path, tmp: Path) -> tuple[list[str], tuple[str, ...]]:
    return (["--export", str(tmp / "exports"), "--name", "../elsewhere"],
            ("name must be a plain folder name", "'../elsewhere'"))


INFER_CASES = {
    "infer_missing_test_folder": _infer_missing_test_folder,
    "infer_2d_images_for_3d_model": _infer_2d_images_for_3d_model,
    "export_into_a_file": _export_into_a_file,
    "export_negative_version": _export_negative_version,
    "export_name_with_a_path": _export_name_with_a_path,
}


@pytest.mark.parametrize("case", list(INFER_CASES))
def test_inference_and_export_refuse_bad_inputs(case: str, trained: Path, tmp_path: Path,
                                                capsys) -> None:
    argv, fragments = INFER_CASES[case](trained.parent / "data", tmp_path)
    out = tmp_path / "out"
    err = run_cli(infer_main, [str(trained), *_set("dir_save", out), *argv], capsys)
    assert_mentions(err, *fragments)
    assert not out.exists(), "a failed inference must leave no output"
    assert not (tmp_path / "exports").exists()


# Pairs are independent at inference: a pair with bad files is named (exit code 1, the log and
# <dir_save>/failed.csv) and the other pairs are registered.


def _pair_nan_in_test_image(data: Path, tmp: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    shutil.copytree(data / "fixed_images", tmp / "fixed")
    path = write_nifti(case_file(tmp, "fixed"), image_with(np.nan))
    return _set("dir_fixed_image", tmp / "fixed"), path, ("1 NaN or Inf", "expected finite")


def _pair_label_count_mismatch(data: Path, tmp: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    shutil.copytree(data / "fixed_labels", tmp / "labels")
    path = write_nifti(case_file(tmp, "labels"), two_labels()[..., 0])
    return (_set("dir_fixed_label", tmp / "labels"), path,
            (f"{path} holds 1", "2 label(s)", "correspond one to one"))


def _pair_truncated_test_image(data: Path, tmp: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    shutil.copytree(data / "moving_images", tmp / "moving")
    path = case_file(tmp, "moving")
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:400]))
    return _set("dir_moving_image", tmp / "moving"), path, ("cannot read the voxel data",)


PAIR_CASES = {
    "infer_nan_in_test_image": _pair_nan_in_test_image,
    "infer_label_count_mismatch": _pair_label_count_mismatch,
    "infer_truncated_test_image": _pair_truncated_test_image,
}


@pytest.mark.parametrize("case", list(PAIR_CASES))
def test_inference_names_a_bad_pair_and_registers_the_others(case: str, trained: Path,
                                                             tmp_path: Path, capsys) -> None:
    argv, path, fragments = PAIR_CASES[case](trained.parent / "data", tmp_path)
    out = tmp_path / "out"
    code = infer_main([str(trained), *_set("dir_save", out), *argv])
    err = capsys.readouterr().err
    assert code == 1, err
    assert_mentions(err, "1 pair(s) failed (case1)", str(out / "failed.csv"))
    with open(out / "failed.csv", newline="", encoding="utf-8") as table:
        rows = list(csv.DictReader(table))
    assert [(row["case"], row["file"]) for row in rows] == [("case1", str(path))]
    assert_mentions(rows[0]["error"], *fragments)
    assert (out / "case0").is_dir() and not (out / "case1").exists()


# ------------------------------------------------------------------------------------------
# The readers
# ------------------------------------------------------------------------------------------


def test_reader_refuses_an_out_of_range_label_index(data: Path) -> None:
    reader = NiftiReader(data / "moving_labels")
    with pytest.raises(DataError) as info:
        reader.get_data([0, 1], label_indices=[0, 2])
    assert_mentions(str(info.value), str(case_file(data, "moving_labels")), "label index 2",
                    "holds 2 label(s)")


def test_reader_refuses_a_file_instead_of_a_folder(data: Path) -> None:
    path = case_file(data, "moving_images")
    with pytest.raises(DataError) as info:
        NiftiReader(path)
    assert_mentions(str(info.value), str(path), "expected a folder of NIfTI files")


def test_empty_labels_are_accepted_with_a_warning(data: Path) -> None:
    # Two empty masks agree (Dice 1, never NaN: the API's convention), so an empty label is
    # valid data; training warns because such a label carries no alignment signal.
    empty = write_nifti(case_file(data, "fixed_labels"), np.zeros((*SHAPE, 2), np.uint8))
    paired = PairedDataset(*(data / folder for folder in FOLDERS))
    with pytest.warns(UserWarning, match="empty") as record:
        CaseCache(paired, num_workers=1)
    assert_mentions(str(record[0].message), str(empty), "label 0", "label 1")
    nothing = np.zeros((1, *SHAPE, 1), np.float32)
    assert metrics.dice(nothing, nothing).numpy()[0] == 1.0
    assert np.isfinite(losses.dice_loss(nothing, nothing).numpy()).all()
    assert np.isnan(metrics.centroid_distance(nothing, nothing).numpy()[0])


# ------------------------------------------------------------------------------------------
# Library functions: ranks, shapes, dtypes
# ------------------------------------------------------------------------------------------

IMAGE = np.random.default_rng(0).uniform(size=(1, *SHAPE, 1)).astype(np.float32)
MASK = (IMAGE > 0.5).astype(np.float32)
DDF = np.zeros((1, *SHAPE, 3), np.float32)

# Each entry: (call, exception type, fragments of the message).
LIBRARY_CASES = {
    "warp_2d_image_3d_ddf": (
        lambda: labelreg.warp(IMAGE[:, :, :, 0], DDF), ValueError,
        ("image and ddf", "same number of spatial axes", "(1, 8, 8, 1)"),
    ),
    "warp_image_without_batch_and_channel": (
        lambda: labelreg.warp(IMAGE[0, ..., 0], DDF), ValueError,
        ("image must have shape [batch, *spatial, channels]", "(8, 8, 8)"),
    ),
    "warp_batch_mismatch": (
        lambda: labelreg.warp(np.concatenate([IMAGE, IMAGE]), DDF), ValueError,
        ("same batch size", "(2, 8, 8, 8, 1)", "(1, 8, 8, 8, 3)"),
    ),
    "warp_ddf_wrong_last_dim": (
        lambda: labelreg.warp(IMAGE, DDF[..., :2]), ValueError,
        ("ddf has 2 displacement components", "[batch, *spatial, 3]"),
    ),
    "warp_unknown_interpolation": (
        lambda: labelreg.warp(IMAGE, DDF, interpolation="cubic"), ValueError,
        ("interpolation must be one of", "'cubic'"),
    ),
    "warp_complex_image": (
        lambda: labelreg.warp(IMAGE.astype(np.complex64), DDF), ValueError,
        ("image", "complex64", "real"),
    ),
    "warp_bool_ddf": (
        lambda: labelreg.warp(IMAGE, DDF > 0), ValueError,
        ("ddf", "bool", "displacement"),
    ),
    "warp_string_image": (
        lambda: labelreg.warp(np.full((1, *SHAPE, 1), "a"), DDF), ValueError,
        ("image", "string", "numeric"),
    ),
    "warp_ragged_list_image": (
        lambda: labelreg.warp([[1.0, 2.0], [3.0]], DDF), ValueError,
        ("image", "cannot be converted"),
    ),
    "dice_shape_mismatch": (
        lambda: metrics.dice(MASK, MASK[:, :7]), ValueError,
        ("a and b must have the same shape", "(1, 7, 8, 8, 1)"),
    ),
    "dice_loss_complex_prediction": (
        lambda: losses.dice_loss(MASK, MASK.astype(np.complex128)), ValueError,
        ("y_pred", "complex128", "real"),
    ),
    "bending_energy_2d_field_on_3d_grid": (
        lambda: losses.bending_energy(DDF[..., :2]), ValueError,
        ("ddf has 2 displacement components",),
    ),
    "bending_energy_grid_too_small": (
        lambda: losses.bending_energy(np.zeros((1, 4, 8, 8, 3), np.float32)), ValueError,
        ("ddf must have at least 5 voxels along every spatial axis", "(1, 4, 8, 8, 3)"),
    ),
    "centroid_spacing_wrong_length": (
        lambda: metrics.centroid_distance(MASK, MASK, spacing=(1.0, 1.0)), ValueError,
        ("spacing must be 3 positive voxel sizes", "(1.0, 1.0)"),
    ),
    "multi_scale_negative_scale": (
        lambda: losses.multi_scale_dice_loss(MASK, MASK, scales=(0, -2)), ValueError,
        ("scales", ">= 0", "(0, -2)"),
    ),
    "affine_to_ddf_wrong_theta": (
        lambda: labelreg.affine_to_ddf(np.zeros((1, 3, 3), np.float32), SHAPE), ValueError,
        ("theta must have shape", "(1, 3, 3)"),
    ),
    "compose_mismatched_components": (
        lambda: labelreg.compose(DDF, DDF[..., :2]), ValueError,
        ("ddf_b has 2 displacement components",),
    ),
    "normalise_complex_image": (
        lambda: normalise_intensity(IMAGE[0, ..., 0].astype(np.complex64)), ValueError,
        ("image", "complex64", "real"),
    ),
    "normalise_empty_image": (
        lambda: normalise_intensity(np.zeros((0, 8), np.float32)), ValueError,
        ("image", "empty", "(0, 8)"),
    ),
    "normalise_float64_beyond_float32": (
        lambda: normalise_intensity(np.array([0.0, 1e300])), ValueError,
        ("image", "beyond the float32 range", "1e+300"),
    ),
}


@pytest.mark.parametrize("case", list(LIBRARY_CASES))
def test_library_refuses_bad_arguments(case: str) -> None:
    call, error, fragments = LIBRARY_CASES[case]
    with pytest.raises(error) as info:
        call()
    assert_mentions(str(info.value), *fragments)


def test_network_refuses_a_2d_pair_where_3d_is_expected() -> None:
    net = labelreg.networks.LocalNet(ndim=3, num_channel_initial=2)
    with pytest.raises(ValueError) as info:
        net([IMAGE[:, :, :, 0], IMAGE[:, :, :, 0]])
    assert_mentions(str(info.value), "3-D", "moving_image must have rank 5", "(1, 8, 8, 1)")


def test_bool_masks_count_as_zero_and_one() -> None:
    # Masks may come as booleans (e.g. ``label > 0``); only a bool *displacement* is refused.
    np.testing.assert_array_equal(metrics.dice(MASK > 0.5, MASK).numpy(), [1.0])
    np.testing.assert_array_equal(labelreg.warp(MASK > 0.5, DDF).numpy(), MASK)


# ------------------------------------------------------------------------------------------
# Library functions: NaN, Inf and huge values in tensors
# ------------------------------------------------------------------------------------------


def with_value(array: np.ndarray, value: float) -> np.ndarray:
    """A copy of ``array`` with its middle element replaced by ``value``."""
    out = array.copy()
    out.flat[out.size // 2] = value
    return out


NONFINITE_CASES = {
    "network_nan_moving_image": (
        lambda v: labelreg.networks.GlobalNet(ndim=3)([with_value(IMAGE, v), IMAGE]),
        "moving_image",
    ),
    "dice_nan_mask": (lambda v: metrics.dice(MASK, with_value(MASK, v)), "b"),
    "dice_loss_nan_prediction": (lambda v: losses.dice_loss(MASK, with_value(MASK, v)), "y_pred"),
    "multi_scale_dice_nan_label": (
        lambda v: losses.multi_scale_dice_loss(with_value(MASK, v), MASK), "y_true",
    ),
    "ssd_nan_fixed_image": (lambda v: losses.ssd(with_value(IMAGE, v), IMAGE), "fixed"),
    "lncc_nan_warped_image": (lambda v: losses.lncc(IMAGE, with_value(IMAGE, v)), "warped"),
    "bending_energy_nan_ddf": (lambda v: losses.bending_energy(with_value(DDF, v)), "ddf"),
    "folding_ratio_nan_ddf": (lambda v: metrics.folding_ratio(with_value(DDF, v)), "ddf"),
    "hausdorff95_nan_mask": (lambda v: metrics.hausdorff95(with_value(MASK, v), MASK), "a"),
    "normalise_nan_image": (lambda v: normalise_intensity(with_value(IMAGE, v)), "image"),
}


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("case", list(NONFINITE_CASES))
def test_library_refuses_nan_and_inf(case: str, value: float) -> None:
    call, name = NONFINITE_CASES[case]
    with pytest.raises(ValueError) as info:
        call(value)
    assert_mentions(str(info.value), f"{name} contains", "NaN or Inf", "must be finite")


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_warp_never_turns_a_nonfinite_displacement_into_a_plausible_value(
    value: float, interpolation: str
) -> None:
    # warp runs inside compiled training steps, where it cannot raise; a non-finite
    # displacement must then give NaN where it is, not a finite sample of the image.
    ddf = DDF.copy()
    ddf[0, 2, 3, 4, 1] = value
    out = labelreg.warp(IMAGE + 1.0, ddf, interpolation=interpolation).numpy()
    assert np.isnan(out[0, 2, 3, 4, 0])
    out[0, 2, 3, 4, 0] = 0.0
    assert np.isfinite(out).all()


@pytest.mark.parametrize("low, high", [(-1e38, 1e38), (-3e38, 3.4e38), (0.0, 3.4e38)])
def test_normalising_huge_intensities_stays_finite(low: float, high: float) -> None:
    image = np.linspace(low, high, 9, dtype=np.float32).reshape(3, 3)
    out = normalise_intensity(image)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(out.ravel(), np.linspace(0.0, 1.0, 9), atol=1e-6)


def test_served_normalisation_of_huge_intensities_stays_finite() -> None:
    from labelreg import export

    image = np.linspace(-3e38, 3.4e38, 8, dtype=np.float32).reshape(1, 2, 2, 2, 1)
    served = export.normalise_intensity(tf.constant(image)).numpy()
    np.testing.assert_array_equal(served[0], normalise_intensity(image[0]))


def test_reading_huge_float32_intensities_keeps_them(data: Path) -> None:
    path = write_nifti(case_file(data, "moving_images"), image_with(3e38))
    volume = NiftiReader(data / "moving_images").read(1)[..., 0]
    assert volume[1, 2, 3] == np.float32(3e38)
    assert np.isfinite(normalise_intensity(volume)).all(), path


# ------------------------------------------------------------------------------------------
# Config fuzzing: random sections, keys and values give a ConfigError or a valid config
# ------------------------------------------------------------------------------------------


def _schemas() -> list[dict]:
    """The schemas of the built-in methods (their loaders import no TensorFlow)."""
    from comir_tf.config import COMIR_SCHEMA
    from labelreg.methods.image_driven_config import features_schema, image_driven_schema
    from labelreg.methods.label_driven_config import label_driven_schema
    from labelreg.methods.learnsim_config import learnsim_schema
    from labelreg.networks.registry import NETWORKS

    # The options each network declares join a schema when a file selects the network.
    options = [NETWORKS.options(name).keys for name in NETWORKS
               if NETWORKS.options(name) is not None]
    return [label_driven_schema(), image_driven_schema(), features_schema(), learnsim_schema(),
            COMIR_SCHEMA, *options]


def _known_names() -> tuple[dict[str, list[str]], list[str]]:
    """Section -> key names, and sample values, of every built-in schema."""
    keys: dict[str, set[str]] = {"DEFAULT": {"name"}}
    values: set[str] = set()
    for schema in _schemas():
        for section, entries in schema.items():
            keys.setdefault(section, set()).update(entries)
            for key in entries.values():
                values.update(str(choice) for choice in key.choices or ())
                if key.default is not None and not isinstance(key.default, tuple):
                    values.add(str(key.default))
    return {s: sorted(k) for s, k in sorted(keys.items())}, sorted(values)


KEYS_BY_SECTION, SCHEMA_VALUES = _known_names()
ALL_KEYS = sorted({k for keys in KEYS_BY_SECTION.values() for k in keys})
_LINE = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")
_NAME_TEXT = st.text(alphabet=_LINE, max_size=12)
_NUMBER = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True))
_VALUE = st.one_of(
    st.text(alphabet=_LINE, max_size=30),
    st.sampled_from([*SCHEMA_VALUES, *METHODS, "", "[]", "()", "[0, 1,]", "[,]", "1e400", "-0",
                     "nan", "-inf", "1e5", "2.5", "~", "~nobody/x", "~\x00x", "a\x00b", "9" * 5000,
                     "[[1]]", "'", '"a"', "\\", "%(x)s", "yes", "off", "0x10", "\u0661\u0662"]),
    _NUMBER.map(str),
    st.lists(_NUMBER, max_size=4).map(str),
    st.lists(_NUMBER, max_size=4).map(lambda xs: " ".join(map(str, xs))),
)


@st.composite
def _mutation(draw: st.DrawFn) -> tuple[str, str | None, str | None]:
    """(section, key, value): set a key; value None deletes the key, key None the section."""
    known = st.sampled_from(sorted(KEYS_BY_SECTION))
    section = draw(st.one_of(known, known, known, _NAME_TEXT))
    names = KEYS_BY_SECTION.get(section, ALL_KEYS)
    key = draw(st.one_of(st.sampled_from(names), st.sampled_from(names), _NAME_TEXT,
                         st.none()))
    value = draw(st.one_of(_VALUE, _VALUE, _VALUE, st.none()))
    return section, key, value


MUTATIONS = st.lists(_mutation(), min_size=1, max_size=5)
OVERRIDES = st.lists(
    st.one_of(
        st.text(alphabet=_LINE, max_size=20),
        st.tuples(st.sampled_from(sorted(KEYS_BY_SECTION)), st.sampled_from(ALL_KEYS), _VALUE)
        .map(lambda t: f"{t[0]}.{t[1]}={t[2]}"),
    ),
    max_size=2,
)
# Mostly nothing, sometimes a stray line or bytes that are not UTF-8.
RAW_TAIL = st.one_of(st.just(""), st.just(""), st.just(""),
                     st.text(alphabet=string.printable, max_size=40),
                     st.binary(min_size=1, max_size=8).map(lambda b: b.decode("latin-1")))


def _mutated_ini(base: configparser.ConfigParser,
                 mutations: list[tuple[str, str | None, str | None]]) -> str:
    sections: dict[str, dict[str, str]] = {s: dict(base[s]) for s in base.sections()}
    for section, key, value in mutations:
        if key is None:
            sections.pop(section, None)
        elif value is None:
            sections.get(section, {}).pop(key, None)
        else:
            sections.setdefault(section, {})[key] = value
    return "".join(
        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()) + "\n"
        for section, keys in sections.items()
    )


@pytest.fixture(scope="module")
def fuzz_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="labelreg-fuzz-"))
    shutil.copy(REPO / "configs" / "demo.ini", folder / "demo.ini")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@settings(max_examples=300, deadline=None)
@given(mutations=MUTATIONS, overrides=OVERRIDES, tail=RAW_TAIL,
       encoding=st.sampled_from(["utf-8"] * 9 + ["utf-16"]))
def test_config_fuzzing_raises_only_config_errors(
    fuzz_dir: Path, mutations: list[tuple[str, str | None, str | None]], overrides: list[str],
    tail: str, encoding: str,
) -> None:
    base = configparser.ConfigParser(interpolation=None)
    base.optionxform = str
    base.read(fuzz_dir / "demo.ini", encoding="utf-8")
    ini = fuzz_dir / "mutated.ini"
    ini.write_bytes((_mutated_ini(base, mutations) + tail).encode(encoding, "surrogatepass"))
    try:
        name, cfg = load_config(ini, overrides)
    except ConfigError as err:  # anything else (KeyError, TypeError...) fails the test
        assert str(ini) in str(err) or "override" in str(err), err
    else:
        assert name in METHODS and cfg.path == ini
