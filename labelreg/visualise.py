"""A readable picture of one registered pair: the ``overlay.png`` that inference writes.

:func:`overlay_figure` lays out a grid of panels with NumPy and Pillow only (no matplotlib, no
TensorFlow):

- one row per plane: for a 3-D volume the three orthogonal mid-planes (the planes through the
  centre of axis 0, axis 1 and axis 2, in array terms, not patient terms), each labelled at the
  left with its slice index and which array axes run down and right; a 2-D image has one row;
- four columns, titled above: fixed | moving (before) | warped moving (after) | a checkerboard
  of fixed and warped moving (square tiles of about 1/8 of the panel's shorter side; where the
  registration is good, edges run on across the tile borders);
- every panel enlarged (bilinear) so that its shorter side is at least ``min_panel`` pixels and
  never fewer than one pixel per voxel, keeping the physical aspect ratio when ``spacing`` is
  given (an aspect ratio above 8:1 is clamped to 8:1 so a thin volume stays printable);
- intensities windowed per image (the whole volume, so the three planes agree) to its 1st-99th
  percentile, falling back to min-max, and a constant image drawn black;
- label contours, the boundary of ``label >= 0.5`` traced after upscaling, two pixels thick:
  green for the fixed label (on the fixed, moving and warped panels), red for the moving label
  (before) and the warped label (after), yellow where a green and a red contour coincide; the
  checkerboard panel has none, so that its tile borders stay visible;
- a legend strip at the bottom explaining the contour colours, only when a label is given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["overlay_figure", "COLUMN_TITLES", "FIXED_COLOUR", "MOVING_COLOUR", "OVERLAP_COLOUR"]

FIXED_COLOUR = (0, 255, 0)
MOVING_COLOUR = (255, 0, 0)
OVERLAP_COLOUR = (255, 255, 0)
COLUMN_TITLES = ("fixed", "moving (before)", "warped moving (after)",
                 "checkerboard: fixed / warped")

_BACKGROUND = (24, 24, 24)
_TEXT = (235, 235, 235)
_GAP = 4  # pixels between panels
_MARGIN = 6  # pixels around the figure, its header, row labels and legend
_MAX_ASPECT = 8.0
_CHECKER_TILES = 8  # tiles along a panel's shorter side
_FONT_SIZE = 13
_SWATCH = (22, 3)  # width, height of a legend colour sample


@dataclass
class _Layout:
    """Where :func:`_render` put things: ``(top, left, height, width)`` boxes in the figure."""

    panels: dict[tuple[int, int], tuple[int, int, int, int]] = field(default_factory=dict)
    header: tuple[int, int, int, int] = (0, 0, 0, 0)
    row_labels: tuple[int, int, int, int] | None = None
    legend: tuple[int, int, int, int] | None = None


def overlay_figure(
    fixed: np.ndarray,
    moving: np.ndarray,
    warped: np.ndarray,
    fixed_label: np.ndarray | None = None,
    moving_label: np.ndarray | None = None,
    warped_label: np.ndarray | None = None,
    spacing: Sequence[float] | None = None,
    min_panel: int = 192,
) -> np.ndarray:
    """A titled grid of fixed | moving | warped | checkerboard panels (see the module docstring).

    Args:
        fixed, moving, warped: single volumes ``[*S]`` (2-D or 3-D) on the fixed grid; resample
            the moving image onto the fixed grid first.
        fixed_label, moving_label, warped_label: optional label volumes ``[*S]`` on the same
            grid; their contours are the boundary of ``label >= 0.5``.
        spacing: voxel size per axis (mm) of the fixed grid; ``None`` draws voxels square.
        min_panel: the smallest panel side, in pixels.

    Returns:
        A ``uint8`` RGB picture ``[H, W, 3]``.

    Raises:
        ValueError: not 2-D or 3-D, volumes of different shapes, or a bad ``spacing`` or
            ``min_panel``.
    """
    return _render(fixed, moving, warped, fixed_label, moving_label, warped_label, spacing,
                   min_panel)[0]


def _render(fixed, moving, warped, fixed_label, moving_label, warped_label, spacing,
            min_panel) -> tuple[np.ndarray, _Layout]:
    fixed = np.asarray(fixed)
    if fixed.ndim not in (2, 3) or 0 in fixed.shape:
        raise ValueError(f"overlay_figure: a non-empty 2-D or 3-D volume, not shape {fixed.shape}")
    volumes = {"moving": moving, "warped": warped, "fixed_label": fixed_label,
               "moving_label": moving_label, "warped_label": warped_label}
    for name, volume in volumes.items():
        if volume is not None and np.shape(volume) != fixed.shape:
            raise ValueError(
                f"overlay_figure: {name} has shape {np.shape(volume)}, the fixed image "
                f"{fixed.shape}; resample it onto the fixed grid first")
    spacing = _check_spacing(spacing, fixed.ndim)
    if int(min_panel) < 1:
        raise ValueError(f"overlay_figure: min_panel must be at least 1, not {min_panel}")
    min_panel = int(min_panel)

    images = [_window(v) for v in (fixed, moving, warped)]
    labels = [None if v is None else _finite(v) for v in (fixed_label, moving_label,
                                                          warped_label)]
    font = _font()
    line = _line_height(font)

    rows = []  # (row label lines, panel (h, w), 3 image planes, 3 label planes)
    for axis, kept in _plane_axes(fixed.ndim):
        index = fixed.shape[axis] // 2 if axis is not None else None

        def plane(volume, axis=axis, index=index):
            return volume if volume is None or axis is None else np.take(volume, index, axis)

        size = _panel_size([fixed.shape[a] for a in kept], [spacing[a] for a in kept],
                           min_panel)
        text = None if axis is None else [
            f"axis {axis} mid-plane", f"index {index} of {fixed.shape[axis]}",
            f"down: axis {kept[0]}", f"right: axis {kept[1]}"]
        rows.append((text, size, [plane(v) for v in images], [plane(v) for v in labels]))

    column_w = max(size[1] for _, size, _, _ in rows)
    titles = [_wrap(t, font, column_w) for t in COLUMN_TITLES]
    header_h = max(len(t) for t in titles) * line + 2 * _MARGIN
    strip_w = 0
    if rows[0][0] is not None:
        strip_w = max(_text_width(s, font) for text, *_ in rows for s in text) + 2 * _MARGIN
    grid_left = _MARGIN + strip_w
    grid_w = 4 * column_w + 3 * _GAP
    width = grid_left + grid_w + _MARGIN
    grid_h = sum(size[0] for _, size, _, _ in rows) + _GAP * (len(rows) - 1)

    entries = []
    if labels[0] is not None:
        entries.append((FIXED_COLOUR, "fixed label"))
    if labels[1] is not None or labels[2] is not None:
        entries.append((MOVING_COLOUR, "moving label (before) / warped label (after)"))
    if labels[0] is not None and (labels[1] is not None or labels[2] is not None):
        entries.append((OVERLAP_COLOUR, "both (contours coincide)"))
    legend_rows = _flow(entries, font, width - 2 * _MARGIN) if entries else []
    legend_h = len(legend_rows) * line + 2 * _MARGIN if legend_rows else 0

    height = header_h + grid_h + _MARGIN + legend_h
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = _BACKGROUND
    layout = _Layout(header=(0, grid_left, header_h, grid_w))
    if strip_w:
        layout.row_labels = (header_h, _MARGIN, grid_h, strip_w)

    top = header_h
    for r, (_, (h, w), planes, label_planes) in enumerate(rows):
        panels = _panels(planes, label_planes, (h, w))
        for c, panel in enumerate(panels):
            left = grid_left + c * (column_w + _GAP) + (column_w - w) // 2
            canvas[top:top + h, left:left + w] = panel
            layout.panels[(r, c)] = (top, left, h, w)
        top += h + _GAP
    if legend_rows:
        layout.legend = (height - legend_h, 0, legend_h, width)

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, title in enumerate(titles):
        for k, text in enumerate(title):
            x = grid_left + c * (column_w + _GAP) + (column_w - _text_width(text, font)) // 2
            draw.text((x, _MARGIN + k * line), text, fill=_TEXT, font=font)
    for r, (text, (h, _), _, _) in enumerate(rows):
        if text is None:
            continue
        panel_top = layout.panels[(r, 0)][0]
        y = panel_top + max(0, (h - len(text) * line) // 2)
        for k, s in enumerate(text):
            draw.text((_MARGIN, y + k * line), s, fill=_TEXT, font=font)
    for k, row in enumerate(legend_rows):
        y = height - legend_h + _MARGIN + k * line
        for x, colour, text in row:
            swatch_y = y + (line - _SWATCH[1]) // 2
            draw.rectangle((x, swatch_y, x + _SWATCH[0] - 1, swatch_y + _SWATCH[1] - 1),
                           fill=colour)
            draw.text((x + _SWATCH[0] + 4, y), text, fill=_TEXT, font=font)
    return np.asarray(picture, np.uint8).copy(), layout


def _panels(planes, label_planes, size):
    """The four RGB panels of one row, each ``[h, w, 3]`` uint8."""
    h, w = size
    gray = [_resize(p, size) for p in planes]
    tile = max(1, round(min(h, w) / _CHECKER_TILES))
    yy, xx = np.indices((h, w))
    checker = np.where((yy // tile + xx // tile) % 2 == 0, gray[0], gray[2])
    panels = [np.repeat((np.clip(g, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)
              for g in (*gray, checker)]
    edges = [None if p is None else _boundary(_resize(p, size) >= 0.5) for p in label_planes]
    for c, red in ((0, None), (1, edges[1]), (2, edges[2])):
        green = edges[0]
        if green is not None:
            panels[c][green] = FIXED_COLOUR
        if red is not None:
            panels[c][red] = MOVING_COLOUR
            if green is not None:
                panels[c][red & green] = OVERLAP_COLOUR
    return panels


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in np.ravel(np.asarray(spacing, dtype=np.float64)))
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"overlay_figure: spacing must be {ndim} positive sizes (mm), not {spacing!r}")
    return values


def _plane_axes(ndim: int):
    """``(sliced axis or None, (axis shown down, axis shown right))`` for each row."""
    if ndim == 2:
        return [(None, (0, 1))]
    return [(a, tuple(b for b in range(3) if b != a)) for a in range(3)]


def _panel_size(shape: Sequence[int], spacing: Sequence[float],
                min_panel: int) -> tuple[int, int]:
    """Pixels ``(h, w)`` of a plane: physical aspect (clamped), short side >= ``min_panel``, and
    at least one pixel per voxel."""
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    extent = [min(e, _MAX_ASPECT * min(extent)) for e in extent]
    scale = max(min_panel / min(extent), *(n / e for n, e in zip(shape, extent, strict=True)))
    h, w = (max(min_panel, round(e * scale)) for e in extent)
    return h, w


def _finite(volume) -> np.ndarray:
    return np.nan_to_num(np.asarray(volume, np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _window(volume) -> np.ndarray:
    """``volume`` mapped to [0, 1] by its 1st-99th percentile (min-max if those agree)."""
    values = _finite(volume)
    lo, hi = np.percentile(values, (1.0, 99.0))
    if not hi > lo:
        lo, hi = values.min(), values.max()
    if not hi > lo:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _resize(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float plane to ``(h, w)``."""
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float32)


def _shifted(mask: np.ndarray) -> list[np.ndarray]:
    padded = np.pad(mask, 1, mode="edge")
    return [padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2],
            padded[1:-1, 2:]]


def _boundary(mask: np.ndarray) -> np.ndarray:
    """A two-pixel line along the edge of ``mask``: its inner and outer 4-neighbour rims."""
    inner = mask & ~np.logical_and.reduce(_shifted(mask))
    outer = np.logical_or.reduce(_shifted(mask)) & ~mask
    return inner | outer


@functools.lru_cache(maxsize=1)
def _font():
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def _text_width(text: str, font) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(math.ceil(right - left))


def _line_height(font) -> int:
    bottom = font.getbbox("Ag|(")[3]
    return int(math.ceil(bottom)) + 4


def _wrap(text: str, font, width: int) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` (a long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _flow(entries, font, width: int) -> list[list[tuple[int, tuple[int, int, int], str]]]:
    """Legend entries placed left to right, ``(x, colour, text)``, wrapped onto new lines."""
    rows: list[list[tuple[int, tuple[int, int, int], str]]] = [[]]
    x = _MARGIN
    for colour, text in entries:
        entry_w = _SWATCH[0] + 4 + _text_width(text, font)
        if rows[-1] and x + entry_w > _MARGIN + width:
            rows.append([])
            x = _MARGIN
        rows[-1].append((x, colour, text))
        x += entry_w + 3 * _MARGIN
    return rows
