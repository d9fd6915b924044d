"""The inference overlay figure (``labelreg.visualise``) and its atomic PNG write."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from labelreg import visualise
from labelreg.visualise import FIXED_COLOUR, MOVING_COLOUR, OVERLAP_COLOUR, overlay_figure


def ball_label(shape, centre, radius):
    grid = np.indices(shape, dtype=np.float32)
    dist2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return (dist2 <= radius ** 2).astype(np.float32)


def _is(picture, colour):
    return np.all(picture == np.asarray(colour, np.uint8), axis=-1)


def _crop(picture, box):
    top, left, h, w = box
    return picture[top:top + h, left:left + w]


def _pair(rng, shape):
    return [rng.normal(size=shape).astype(np.float32) for _ in range(3)]


def test_3d_gives_three_rows_of_four_enlarged_panels(rng):
    fixed, moving, warped = _pair(rng, (12, 16, 10))
    picture, layout = visualise._render(fixed, moving, warped, None, None, None, None, 64)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    np.testing.assert_array_equal(picture, overlay_figure(fixed, moving, warped, min_panel=64))
    assert sorted(layout.panels) == [(r, c) for r in range(3) for c in range(4)]
    for (r, _), (top, left, h, w) in layout.panels.items():
        assert min(h, w) >= 64
        assert top + h <= picture.shape[0] and left + w <= picture.shape[1]
        assert (top, h) == layout.panels[(r, 0)][:3:2]  # one row shares its top and height
    tops = [layout.panels[(r, 0)][0] for r in range(3)]
    assert tops == sorted(tops) and len(set(tops)) == 3
    # square voxels: the plane through axis 0 is 16 x 10 voxels -> 102 x 64 pixels
    assert layout.panels[(0, 0)][2:] == (102, 64)


def test_2d_gives_one_row_and_no_row_labels(rng):
    fixed, moving, warped = _pair(rng, (20, 30))
    picture, layout = visualise._render(fixed, moving, warped, None, None, None, None, 192)
    assert sorted(layout.panels) == [(0, c) for c in range(4)]
    assert layout.row_labels is None and layout.legend is None
    assert all(box[2:] == (192, 288) for box in layout.panels.values())
    assert picture.shape[1] >= 4 * 288 and picture.shape[0] >= 192


def test_panels_are_never_shrunk_below_one_pixel_per_voxel(rng):
    fixed, moving, warped = _pair(rng, (90, 40))
    _, layout = visualise._render(fixed, moving, warped, None, None, None, None, 16)
    assert layout.panels[(0, 0)][2:] == (90, 40)


def test_titles_and_row_labels_are_drawn(rng):
    fixed, moving, warped = _pair(rng, (16, 16, 16))
    picture, layout = visualise._render(fixed, moving, warped, None, None, None, None, 64)
    top, left, h, w = layout.header
    assert h > 10
    for c in range(4):  # text in every column's header
        col_left = layout.panels[(0, c)][1]
        header = picture[top:top + h, col_left:col_left + layout.panels[(0, c)][3]]
        assert len(np.unique(header.reshape(-1, 3), axis=0)) > 2
    strip = _crop(picture, layout.row_labels)
    for r in range(3):  # text left of every row
        row_top, _, row_h, _ = layout.panels[(r, 0)]
        rows = strip[row_top - layout.row_labels[0]:row_top - layout.row_labels[0] + row_h]
        assert rows.std() > 0
    # the text is grey: no label colours without labels
    assert not (_is(picture, FIXED_COLOUR) | _is(picture, MOVING_COLOUR)).any()


def test_legend_strip_only_with_labels(rng):
    fixed, moving, warped = _pair(rng, (24, 24))
    label = ball_label((24, 24), (12, 12), 6)
    plain, plain_layout = visualise._render(fixed, moving, warped, None, None, None, None, 96)
    assert plain_layout.legend is None
    labelled, layout = visualise._render(fixed, moving, warped, label, label, label, None, 96)
    assert layout.legend is not None and layout.panels == plain_layout.panels
    legend = _crop(labelled, layout.legend)
    assert layout.legend[0] >= max(t + h for t, _, h, _ in layout.panels.values())
    assert labelled.shape[0] == plain.shape[0] + layout.legend[2]
    for colour in (FIXED_COLOUR, MOVING_COLOUR, OVERLAP_COLOUR):
        assert _is(legend, colour).sum() >= 20
    # above the legend, only the contours differ
    contours = _label_pixels(labelled[:plain.shape[0]])
    assert contours.any()
    np.testing.assert_array_equal(labelled[:plain.shape[0]][~contours], plain[~contours])


def _label_pixels(picture):
    return _is(picture, FIXED_COLOUR) | _is(picture, MOVING_COLOUR) | _is(picture, OVERLAP_COLOUR)


def test_legend_lists_only_the_given_labels(rng):
    fixed, moving, warped = _pair(rng, (24, 24))
    label = ball_label((24, 24), (12, 12), 6)
    picture, layout = visualise._render(fixed, moving, warped, None, label, label, None, 96)
    legend = _crop(picture, layout.legend)
    assert _is(legend, MOVING_COLOUR).any()
    assert not _is(legend, FIXED_COLOUR).any() and not _is(legend, OVERLAP_COLOUR).any()


def test_contours_follow_the_ball_boundary(rng):
    shape, radius, scale = (40, 40), 10.0, 5
    fixed, moving, warped = _pair(rng, shape)
    fixed_label = ball_label(shape, (19.5, 19.5), radius)
    moving_label = ball_label(shape, (19.5, 25.5), radius)
    picture, layout = visualise._render(fixed, moving, warped, fixed_label, moving_label,
                                        fixed_label, None, 40 * scale)
    # voxel centre i is drawn at pixel (i + 0.5) * scale - 0.5
    centre = np.array([20 * scale - 0.5, 20 * scale - 0.5])
    fixed_panel = _crop(picture, layout.panels[(0, 0)])
    green = np.argwhere(_is(fixed_panel, FIXED_COLOUR))
    assert not _is(fixed_panel, MOVING_COLOUR).any()
    dist = np.linalg.norm(green - centre, axis=1)
    assert np.all(np.abs(dist - radius * scale) <= scale + 1)
    for angle in np.linspace(0, 2 * np.pi, 36, endpoint=False):  # closed, 2 pixels thick
        point = centre + radius * scale * np.array([np.sin(angle), np.cos(angle)])
        assert np.min(np.linalg.norm(green - point, axis=1)) <= 3
    area = np.pi * (radius * scale) ** 2
    assert 1.5 * 2 * np.pi * radius * scale < len(green) < 0.2 * area
    # moving panel: the red ball is 6 voxels to the right of the green one
    moving_panel = _crop(picture, layout.panels[(0, 1)])
    red = np.argwhere(_is(moving_panel, MOVING_COLOUR) | _is(moving_panel, OVERLAP_COLOUR))
    assert np.allclose(red.mean(axis=0), centre + [0, 6 * scale], atol=2)
    # warped label equal to the fixed label: the contours coincide (yellow)
    warped_panel = _crop(picture, layout.panels[(0, 2)])
    assert _is(warped_panel, OVERLAP_COLOUR).sum() == len(green)
    assert not _is(warped_panel, MOVING_COLOUR).any()
    # no contours on the checkerboard
    assert not _label_pixels(_crop(picture, layout.panels[(0, 3)])).any()


def test_checkerboard_alternates_fixed_and_warped_tiles(rng):
    fixed, moving, warped = _pair(rng, (32, 32))
    picture, layout = visualise._render(fixed, moving, warped, None, None, None, None, 128)
    fixed_panel, warped_panel, checker = (_crop(picture, layout.panels[(0, c)])
                                          for c in (0, 2, 3))
    from_fixed = np.all(checker == fixed_panel, axis=-1)
    from_warped = np.all(checker == warped_panel, axis=-1)
    assert np.all(from_fixed | from_warped)
    # 8 x 8 square tiles of 16 pixels; a tile is fixed's where (nearly) all pixels match it
    per_tile = from_fixed.reshape(8, 16, 8, 16).mean(axis=(1, 3))
    warped_per_tile = from_warped.reshape(8, 16, 8, 16).mean(axis=(1, 3))
    expected = (np.add.outer(np.arange(8), np.arange(8)) % 2) == 0
    assert np.all(per_tile[expected] == 1) and np.all(warped_per_tile[~expected] == 1)
    assert np.all(per_tile[~expected] < 0.2) and np.all(warped_per_tile[expected] < 0.2)


def test_spacing_sets_the_aspect_ratio(rng):
    fixed, moving, warped = _pair(rng, (32, 32))
    for spacing, ratio in (((1.0, 2.0), 2.0), ((2.0, 1.0), 0.5), (None, 1.0)):
        _, layout = visualise._render(fixed, moving, warped, None, None, None, spacing, 100)
        h, w = layout.panels[(0, 0)][2:]
        assert min(h, w) >= 100
        assert w / h == pytest.approx(ratio, rel=0.02)
    fixed, moving, warped = _pair(rng, (20, 20, 10))
    _, layout = visualise._render(fixed, moving, warped, None, None, None, (1.0, 1.0, 3.0), 60)
    sizes = [layout.panels[(r, 0)][2:] for r in range(3)]
    # planes through axis 0 and axis 1 show axis 2 (10 x 3 mm) across, axis 2's plane is square
    assert sizes[0][1] / sizes[0][0] == pytest.approx(1.5, rel=0.02)
    assert sizes[1][1] / sizes[1][0] == pytest.approx(1.5, rel=0.02)
    assert sizes[2][0] == sizes[2][1]


def test_intensities_are_windowed_to_the_1st_99th_percentile():
    image = np.linspace(0.0, 1.0, 400, dtype=np.float32).reshape(20, 20)
    image[0, 0], image[-1, -1] = -1000.0, 1000.0  # outliers would leave min-max windows grey
    picture, layout = visualise._render(image, image, image, None, None, None, None, 20)
    panel = _crop(picture, layout.panels[(0, 0)])[..., 0].astype(float)
    assert 110 <= np.median(panel) <= 145
    assert np.mean(panel == 0) >= 0.005 and np.mean(panel == 255) >= 0.005


@pytest.mark.parametrize("value", [0.0, 3.7])
def test_constant_images_and_empty_labels_do_not_fail(value):
    volume = np.full((8, 9, 7), value, np.float32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        picture, layout = visualise._render(volume, volume, volume, np.zeros_like(volume),
                                            np.ones_like(volume), None, None, 32)
    assert picture.dtype == np.uint8
    panel = _crop(picture, layout.panels[(1, 0)])
    assert np.all(panel == 0)  # a constant image is drawn black, an empty label not at all
    assert not _label_pixels(_crop(picture, layout.panels[(1, 0)])).any()


def test_non_finite_values_are_ignored():
    image = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    image[0, 0], image[0, 1] = np.nan, np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picture = overlay_figure(image, image, image, image, image, image, min_panel=20)
    assert picture.dtype == np.uint8


@pytest.mark.parametrize("kwargs, message", [
    ({"fixed": np.zeros((4, 4, 4, 4))}, "2-D or 3-D"),
    ({"moving": np.zeros((5, 4))}, "moving has shape"),
    ({"warped_label": np.zeros((4, 5))}, "warped_label has shape"),
    ({"spacing": (1.0, 1.0, 1.0)}, "spacing"),
    ({"spacing": (1.0, 0.0)}, "spacing"),
    ({"min_panel": 0}, "min_panel"),
])
def test_bad_arguments_are_reported(kwargs, message):
    args = {"fixed": np.zeros((4, 4)), "moving": np.zeros((4, 4)), "warped": np.zeros((4, 4))}
    with pytest.raises(ValueError, match=message):
        overlay_figure(**{**args, **kwargs})


def test_write_overlay_resizes_moving_and_replaces_the_png_atomically(tmp_path, rng):
    from labelreg.pair_inference import _write_overlay

    fixed_shape = (12, 14, 10)
    fixed, warped = (rng.normal(size=fixed_shape).astype(np.float32) for _ in range(2))
    moving = rng.normal(size=(6, 7, 5)).astype(np.float32)
    label = ball_label(fixed_shape, (6, 7, 5), 3)
    path = tmp_path / "overlay.png"
    path.write_bytes(b"old")
    _write_overlay(path, fixed, moving, warped, fixed_shape, label, ball_label((6, 7, 5), (3, 3, 2), 2),
                   label, spacing=(1.0, 1.0, 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]
    with Image.open(path) as png:
        picture = np.asarray(png.convert("RGB"))
    expected = overlay_figure(fixed, fixed, warped, label, label, label, (1.0, 1.0, 2.0))
    assert picture.shape == expected.shape
    assert _is(picture, FIXED_COLOUR).any() and _is(picture, MOVING_COLOUR).any()
