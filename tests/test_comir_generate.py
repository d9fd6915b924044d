"""Tests of comir_tf.generate: any image size, tiles, files."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tifffile
from PIL import Image

from comir_tf.generate import generate, preview, write_comir
from comir_tf.tiramisu import Tiramisu


class _Local(keras.Model):
    """A 3x3 convolution that insists on sides divisible by 8 (like a 3-pooling Tiramisu)."""

    multiple = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 3, padding="same")

    def call(self, x, training=None):
        if x.shape[1] % 8 or x.shape[2] % 8:
            raise AssertionError(f"unpadded input {x.shape}")
        return self.conv(x)


@pytest.fixture(scope="module")
def local_model():
    model = _Local()
    model(np.zeros((1, 8, 8, 3), np.float32))
    return model


def _reference(model, image):
    """The convolution applied to the symmetrically extended image, cropped back."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="symmetric")
    kernel, bias = (w.numpy() for w in model.conv.weights)
    h, w = image.shape[:2]
    out = np.zeros((h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[dy:dy + h, dx:dx + w] @ kernel[dy, dx]
    return out + bias


@pytest.mark.parametrize("shape", [(37, 50), (8, 8), (5, 70)])
def test_whole_image_any_size_matches_reference(local_model, shape):
    image = np.random.default_rng(0).uniform(size=(*shape, 3)).astype(np.float32)
    out = generate(local_model, image).numpy()
    assert out.shape == (*shape, 2)
    np.testing.assert_allclose(out, _reference(local_model, image), atol=1e-5)


@pytest.mark.parametrize("tile, margin", [(16, None), (8, 4), (24, 8)])
def test_tiles_join_without_seams(local_model, tile, margin):
    image = np.random.default_rng(1).uniform(size=(45, 61, 3)).astype(np.float32)
    out = generate(local_model, image, tile=tile, margin=margin, batch_size=3).numpy()
    assert out.shape == (45, 61, 2)
    np.testing.assert_allclose(out, _reference(local_model, image), atol=1e-5)


def test_batched_input_and_errors(local_model):
    images = np.random.default_rng(2).uniform(size=(2, 12, 9, 3)).astype(np.float32)
    out = generate(local_model, images).numpy()
    assert out.shape == (2, 12, 9, 2)
    np.testing.assert_allclose(out[1], generate(local_model, images[1]).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="positive multiple of 8"):
        generate(local_model, images[0], tile=12)
    with pytest.raises(ValueError, match=r"\[H, W, C\] or \[B, H, W, C\]"):
        generate(local_model, images[0, ..., 0])
    with pytest.raises(ValueError, match="NaN"):
        generate(local_model, np.full((8, 8, 3), np.nan, np.float32))


def test_tiramisu_comir_of_odd_sized_image():
    model = Tiramisu(3, 2, init_filters=4, down_blocks=(1, 1), up_blocks=(1, 1),
                     bottleneck_layers=1, growth_rate=4, dropout=0.0)
    image = np.random.default_rng(3).uniform(size=(21, 30, 3)).astype(np.float32)
    out = generate(model, image, margin=0).numpy()
    assert out.shape == (21, 30, 2)
    assert generate(model, image).shape == (21, 30, 2)  # default context margin
    # Cropping back is exact: the output equals the network on the padded image, cropped.
    padded = np.pad(image, ((1, 2), (1, 1), (0, 0)), mode="symmetric")  # to 24 x 32
    full = model(padded[None], training=False).numpy()[0]
    np.testing.assert_allclose(out, full[1:22, 1:31], atol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_write_comir_tiff_and_png(tmp_path, channels):
    comir = np.random.default_rng(4).normal(size=(13, 17, channels)).astype(np.float32)
    written = write_comir(comir, tmp_path / "x_comir.tif")
    assert [p.name for p in written] == ["x_comir.tif", "x_comir.png"]
    back = tifffile.imread(written[0])
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.reshape(13, 17, channels), comir)
    png = np.asarray(Image.open(written[1]))
    assert png.dtype == np.uint8 and png.shape[:2] == (13, 17)
    assert png.min() == 0 and png.max() == 255
    np.testing.assert_array_equal(preview(comir), png)
