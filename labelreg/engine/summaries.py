"""What a training run reports: log lines, TensorBoard scalars and a mid-slice picture."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from labelreg._tf import tf

__all__ = ["format_line", "middle_slice_panel", "SummaryWriter"]


def format_line(step: int, total: int, values: Mapping[str, float], rate: float,
                steps: int = 1) -> str:
    """One progress line: step, the losses and the monitoring metrics (means over the last
    ``steps`` steps when there are several)."""
    parts = [f"step {step}/{total}" + (f" (mean of {steps} steps)" if steps > 1 else "")]
    for name, value in values.items():
        unit = " mm" if name.endswith("distance_mm") else ""
        # Learning rates are small numbers that four decimals would round to 0.
        text = f"{value:.3g}" if name.startswith("learning_rate") else f"{value:.4f}"
        parts.append(f"{name} {text}{unit}")
    parts.append(f"{rate:.2f} steps/s")
    return "  ".join(parts)


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary 2-D mask (mask minus its 4-neighbour erosion)."""
    padded = np.pad(mask, 1)
    eroded = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    return mask & ~eroded


def _slice(volume: np.ndarray) -> np.ndarray:
    """The middle slice of the last spatial axis of ``[*S]`` (a 2-D image is returned as is)."""
    return volume if volume.ndim == 2 else volume[..., volume.shape[-1] // 2]


def _gray(image: np.ndarray) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.repeat(scaled[..., None], 3, axis=-1)


def middle_slice_panel(
    fixed_image: np.ndarray,
    moving_image: np.ndarray,
    warped_image: np.ndarray,
    fixed_label: np.ndarray | None = None,
    moving_label: np.ndarray | None = None,
    warped_label: np.ndarray | None = None,
) -> np.ndarray:
    """A ``[H, 3W, 3]`` RGB picture in [0, 1]: fixed | moving (resized) | warped moving.

    Inputs are single volumes ``[*S]`` on the fixed grid (resize the moving image first). Label
    contours are drawn in green (fixed label, on every panel) and red (moving or warped label).
    """
    panels = []
    for image, label in ((fixed_image, None), (moving_image, moving_label),
                         (warped_image, warped_label)):
        rgb = _gray(_slice(image))
        if fixed_label is not None:
            rgb[_contour(_slice(fixed_label) >= 0.5)] = (0.0, 1.0, 0.0)
        if label is not None:
            rgb[_contour(_slice(label) >= 0.5)] = (1.0, 0.0, 0.0)
        panels.append(rgb)
    return np.concatenate(panels, axis=1).astype(np.float32)


class SummaryWriter:
    """TensorBoard scalars and images under one folder (``tf.summary``)."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = str(log_dir)
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}/{name}", float(value))

    def image(self, step: int, name: str, picture: np.ndarray) -> None:
        with self._writer.as_default(step=step):
            tf.summary.image(name, picture[None], max_outputs=1)

    def flush(self) -> None:
        self._writer.flush()
