"""TIFF-stack sequences (DeepSim layout): synthetic generator, reading, pairing, tf.data stream."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from labelreg.data.stacks import (
    StackDataset,
    make_stack_eval_pairs,
    make_stack_train_dataset,
    random_similarity_affine,
    read_label_stack,
    read_stack,
)
from labelreg.data.synthetic_stacks import render_sequence, write_synthetic_stacks
from labelreg.errors import DataError

FRAMES = 12
SIZE = (96, 112)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory):
    return write_synthetic_stacks(
        tmp_path_factory.mktemp("stacks"), frames=FRAMES, size=SIZE, classes=3, seed=7
    )


@pytest.fixture(scope="module")
def dataset(stacks) -> StackDataset:
    return StackDataset(stacks / "images", stacks / "labels-class")


def _arrays(batch: dict) -> dict[str, np.ndarray]:
    return {key: np.asarray(value) for key, value in batch.items()}


# --- synthetic generator -------------------------------------------------------------------------


def test_synthetic_layout(stacks):
    for name in ("01", "02"):
        images = tifffile.imread(stacks / "images" / f"{name}.tif")
        labels = tifffile.imread(stacks / "labels-class" / f"{name}.tif")
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.shape == labels.shape == (FRAMES, *SIZE)
        assert set(np.unique(labels)) == {0, 1, 2}
        for frame in labels:  # every class in every frame, cells a sizeable fraction
            counts = np.bincount(frame.ravel(), minlength=3) / frame.size
            assert counts[2] > 0.002 and 0.1 < counts[1] < 0.6
        # Textured objects: intensity varies inside the cells, and cells are brighter on average.
        cell, background = images[0][labels[0] == 1], images[0][labels[0] == 0]
        assert cell.std() > 10 and cell.mean() > background.mean() + 20


def test_synthetic_frames_move_smoothly(stacks):
    images = tifffile.imread(stacks / "images" / "01.tif").astype(np.float64)
    labels = tifffile.imread(stacks / "labels-class" / "01.tif")
    for t in range(FRAMES - 1):
        corr = np.corrcoef(images[t].ravel(), images[t + 1].ravel())[0, 1]
        changed = np.mean(labels[t] != labels[t + 1])
        assert corr > 0.9
        assert 0.003 < changed < 0.1  # a few boundary pixels move each frame
        assert np.abs(images[t] - images[t + 1]).mean() > 2.0
    # Motion accumulates: far frames agree less than neighbours.
    far = np.corrcoef(images[0].ravel(), images[-1].ravel())[0, 1]
    near = np.corrcoef(images[0].ravel(), images[1].ravel())[0, 1]
    assert far < near - 0.1


def test_synthetic_is_deterministic_and_per_sequence(stacks, tmp_path):
    images, labels = render_sequence(FRAMES, SIZE, 3, seed=7, name="02")
    np.testing.assert_array_equal(labels, tifffile.imread(stacks / "labels-class" / "02.tif"))
    np.testing.assert_array_equal(
        np.round(images * 255).astype(np.uint8), tifffile.imread(stacks / "images" / "02.tif")
    )
    other, _ = render_sequence(FRAMES, SIZE, 3, seed=8, name="02")
    assert np.abs(other - images).mean() > 0.05
    first, _ = render_sequence(FRAMES, SIZE, 3, seed=7, name="01")
    assert np.abs(first - images).mean() > 0.05


def test_synthetic_idempotent_uint16_and_foreign_files(tmp_path):
    folder = write_synthetic_stacks(
        tmp_path / "d",
        sequences=["a"],
        frames=3,
        size=(32, 32),
        classes=4,
        seed=1,
        image_dtype="uint16",
    )
    image_file = folder / "images" / "a.tif"
    stamp = os.stat(image_file).st_mtime_ns
    assert (
        write_synthetic_stacks(
            tmp_path / "d",
            sequences=["a"],
            frames=3,
            size=(32, 32),
            classes=4,
            seed=1,
            image_dtype="uint16",
        )
        == folder
    )
    assert os.stat(image_file).st_mtime_ns == stamp  # skipped, not rewritten
    images = tifffile.imread(image_file)
    assert images.dtype == np.uint16 and images.max() > 1000
    assert set(np.unique(tifffile.imread(folder / "labels-class" / "a.tif"))) == {0, 1, 2, 3}
    assert sorted(os.listdir(folder / "images")) == ["a.tif"]  # no temporary left behind
    with pytest.raises(DataError, match=r"a\.tif: exists and is not the synthetic stack"):
        write_synthetic_stacks(tmp_path / "d", sequences=["a"], frames=3, size=(32, 32), seed=2)
    with pytest.raises(ValueError, match="classes must be >= 2"):
        write_synthetic_stacks(tmp_path / "e", classes=1)


# --- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, depth", [(np.uint8, 8), (np.uint16, 16), (np.int32, 32)])
def test_read_stack_divides_by_bitdepth(tmp_path, dtype, depth):
    data = np.array([[[0, 1], [2, 255]]] * 3, dtype)
    data[1, 0, 0] = np.iinfo(dtype).max
    tifffile.imwrite(tmp_path / "s.tif", data)
    stack = read_stack(tmp_path / "s.tif")
    assert stack.dtype == np.float32 and stack.shape == (3, 2, 2)
    np.testing.assert_allclose(stack, data.astype(np.float64) / 2.0**depth, rtol=1e-6)


def test_read_float_and_label_stacks(tmp_path):
    data = np.linspace(-1.0, 3.0, 12, dtype=np.float32).reshape(3, 2, 2)
    tifffile.imwrite(tmp_path / "f.tif", data)
    np.testing.assert_array_equal(read_stack(tmp_path / "f.tif"), data)
    labels = np.array([[[0, 1], [2, 5]]] * 2, np.uint8)
    tifffile.imwrite(tmp_path / "l.tif", labels)
    read = read_label_stack(tmp_path / "l.tif")
    assert read.dtype == np.int32
    np.testing.assert_array_equal(read, labels)
    tifffile.imwrite(tmp_path / "soft.tif", labels.astype(np.float32) / 2)
    with pytest.raises(DataError, match=r"soft\.tif: a class-label stack must hold whole"):
        read_label_stack(tmp_path / "soft.tif")


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.tif: file not found"):
        read_stack(tmp_path / "missing.tif")
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"flat\.tif: expected a multi-page .* shape \(8, 9\)"):
        read_stack(tmp_path / "flat.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"bad\.tif: cannot be read as TIFF"):
        read_label_stack(tmp_path / "bad.tif")


def test_dataset_shape_mismatch_names_both_files(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    tifffile.imwrite(tmp_path / "im" / "01.tif", np.zeros((4, 16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "lb" / "01.tif", np.zeros((3, 16, 16), np.uint8))
    with pytest.raises(
        DataError,
        match=r"lb/01\.tif: label stack shape \(3, 16, 16\) differs "
        r"from the image stack shape \(4, 16, 16\) of .*im/01\.tif",
    ):
        StackDataset(tmp_path / "im", tmp_path / "lb")
    tifffile.imwrite(tmp_path / "im" / "02.tif", np.zeros((4, 16, 16), np.uint8))
    with pytest.raises(DataError, match=r"lb: no label stack for sequence '02'"):
        StackDataset(tmp_path / "im", tmp_path / "lb", sequences=["02"])
    with pytest.raises(DataError, match="no image stack for sequence '03'"):
        StackDataset(tmp_path / "im", tmp_path / "lb", sequences=["03"])


def test_dataset_contents(stacks, dataset):
    assert dataset.names == ["01", "02"]
    assert dataset.num_frames == [FRAMES, FRAMES] and dataset.shape == SIZE
    assert dataset.num_classes == 3
    raw = tifffile.imread(stacks / "images" / "02.tif")
    np.testing.assert_allclose(dataset.images[1], raw / 256.0, rtol=1e-6)
    assert StackDataset(stacks / "images", stacks / "labels-class", ["02"], 5).num_classes == 5
    with pytest.raises(DataError, match=r"01\.tif: holds class 2 but num_classes=2"):
        StackDataset(stacks / "images", stacks / "labels-class", ["01"], num_classes=2)


# --- pairing -------------------------------------------------------------------------------------


def test_consecutive_pairs(dataset):
    pairs = dataset.pairs("consecutive")
    assert len(pairs) == 2 * (FRAMES - 1)
    np.testing.assert_array_equal(pairs[:3], [[0, 0, 1], [0, 1, 2], [0, 2, 3]])
    ranged = dataset.pairs("consecutive", frames=(4, 8))
    np.testing.assert_array_equal(ranged[ranged[:, 0] == 1], [[1, 4, 5], [1, 5, 6], [1, 6, 7]])
    with pytest.raises(DataError, match=r"frame range \(4, 99\) is outside the stack's 12"):
        dataset.pairs("consecutive", frames=(4, 99))


def test_random_pair_set(dataset):
    pairs = dataset.pairs("random", frames=(0, 4))
    offsets = pairs[:, 2] - pairs[:, 1]
    # Per sequence: from 0: +1, +2; 1: -1, +1, +2; 2: -2, -1, +1; 3: -2, -1 -> 10 pairs.
    assert len(pairs) == 20 and set(offsets) == {-2, -1, 1, 2}
    assert np.all((pairs[:, 1:] >= 0) & (pairs[:, 1:] < 4))


def test_sample_pairs_rules(dataset):
    draws = np.concatenate([dataset.sample_pairs(8, seed=3, step=s) for s in range(60)])
    offsets = draws[:, 2] - draws[:, 1]
    assert set(offsets) == {-2, -1, 1, 2}  # both directions, never the frame itself
    assert np.all((draws[:, 1:] >= 0) & (draws[:, 1:] < FRAMES))
    assert set(draws[:, 0]) == {0, 1}
    assert {0, FRAMES - 1} <= set(draws[:, 1])  # the end frames are drawn too
    np.testing.assert_array_equal(dataset.sample_pairs(8, 3, 17), dataset.sample_pairs(8, 3, 17))
    assert not np.array_equal(dataset.sample_pairs(8, 3, 17), dataset.sample_pairs(8, 3, 18))
    wide = np.concatenate([dataset.sample_pairs(8, 0, s, max_offset=4) for s in range(40)])
    assert set(wide[:, 2] - wide[:, 1]) == {-4, -3, -2, -1, 1, 2, 3, 4}


# --- tf.data stream and evaluation pairs ---------------------------------------------------------


def test_random_similarity_affine():
    identity = random_similarity_affine(3, (9, 7), rotation=0.0, scale=(1, 1), flip=False)
    np.testing.assert_allclose(identity, np.tile([[1, 0, 0], [0, 1, 0]], (3, 1, 1)), atol=1e-6)
    theta = np.asarray(random_similarity_affine(64, (9, 7), seed=(5, 1)))
    det = np.linalg.det(theta[:, :, :2])
    assert np.all((np.abs(det) > 1 / 1.2**2 - 1e-5) & (np.abs(det) < 1 / 0.8**2 + 1e-5))
    assert (det < 0).any() and (det > 0).any()  # flips happen
    centre = np.array([4.0, 3.0])
    np.testing.assert_allclose(
        theta[:, :, :2] @ centre + theta[:, :, 2], np.tile(centre, (64, 1)), atol=1e-4
    )  # rotation about the centre
    np.testing.assert_array_equal(theta, random_similarity_affine(64, (9, 7), seed=(5, 1)))


def test_train_batches_shapes_and_one_hot(dataset):
    batch = _arrays(next(iter(make_stack_train_dataset(dataset, 3, seed=2, start_step=4))))
    assert batch["moving_image"].shape == batch["fixed_image"].shape == (3, *SIZE, 1)
    assert batch["moving_label"].shape == batch["fixed_label"].shape == (3, *SIZE, 3)
    assert batch["moving_image"].dtype == np.float32 and batch["moving_label"].dtype == np.float32
    assert batch["case_index"].dtype == np.int32 and batch["step"].dtype == np.int64
    np.testing.assert_array_equal(batch["step"], [4, 4, 4])
    rows = dataset.sample_pairs(3, 2, 4)
    np.testing.assert_array_equal(batch["case_index"], rows[:, 0])
    np.testing.assert_array_equal(batch["moving_frame"], rows[:, 1])
    np.testing.assert_array_equal(batch["fixed_frame"], rows[:, 2])
    for key in ("moving_label", "fixed_label"):
        label = batch[key]
        assert set(np.unique(label)) == {0.0, 1.0}
        np.testing.assert_array_equal(label.sum(-1), 1.0)
        assert label[..., 1:].sum() > 0.05 * label[..., 0].size
    # One transform per pair for both frames: the zero-filled corners coincide, and are background.
    outside = batch["moving_image"][..., 0] == 0.0
    assert outside.any()
    np.testing.assert_array_equal(outside, batch["fixed_image"][..., 0] == 0.0)
    assert np.all(batch["moving_label"][outside][:, 0] == 1.0)
    plain = _arrays(
        next(iter(make_stack_train_dataset(dataset, 3, seed=2, start_step=4, augment=False)))
    )
    assert not np.array_equal(plain["moving_image"], batch["moving_image"])
    np.testing.assert_array_equal(plain["moving_label"], dataset.gather(rows)["moving_label"])


def test_identity_augmentation_changes_nothing(dataset):
    options = dict(batch_size=2, seed=9, start_step=1)
    plain = _arrays(next(iter(make_stack_train_dataset(dataset, augment=False, **options))))
    same = _arrays(
        next(
            iter(
                make_stack_train_dataset(
                    dataset, rotation=0.0, scale=(1.0, 1.0), flip=False, **options
                )
            )
        )
    )
    for key in plain:
        np.testing.assert_allclose(same[key], plain[key], atol=1e-6, err_msg=key)


def test_train_stream_is_deterministic_and_resumable(dataset):
    full = make_stack_train_dataset(dataset, 2, seed=11)
    resumed = make_stack_train_dataset(dataset, 2, seed=11, start_step=5)
    first = [_arrays(b) for b in full.skip(5).take(3)]
    second = [_arrays(b) for b in resumed.take(3)]
    assert [int(b["step"][0]) for b in second] == [5, 6, 7]
    bounded = [_arrays(b) for b in make_stack_train_dataset(dataset, 2, seed=11, start_step=5,
                                                              stop_step=8)]
    for a, b, c in zip(first, second, bounded, strict=True):
        assert a.keys() == b.keys() == c.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            np.testing.assert_array_equal(a[key], c[key], err_msg=key)
    other = _arrays(next(iter(make_stack_train_dataset(dataset, 2, seed=12, start_step=5))))
    assert not np.array_equal(other["moving_image"], second[0]["moving_image"])


def test_eval_pairs(dataset):
    batches = list(make_stack_eval_pairs(dataset, frames=(2, 6)))
    assert len(batches) == 6  # 3 consecutive pairs in each of 2 sequences
    first = batches[0]
    assert first["moving_image"].shape == (1, *SIZE, 1) and first["fixed_label"].shape == (
        1,
        *SIZE,
        3,
    )
    assert [
        (b["case_name"][0], int(b["moving_frame"][0]), int(b["fixed_frame"][0]))
        for b in batches[:3]
    ] == [("01", 2, 3), ("01", 3, 4), ("01", 4, 5)]
    np.testing.assert_array_equal(first["fixed_image"][0, ..., 0], dataset.images[0][3])
    np.testing.assert_array_equal(np.argmax(first["moving_label"][0], -1), dataset.labels[0][2])
    (whole,) = make_stack_eval_pairs(dataset, batch_size=None)
    assert whole["moving_image"].shape[0] == 2 * (FRAMES - 1)
    np.testing.assert_array_equal(whole["case_index"], [0] * (FRAMES - 1) + [1] * (FRAMES - 1))
