"""TensorBoard event files for a CoMIR run, with or without the ``tensorboard`` package.

``tf.summary.scalar`` and ``tf.summary.image`` need the ``tensorboard`` package, which is not a
dependency. The same records are written here with the low-level ``tf.summary.write`` and the
plugin metadata TensorBoard's scalar and image dashboards read, so the event files look the same
to TensorBoard whether or not it is installed in the training environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from tensorflow.core.framework import summary_pb2

from labelreg._tf import tf

__all__ = ["EventWriter"]


def _metadata(plugin: str, scalar: bool) -> bytes:
    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = plugin
    if scalar:
        meta.data_class = summary_pb2.DATA_CLASS_SCALAR
    else:
        meta.data_class = summary_pb2.DATA_CLASS_BLOB_SEQUENCE
    return meta.SerializeToString()


class EventWriter:
    """Scalars and images under one folder (TensorBoard's ``scalars`` and ``images`` plugins).

    Args:
        log_dir: the event-file folder.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = str(log_dir)
        self._writer = tf.summary.create_file_writer(self.log_dir)
        self._scalar_meta = _metadata("scalars", scalar=True)
        self._image_meta = _metadata("images", scalar=False)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        """One scalar per entry, tagged ``<prefix>/<name>``."""
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.write(f"{prefix}/{name}", tf.constant(float(value), tf.float32),
                                 step=step, metadata=self._scalar_meta)

    def image(self, step: int, name: str, picture: np.ndarray) -> None:
        """One RGB picture ``[H, W, 3]`` with values in [0, 1]."""
        pixels = np.round(np.clip(picture, 0.0, 1.0) * 255).astype(np.uint8)
        encoded = tf.image.encode_png(pixels)
        record = tf.stack([tf.as_string(pixels.shape[1]), tf.as_string(pixels.shape[0]), encoded])
        with self._writer.as_default():
            tf.summary.write(name, record, step=step, metadata=self._image_meta)

    def flush(self) -> None:
        self._writer.flush()
