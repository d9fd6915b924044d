"""Tests of labelreg.data.pipeline: the tf.data training stream and ordered eval batches."""

from __future__ import annotations

import itertools
import time

import nibabel as nib
import numpy as np
import pytest

from labelreg.data.nifti import PairedDataset
from labelreg.data.pipeline import (
    CaseCache,
    TimedIterator,
    make_eval_batches,
    make_train_dataset,
    measure_input_share,
    normalise_intensity,
)
from labelreg.data.sampling import PairSampler
from labelreg.errors import DataError
from tests.test_data_nifti import FOLDERS, SAMPLE, make_pairs, paired_from, write_nifti


def take(dataset, n):
    return [{k: v.numpy() for k, v in batch.items()} for batch in itertools.islice(dataset, n)]


def raw(path, label=None):
    data = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
    return data if label is None else data[..., label]


def test_normalise_intensity():
    x = np.array([[2.0, 4.0], [6.0, 10.0]])
    np.testing.assert_allclose(normalise_intensity(x), [[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_array_equal(normalise_intensity(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    assert normalise_intensity(x).dtype == np.float32


@pytest.mark.parametrize(
    "moving_shape, fixed_shape", [((6, 7, 5), (5, 6, 4)), ((9, 8), (7, 6))]
)
def test_train_batches_shapes_values_and_normalisation(tmp_path, moving_shape, fixed_shape):
    dirs = make_pairs(tmp_path, num_cases=5, moving_shape=moving_shape, fixed_shape=fixed_shape,
                      num_labels=(2, 3, 1))
    paired = paired_from(dirs)
    dataset = make_train_dataset(paired, minibatch_size=2, seed=3)
    spec = dataset.element_spec
    assert tuple(spec["moving_image"].shape) == (2, *paired.moving_shape, 1)
    assert tuple(spec["fixed_label"].shape) == (2, *paired.fixed_shape, 1)
    sampler = PairSampler(paired.num_labels, 2, seed=3)
    for step, batch in enumerate(take(dataset, 6)):
        cases, labels = sampler.sample(step)
        assert batch["step"] == step
        np.testing.assert_array_equal(batch["case_index"], cases)
        np.testing.assert_array_equal(batch["label_index"], labels)
        for b, (case, label) in enumerate(zip(cases, labels, strict=True)):
            image = batch["moving_image"][b, ..., 0]
            assert image.min() == 0.0 and image.max() == 1.0
            expected = normalise_intensity(raw(paired.file("moving_image", case)).reshape(paired.moving_shape))
            np.testing.assert_allclose(image, expected, atol=1e-6)
            fixed = batch["fixed_image"][b, ..., 0]
            assert fixed.min() == 0.0 and fixed.max() == 1.0
            label_file = paired.file("fixed_label", case)
            stored = raw(label_file).reshape(*paired.fixed_shape, -1)
            np.testing.assert_array_equal(batch["fixed_label"][b, ..., 0], stored[..., label])
            stored = raw(paired.file("moving_label", case)).reshape(*paired.moving_shape, -1)
            np.testing.assert_array_equal(batch["moving_label"][b, ..., 0], stored[..., label])
        assert all(batch[k].dtype == np.float32 for k in
                   ("moving_image", "fixed_image", "moving_label", "fixed_label"))


def test_train_stream_is_deterministic_and_resumable(tmp_path):
    paired = paired_from(make_pairs(tmp_path, num_cases=4))
    first = take(make_train_dataset(paired, 2, seed=11), 7)
    again = take(make_train_dataset(paired, 2, seed=11), 7)
    resumed = take(make_train_dataset(paired, 2, seed=11, start_step=4), 3)
    # A stream that ends with the run: exactly the batches of steps 4, 5 and 6.
    bounded = [{k: v.numpy() for k, v in b.items()}
               for b in make_train_dataset(paired, 2, seed=11, start_step=4, stop_step=7)]
    assert [int(b["step"]) for b in bounded] == [4, 5, 6]
    for a, b in zip(first, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b, c in zip(first[4:], resumed, bounded, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    other = take(make_train_dataset(paired, 2, seed=12), 7)
    assert any(not np.array_equal(a["case_index"], b["case_index"]) for a, b in zip(first, other, strict=True))


def test_train_stream_without_normalisation_or_labels(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=3)
    paired = paired_from(dirs, labels=False)
    batch = take(make_train_dataset(paired, 3, seed=0, normalise=False), 1)[0]
    assert "moving_label" not in batch and "fixed_label" not in batch
    np.testing.assert_array_equal(batch["label_index"], [0, 0, 0])
    for b, case in enumerate(batch["case_index"]):
        np.testing.assert_array_equal(batch["fixed_image"][b, ..., 0], raw(paired.file("fixed_image", case)))
    assert batch["moving_image"].max() > 1.0  # raw intensities in [0, 200)


def test_minibatch_larger_than_dataset(tmp_path):
    paired = paired_from(make_pairs(tmp_path, num_cases=3))
    with pytest.raises(DataError, match="minibatch_size 4 is larger than the number of cases 3"):
        make_train_dataset(paired, 4, seed=0)


def test_constant_image_becomes_zeros_and_bad_labels_fail(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2, num_labels=(2,))
    write_nifti(dirs["moving_images"] / "case001.nii.gz", np.full((6, 7, 5), 9.0, np.float32))
    cache = CaseCache(paired_from(dirs))
    np.testing.assert_array_equal(cache.moving_images[1], np.zeros((6, 7, 5)))
    assert cache.moving_labels[0].dtype == np.uint8  # binary labels held compactly
    bad = dirs["fixed_labels"] / "case000.nii.gz"
    write_nifti(bad, np.full((5, 6, 4, 2), 255, np.uint8))
    with pytest.raises(DataError, match=rf"{bad}: label values must lie in \[0, 1\].*\[255, 255\]"):
        CaseCache(paired_from(dirs))


def test_soft_labels_are_kept(tmp_path):
    dirs = make_pairs(tmp_path, num_cases=2, num_labels=(1,))
    soft = np.linspace(0, 1, 5 * 6 * 4, dtype=np.float32).reshape(5, 6, 4)
    write_nifti(dirs["fixed_labels"] / "case000.nii.gz", soft)
    cache = CaseCache(paired_from(dirs))
    batch = cache.batch([0], [0])
    np.testing.assert_allclose(batch["fixed_label"][0, ..., 0], soft)


def test_mrus_sample_stream():
    paired = PairedDataset(*(SAMPLE / name for name in FOLDERS))
    batch = take(make_train_dataset(paired, 4, seed=0, start_step=5), 1)[0]
    assert batch["moving_image"].shape == (4, 69, 69, 64, 1)
    assert batch["fixed_label"].shape == (4, 47, 63, 44, 1)
    for b in range(4):
        assert batch["moving_image"][b].min() == 0.0 and batch["moving_image"][b].max() == 1.0
        case, label = batch["case_index"][b], batch["label_index"][b]
        assert 0 <= label < paired.num_labels[case]
        np.testing.assert_array_equal(
            batch["moving_label"][b, ..., 0], raw(paired.file("moving_label", case), label)
        )


@pytest.mark.parametrize("labels", [True, False])
def test_eval_batches_cover_every_case_and_label_in_order(tmp_path, labels):
    dirs = make_pairs(tmp_path, num_cases=3, num_labels=(2, 3, 1))
    paired = paired_from(dirs, labels=labels)
    batches = list(make_eval_batches(paired, batch_size=4))
    pairs = [(c, j) for b in batches for c, j in zip(b["case_index"], b["label_index"], strict=True)]
    expected = [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0)] if labels else [(0, 0), (1, 0), (2, 0)]
    assert pairs == expected
    assert [len(b["case_index"]) for b in batches] == ([4, 2] if labels else [3])
    names = [n for b in batches for n in b["case_name"]]
    assert names == [paired.names[c] for c, _ in expected]
    first = batches[0]
    assert first["moving_image"].shape == (len(first["case_index"]), 6, 7, 5, 1)
    assert first["moving_image"][0].min() == 0.0 and first["moving_image"][0].max() == 1.0
    if labels:
        for b, (case, label) in enumerate(expected[:4]):
            stored = raw(paired.file("fixed_label", case)).reshape(5, 6, 4, -1)
            np.testing.assert_array_equal(first["fixed_label"][b, ..., 0], stored[..., label])
    else:
        assert "fixed_label" not in first


def test_eval_batches_single_label_and_errors(tmp_path):
    paired = paired_from(make_pairs(tmp_path, num_cases=3, num_labels=(2, 3, 1)))
    batches = list(make_eval_batches(paired, batch_size=2, label_index=0, normalise=False))
    assert [list(b["case_index"]) for b in batches] == [[0, 1], [2]]
    assert all((b["label_index"] == 0).all() for b in batches)
    np.testing.assert_array_equal(
        batches[1]["moving_image"][0, ..., 0], raw(paired.file("moving_image", 2))
    )
    with pytest.raises(DataError, match=r"case002\.nii\.gz: label index 1 requested"):
        list(make_eval_batches(paired, batch_size=2, label_index=1))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(make_eval_batches(paired, batch_size=0))


@pytest.mark.parametrize("labels", [True, False])
def test_eval_batches_from_a_cache_read_no_file_and_match(tmp_path, monkeypatch, labels):
    from labelreg.data.pipeline import CaseCache

    paired = paired_from(make_pairs(tmp_path, num_cases=3, num_labels=(2, 3, 1)), labels=labels)
    from_files = list(make_eval_batches(paired, batch_size=4))
    cache = CaseCache(paired)

    def no_read(*args, **kwargs):
        raise AssertionError("a file was read although the cases are cached")

    monkeypatch.setattr(paired, "read", no_read)
    from_cache = list(make_eval_batches(paired, batch_size=4, cache=cache))
    assert len(from_cache) == len(from_files)
    for a, b in zip(from_files, from_cache, strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def slow_items(delay):
    for i in itertools.count():
        time.sleep(delay)
        yield i


def test_timed_iterator_counts_waiting():
    timed = TimedIterator(slow_items(0.01))
    values = [next(timed) for _ in range(5)]
    assert values == [0, 1, 2, 3, 4]
    assert timed.count == 5 and 0.05 <= timed.wait_seconds < 0.5
    timed.reset()
    assert timed.count == 0 and timed.wait_seconds == 0.0


def test_measure_input_share_separates_input_and_compute():
    input_bound = measure_input_share(slow_items(0.02), lambda _: None, num_steps=5)
    assert input_bound["input_share"] > 0.9
    compute_bound = measure_input_share(itertools.count(), lambda _: time.sleep(0.02), num_steps=5)
    assert compute_bound["input_share"] < 0.1
    assert compute_bound["steps"] == 5 and compute_bound["seconds_per_step"] >= 0.02
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        measure_input_share([], lambda _: None, num_steps=0)
