"""Tests of comir_tf.synthetic and comir_tf.data: files, reading, the augmented stream."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from comir_tf import synthetic
from comir_tf.data import (
    PairSet,
    _blur,
    _reflect,
    centre_crops,
    find_pairs,
    load_pairs,
    make_patch_dataset,
    read_image,
)
from labelreg.errors import DataError


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    return synthetic.write_synthetic_pairs(tmp_path_factory.mktemp("syn") / "pairs", 3, size=64,
                                           seed=5)


def test_synthetic_pairs_are_deterministic_and_reused(pair_dir, tmp_path):
    again = synthetic.write_synthetic_pairs(tmp_path / "again", 3, size=64, seed=5)
    for name in ("pair_001_SHG.tif", "pair_002_BF.png"):
        assert (pair_dir / name).read_bytes() == (again / name).read_bytes()
    record = json.loads((pair_dir / synthetic.MARKER).read_text())
    assert record["num_pairs"] == 3 and record["size"] == 64
    stamp = (pair_dir / "pair_000_SHG.tif").stat().st_mtime_ns
    synthetic.write_synthetic_pairs(pair_dir, 3, size=64, seed=5)  # same arguments: reused
    assert (pair_dir / "pair_000_SHG.tif").stat().st_mtime_ns == stamp
    assert not [p for p in pair_dir.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_synthetic_refuses_foreign_or_different_folders(pair_dir, tmp_path):
    with pytest.raises(DataError, match="other settings"):
        synthetic.write_synthetic_pairs(pair_dir, 4, size=64, seed=5)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic CoMIR set"):
        synthetic.write_synthetic_pairs(foreign, 2, size=64)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_synthetic_modalities_share_shapes_but_not_a_monotone_intensity_map():
    shg, bf = synthetic.render_pair(128, seed=2)
    assert shg.shape == (128, 128, 1) and bf.shape == (128, 128, 3)
    assert 0.0 <= shg.min() and shg.max() <= 1.0 and 0.0 <= bf.min() and bf.max() <= 1.0
    # Class means: background is darkest in A but brightest in B, epithelium dark in both.
    rng = np.random.default_rng(2)  # recompute the classes exactly as render_pair does
    size, scale = 128, 0.5
    tissue = synthetic._normalise(synthetic._smooth(rng.normal(size=(size, size)), 14 * scale))
    kind = synthetic._normalise(synthetic._smooth(rng.normal(size=(size, size)), 10 * scale))
    classes = np.where(tissue < 0.35, 0, np.where(kind < 0.5, 1, 2))
    gray_b = bf.mean(axis=-1)
    mean_a = [np.median(shg[..., 0][classes == c]) for c in range(3)]
    mean_b = [np.median(gray_b[classes == c]) for c in range(3)]
    assert np.argsort(mean_a).tolist() != np.argsort(mean_b).tolist()
    assert np.argsort(mean_a).tolist() != np.argsort(mean_b)[::-1].tolist()


def test_find_pairs_and_errors(pair_dir, tmp_path):
    pairs = find_pairs(pair_dir, "_SHG", "_BF")
    assert [p.name for p in pairs] == ["pair_000", "pair_001", "pair_002"]
    assert pairs[0].path_a.suffix == ".tif" and pairs[0].path_b.suffix == ".png"
    with pytest.raises(DataError, match="not found"):
        find_pairs(tmp_path / "missing", "_SHG", "_BF")
    with pytest.raises(DataError, match=r"no aligned pairs found; expected files named <id>_A"):
        find_pairs(pair_dir, "_A", "_B")
    with pytest.raises(DataError, match="must differ"):
        find_pairs(pair_dir, "_BF", "_BF")


def test_read_image_scaling_log_and_layouts(tmp_path):
    data = np.array([[0, 65535], [32768, 1000]], np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", data)
    image = read_image(tmp_path / "x.tif")
    assert image.shape == (2, 2, 1) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], data / 65535.0, rtol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "x.tif", scale=4096.0)[..., 0],
                               data / 4096.0, rtol=1e-6)
    np.testing.assert_allclose(read_image(tmp_path / "x.tif", log=True)[..., 0],
                               np.log1p(data / 65535.0), rtol=1e-6)
    planar = np.arange(3 * 6 * 5, dtype=np.float32).reshape(3, 6, 5)  # channels first
    tifffile.imwrite(tmp_path / "p.tif", planar, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), np.moveaxis(planar, 0, -1))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    Image.fromarray(rgba).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png", channels=3).shape == (4, 4, 3)
    with pytest.raises(DataError, match=r"expected 1 channel\(s\).*shape \(4, 4, 4\)"):
        read_image(tmp_path / "c.png", channels=1)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read"):
        read_image(tmp_path / "bad.png")


def test_load_pairs_checks_sizes(pair_dir, tmp_path):
    pairs = load_pairs(pair_dir, "_SHG", "_BF", 1, 3)
    assert len(pairs) == 3 and pairs.images_b[0].shape == (64, 64, 3)
    tifffile.imwrite(tmp_path / "x_A.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "x_B.tif", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match="same height and width"):
        load_pairs(tmp_path, "_A", "_B", 1, 1)


def test_reflect_matches_symmetric_padding():
    size = 5
    coords = np.arange(-12, 17, dtype=np.float32)
    folded = _reflect(coords, np.float32(size)).numpy()
    padded = np.pad(np.arange(size), 12, mode="symmetric")[: len(coords)]
    np.testing.assert_array_equal(folded, padded)


def test_blur_matches_explicit_convolution():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 12, 10, 1)).astype(np.float32)
    sigma = np.array([1.2, 0.0], np.float32)
    out = _blur(x, sigma, radius=3).numpy()
    taps = np.exp(-0.5 * (np.arange(-3, 4) / 1.2) ** 2)
    taps /= taps.sum()
    padded = np.pad(x[0, ..., 0], 3, mode="symmetric")
    rows = sum(taps[i] * padded[i:i + 12, 3:13] for i in range(7))
    rows = np.pad(rows, ((0, 0), (3, 3)), mode="symmetric")
    expected = sum(taps[i] * rows[:, i:i + 10] for i in range(7))
    np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-5)
    np.testing.assert_allclose(out[1], x[1], atol=1e-6)  # sigma 0 is the identity


def _toy_pairs() -> PairSet:
    rng = np.random.default_rng(1)
    images = [rng.uniform(size=(40, 50, 1)).astype(np.float32),
              rng.uniform(size=(30, 30, 1)).astype(np.float32)]
    return PairSet(["p", "q"], images, [np.concatenate([2 * i, -i, i + 1], -1) for i in images])


def test_patches_without_rotation_are_exact_crops():
    pairs = _toy_pairs()
    batch = next(iter(make_patch_dataset(pairs, 16, 6, seed=3, flip=False, rotate=False)))
    for patch in batch["a"].numpy():
        found = [
            np.abs(image[y:y + 16, x:x + 16] - patch).max()
            for image in pairs.images_a
            for y in range(image.shape[0] - 15) for x in range(image.shape[1] - 15)
        ]
        assert min(found) == 0.0


@pytest.mark.parametrize("flip, rotate", [(True, True), (False, True), (True, False)])
def test_modalities_stay_aligned_under_augmentation(flip, rotate):
    pairs = _toy_pairs()
    batch = next(iter(make_patch_dataset(pairs, 16, 8, seed=4, flip=flip, rotate=rotate)))
    a, b = batch["a"].numpy(), batch["b"].numpy()
    np.testing.assert_allclose(b, np.concatenate([2 * a, -a, a + 1], -1), atol=1e-5)
    assert set(batch["k_a"].numpy()) <= {0, 1, 2, 3}


def test_stream_is_a_pure_function_of_seed_and_step():
    pairs = _toy_pairs()
    kwargs = dict(blur_sigma=1.0, noise_std=0.1)
    full = list(make_patch_dataset(pairs, 16, 4, seed=9, stop_step=3, **kwargs))
    resumed = next(iter(make_patch_dataset(pairs, 16, 4, seed=9, start_step=2, **kwargs)))
    assert int(resumed["step"]) == 2
    for key in ("a", "b", "k_a", "k_b"):
        np.testing.assert_array_equal(full[2][key].numpy(), resumed[key].numpy())
    assert not np.array_equal(full[0]["a"].numpy(), full[1]["a"].numpy())
    other = next(iter(make_patch_dataset(pairs, 16, 4, seed=10, **kwargs)))
    assert not np.array_equal(full[0]["a"].numpy(), other["a"].numpy())


def test_centre_crops_pad_small_images():
    pairs = _toy_pairs()
    a, b = centre_crops(pairs, 32)
    assert a.shape == (2, 32, 32, 1) and b.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(a[0], pairs.images_a[0][4:36, 9:41])
    np.testing.assert_array_equal(a[1, 1:31, 1:31], pairs.images_a[1])
