"""Tests of labelreg.data.nifti: NiftiReader and PairedDataset."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from labelreg.data.nifti import NiftiReader, PairedDataset, case_name
from labelreg.errors import DataError

# The shared real-format sample (../shared/data/mrus-sample), as tests/conftest.py locates it.
SAMPLE = Path(
    os.environ.get(
        "LABELREG_MRUS_SAMPLE",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "mrus-sample",
    )
).resolve()

FOLDERS = ("moving_images", "fixed_images", "moving_labels", "fixed_labels")


def write_nifti(path: Path, array: np.ndarray, spacing: float = 1.0) -> Path:
    """Write ``array`` as NIfTI with an isotropic ``spacing`` affine (creates the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def make_pairs(
    root: Path,
    num_cases: int = 3,
    moving_shape=(6, 7, 5),
    fixed_shape=(5, 6, 4),
    num_labels=(2, 3, 1),
    seed: int = 0,
) -> dict[str, Path]:
    """A small random paired dataset in label-reg's four-folder layout; returns the folders."""
    rng = np.random.default_rng(seed)
    dirs = {name: root / name for name in FOLDERS}
    for case in range(num_cases):
        name = f"case{case:03d}.nii.gz"
        count = num_labels[case % len(num_labels)]
        write_nifti(dirs["moving_images"] / name, rng.uniform(0, 200, moving_shape).astype(np.float32))
        write_nifti(dirs["fixed_images"] / name, rng.uniform(-5, 5, fixed_shape).astype(np.float32))
        for key, shape in (("moving_labels", moving_shape), ("fixed_labels", fixed_shape)):
            labels = (rng.uniform(size=(*shape, count)) > 0.5).astype(np.uint8)
            if len(shape) == 2:  # NIfTI keeps labels on the 4th axis: [X, Y, 1, L]
                labels = labels[:, :, None, :]
            write_nifti(dirs[key] / name, labels if count > 1 else labels[..., 0])
    return dirs


def paired_from(dirs: dict[str, Path], labels: bool = True) -> PairedDataset:
    if labels:
        return PairedDataset(*(dirs[name] for name in FOLDERS))
    return PairedDataset(dirs["moving_images"], dirs["fixed_images"])


# ------------------------------------------------------------------------------------------
# The real MR/US sample
# ------------------------------------------------------------------------------------------


def test_mrus_sample_readers():
    readers = {name: NiftiReader(SAMPLE / name) for name in FOLDERS}
    files = sorted(p.name for p in (SAMPLE / "moving_images").iterdir())
    assert [p.name for p in readers["moving_images"].files] == files
    assert readers["moving_images"].num_data == 12
    assert readers["moving_images"].data_shape == (69, 69, 64)
    assert readers["fixed_images"].data_shape == (47, 63, 44)
    assert readers["moving_labels"].data_shape == (69, 69, 64)
    for name in ("moving_labels", "fixed_labels"):
        expected = [nib.load(str(SAMPLE / name / f)).shape[3] for f in files]
        assert readers[name].num_labels == expected
    assert readers["moving_images"].num_labels == [1] * 12
    assert readers["fixed_images"].spacing(0) == (1.5, 1.5, 1.5)
    np.testing.assert_allclose(
        readers["fixed_images"].affine(3), nib.load(str(SAMPLE / "fixed_images" / files[3])).affine
    )
    assert len(readers["fixed_images"].affines) == 12
    np.testing.assert_array_equal(readers["fixed_images"].affines[3], readers["fixed_images"].affine(3))
    assert readers["moving_labels"].headers[0].get_data_shape()[:3] == (69, 69, 64)


def test_mrus_sample_get_data_matches_nibabel():
    reader = NiftiReader(SAMPLE / "fixed_labels")
    raw = np.asarray(nib.load(str(reader.files[2])).dataobj)
    label_indices = [1, 0]
    batch = reader.get_data([2, 5], label_indices)
    assert label_indices == [1, 0]
    assert batch.shape == (2, 47, 63, 44, 1) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, ..., 0], raw[..., 1])
    images = NiftiReader(SAMPLE / "moving_images").get_data([0])
    raw_image = np.asarray(nib.load(str(SAMPLE / "moving_images" / "obs000.nii.gz")).dataobj)
    np.testing.assert_array_equal(images[0, ..., 0], raw_image.astype(np.float32))


def test_mrus_sample_pairs():
    paired = PairedDataset(*(SAMPLE / name for name in FOLDERS))
    assert paired.num_cases == 12 and paired.ndim == 3
    assert paired.moving_shape == (69, 69, 64) and paired.fixed_shape == (47, 63, 44)
    expected = [nib.load(str(f)).shape[3] for f in sorted((SAMPLE / "moving_labels").iterdir())]
    assert paired.num_labels == expected
    assert paired.names == [f"obs{i:03d}" for i in range(12)]
    assert paired.file("fixed_label", 4).name == "obs004.nii.gz"


# ------------------------------------------------------------------------------------------
# NiftiReader on small files
# ------------------------------------------------------------------------------------------


def test_single_label_index_replicated_without_mutation(tmp_path):
    dirs = make_pairs(tmp_path, num_labels=(3,))
    reader = NiftiReader(dirs["moving_labels"])
    indices = [2]
    batch = reader.get_data(None, indices)
    assert indices == [2]
    assert batch.shape == (3, 6, 7, 5, 1)
    for case in range(3):
        raw = np.asarray(nib.load(str(reader.files[case])).dataobj)[..., 2]
        np.testing.assert_array_equal(batch[case, ..., 0], raw)
    np.testing.assert_array_equal(reader.get_data([1], 2), batch[1:2])


def test_label_index_errors(tmp_path):
    dirs = make_pairs(tmp_path, num_labels=(2, 3, 1))
    reader = NiftiReader(dirs["fixed_labels"])
    with pytest.raises(DataError, match=r"case000\.nii\.gz: label index 2 out of range.*2 label"):
        reader.get_data([0], [2])
    with pytest.raises(DataError, match=r"case001\.nii\.gz: holds 3 volumes"):
        reader.get_data([1])
    with pytest.raises(DataError, match="one label index per case"):
        reader.get_data([0, 1, 2], [0, 0])
    with pytest.raises(DataError, match="case index 7 out of range"):
        reader.get_data([7])
    # A 3-D label file holds exactly one label, index 0.
    assert reader.get_data([2], [0]).shape == (1, 5, 6, 4, 1)


def test_skips_non_nifti_with_warning(tmp_path):
    folder = tmp_path / "images"
    write_nifti(folder / "b.nii", np.zeros((3, 4, 5), np.float32))
    write_nifti(folder / "a.nii.gz", np.ones((3, 4, 5), np.float32))
    (folder / "notes.txt").write_text("x")
    (folder / ".hidden.nii.gz").write_bytes(b"junk")
    (folder / "sub").mkdir()
    with pytest.warns(UserWarning, match=r"skipped 3 entries.*\.hidden\.nii\.gz, notes\.txt, sub"):
        reader = NiftiReader(folder)
    assert [p.name for p in reader.files] == ["a.nii.gz", "b.nii"]
    assert reader.names == ["a", "b"]
    np.testing.assert_array_equal(reader.get_data()[..., 0], [np.ones((3, 4, 5)), np.zeros((3, 4, 5))])


def test_missing_empty_and_file_instead_of_folder(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path / 'nowhere'}: folder not found"):
        NiftiReader(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=rf"{tmp_path / 'empty'}: no NIfTI file"):
        NiftiReader(tmp_path / "empty")
    file = write_nifti(tmp_path / "x.nii", np.zeros((2, 2, 2), np.float32))
    with pytest.raises(DataError, match="expected a folder of NIfTI files, found a file"):
        NiftiReader(file)


def test_corrupt_file(tmp_path):
    folder = tmp_path / "images"
    write_nifti(folder / "good.nii.gz", np.zeros((3, 3, 3), np.float32))
    bad = folder / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file at all" * 20)
    with pytest.raises(DataError, match=rf"{bad}: cannot be read as NIfTI"):
        NiftiReader(folder)


def test_truncated_file_fails_on_read(tmp_path):
    folder = tmp_path / "images"
    path = write_nifti(folder / "t.nii.gz", np.arange(4000, dtype=np.float32).reshape(10, 20, 20))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    reader = NiftiReader(folder)  # the header is intact
    with pytest.raises(DataError, match=rf"{path}: cannot read the voxel data"):
        reader.get_data()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image(tmp_path, bad):
    data = np.ones((3, 4, 5), np.float32)
    data[1, 2, 3] = bad
    path = write_nifti(tmp_path / "images" / "case.nii", data)
    reader = NiftiReader(tmp_path / "images")
    with pytest.raises(DataError, match=rf"{path}: holds 1 NaN or Inf value"):
        reader.get_data()


def test_shape_mismatch_in_folder(tmp_path):
    folder = tmp_path / "images"
    write_nifti(folder / "a.nii", np.zeros((3, 4, 5), np.float32))
    write_nifti(folder / "b.nii", np.zeros((3, 4, 6), np.float32))
    with pytest.raises(DataError, match=r"b\.nii: spatial shape \(3, 4, 6\) differs from \(3, 4, 5\)"):
        NiftiReader(folder)


def test_unusable_rank(tmp_path):
    path = write_nifti(tmp_path / "images" / "a.nii", np.zeros((3, 4, 5, 2, 2), np.float32))
    with pytest.raises(DataError, match=rf"{path}: expected a 2-D, 3-D or 4-D"):
        NiftiReader(tmp_path / "images")


@pytest.mark.parametrize("stored_shape", [(8, 9), (8, 9, 1)])
def test_two_dimensional_images(tmp_path, stored_shape):
    rng = np.random.default_rng(1)
    image = rng.uniform(size=stored_shape).astype(np.float32)
    write_nifti(tmp_path / "img" / "a.nii.gz", image)
    labels = (rng.uniform(size=(8, 9, 1, 3)) > 0.5).astype(np.uint8)
    write_nifti(tmp_path / "lab" / "a.nii.gz", labels)
    reader = NiftiReader(tmp_path / "img")
    assert reader.data_shape == (8, 9) and reader.ndim == 2
    np.testing.assert_array_equal(reader.get_data()[0, ..., 0], image.reshape(8, 9))
    assert reader.spacing(0) == (1.0, 1.0)
    label_reader = NiftiReader(tmp_path / "lab")
    assert label_reader.data_shape == (8, 9) and label_reader.num_labels == [3]
    np.testing.assert_array_equal(label_reader.get_data([0], [2])[0, ..., 0], labels[:, :, 0, 2])


# ------------------------------------------------------------------------------------------
# PairedDataset
# ------------------------------------------------------------------------------------------


def test_pairing_by_name_across_suffixes(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2)
    # Rename one fixed image to .nii: pairing uses the name without suffix.
    src = dirs["fixed_images"] / "case001.nii.gz"
    nib.save(nib.load(str(src)), str(dirs["fixed_images"] / "case001.nii"))
    expected = np.asarray(nib.load(str(src)).dataobj)
    src.unlink()
    paired = paired_from(dirs)
    assert paired.names == ["case000", "case001"]
    assert paired.file("fixed_image", 1).name == "case001.nii"
    np.testing.assert_array_equal(paired.read("fixed_image", 1)[..., 0], expected)
    assert paired.num_labels == [2, 3]
    assert case_name("A.NII.GZ") == "A"


def test_pairing_mismatch_names_first_difference(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=3)
    (dirs["fixed_labels"] / "case001.nii.gz").rename(dirs["fixed_labels"] / "case101.nii.gz")
    with pytest.raises(DataError, match="moving_images has 'case001' but fixed_labels") as info:
        paired_from(dirs)
    assert str(dirs["fixed_labels"]) in str(info.value)
    (dirs["fixed_labels"] / "case101.nii.gz").rename(dirs["fixed_labels"] / "case001.nii.gz")
    (dirs["fixed_images"] / "case002.nii.gz").unlink()
    with pytest.raises(DataError, match=r"'case002'.*3 vs 2 files"):
        paired_from(dirs)


def test_duplicate_case_names(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2)
    src = dirs["fixed_images"] / "case000.nii.gz"
    nib.save(nib.load(str(src)), str(dirs["fixed_images"] / "case000.nii"))
    with pytest.raises(DataError, match="two files are named 'case000'"):
        paired_from(dirs)


def test_label_shape_must_match_image(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2)
    for f in dirs["fixed_labels"].iterdir():
        write_nifti(f, np.zeros((5, 6, 3, 2), np.uint8))
    with pytest.raises(DataError, match=r"label spatial shape \(5, 6, 3\) differs from the image"):
        paired_from(dirs)


def test_label_counts_must_match(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2, num_labels=(3,))
    moving = dirs["moving_labels"] / "case001.nii.gz"
    write_nifti(moving, np.zeros((6, 7, 5), np.uint8))  # 3-D: one label, fixed has 3
    fixed = dirs["fixed_labels"] / "case001.nii.gz"
    with pytest.raises(DataError) as info:
        paired_from(dirs)
    message = str(info.value)
    assert "case 'case001'" in message and str(moving) in message and str(fixed) in message
    assert "holds 1 label(s) but" in message and "holds 3" in message


def test_three_dimensional_labels_count_as_one(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2, num_labels=(1,))
    paired = paired_from(dirs)
    assert paired.num_labels == [1, 1] and paired.has_labels
    assert paired.read("moving_label", 0, 0).shape == (6, 7, 5)


def test_labels_must_come_in_pairs(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=1)
    with pytest.raises(DataError, match="labels must be given for both"):
        PairedDataset(dirs["moving_images"], dirs["fixed_images"], dirs["moving_labels"])
    paired = paired_from(dirs, labels=False)
    assert not paired.has_labels and paired.num_labels == [1]
    with pytest.raises(DataError, match="no labels"):
        paired.read("moving_label", 0)


def test_spatial_ranks_must_agree(tmp_path):
    write_nifti(tmp_path / "m" / "a.nii", np.zeros((4, 5), np.float32))
    write_nifti(tmp_path / "f" / "a.nii", np.zeros((4, 5, 6), np.float32))
    with pytest.raises(DataError, match="same number of spatial axes"):
        PairedDataset(tmp_path / "m", tmp_path / "f")


def test_no_warning_on_clean_folders(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paired = paired_from(dirs)
    assert paired.num_cases == 1
