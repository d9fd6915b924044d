"""2-D microscopy sequences stored as multi-page TIFF stacks (DeepSim's data layout).

A dataset is two folders holding one stack per sequence under the same file name::

    images/01.tif         frames x H x W, uint8 / uint16 (/ uint32 or float)
    labels-class/01.tif   frames x H x W, integer class per pixel, 0 = background

Conventions (those of DeepSim's ``TiffStackDataset``):

- Intensities are divided by ``2**bitdepth``, the bit depth being that of the integer dtype
  (8, 16 or 32); float stacks are kept as they are. There is no per-image normalisation.
- Registration pairs are two frames of one sequence: for validation and testing the consecutive
  pairs ``(t, t+1)`` over a frame range; for training a random frame and a random partner within
  ``+-max_offset`` frames (default 2), in either direction and never the frame itself.
- Labels are handed to the networks one-hot over all ``K`` classes, background included, so that
  a Dice over classes can include class 0 as DeepSim's metric does.

:func:`make_stack_train_dataset` is the endless, resumable training stream with DeepSim's random
rotation / scaling / flip augmentation; :func:`make_stack_eval_pairs` yields the ordered
consecutive pairs for validation, inference and metrics. Reading stacks does not import
TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from labelreg.errors import DataError, shape_text

if TYPE_CHECKING:  # pragma: no cover
    from labelreg._tf import tf

__all__ = [
    "open_stacks",
    "configured_train_dataset",
    "TIFF_SUFFIXES",
    "read_stack",
    "read_label_stack",
    "StackDataset",
    "random_similarity_affine",
    "make_stack_train_dataset",
    "make_stack_eval_pairs",
]

TIFF_SUFFIXES = (".tif", ".tiff")
_EXPECTED = "expected a multi-page TIFF stack [frames, height, width]"



def _read_tiff(path: str | os.PathLike) -> tuple[Path, np.ndarray]:
    """Read a TIFF as a ``[F, H, W]`` array, with a ``DataError`` for anything else."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if not path.exists():
        raise DataError(f"{path}: file not found ({_EXPECTED}).")
    if not path.is_file():
        raise DataError(f"{path}: is a folder; {_EXPECTED}.")
    try:
        data = np.asarray(tifffile.imread(path))
    except Exception as err:  # tifffile raises many types for damaged files
        raise DataError(
            f"{path}: cannot be read as TIFF ({type(err).__name__}: {err}); {_EXPECTED}."
        ) from err
    if data.size == 0:
        raise DataError(f"{path}: holds no pixel data (damaged or empty TIFF); {_EXPECTED}.")
    # ImageJ hyperstacks may carry singleton axes (e.g. one channel) ahead of the frame axis.
    while data.ndim > 3 and 1 in data.shape[:-2]:
        data = np.squeeze(data, axis=data.shape[:-2].index(1))
    if data.ndim != 3:
        hint = " (a single image: save it as a stack of frames)" if data.ndim == 2 else ""
        raise DataError(
            f"{path}: {_EXPECTED} of one grey channel; received shape {shape_text(data.shape)}"
            f"{hint}."
        )
    return path, data


def read_stack(path: str | os.PathLike) -> np.ndarray:
    """Read an image stack as float32 ``[F, H, W]`` divided by ``2**bitdepth``.

    The bit depth is 8, 16 or 32 for 1-, 2- or 4-byte integer pixels (so uint8 255 becomes
    255/256); float stacks are returned unscaled.

    Raises:
        DataError: the file is missing, unreadable, not 3-D, of an unsupported dtype (bool, 64-bit
            integers, complex) or, for floats, holds NaN or Inf.
    """
    path, data = _read_tiff(path)
    if data.dtype.kind in "ui" and data.dtype.itemsize in (1, 2, 4):
        return (data.astype(np.float64) / 2.0 ** (8 * data.dtype.itemsize)).astype(np.float32)
    if data.dtype.kind == "f":
        data = data.astype(np.float32)
        if not np.all(np.isfinite(data)):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            raise DataError(
                f"{path}: holds {bad} NaN or Inf value(s); expected finite intensities."
            )
        return data
    raise DataError(
        f"{path}: pixel type {data.dtype} is not supported; expected 8-, 16- or 32-bit integer "
        "or float intensities."
    )


def read_label_stack(path: str | os.PathLike) -> np.ndarray:
    """Read a class-label stack as int32 ``[F, H, W]`` (0 = background).

    Raises:
        DataError: the file is missing, unreadable or not 3-D, or its values are not
            non-negative integers.
    """
    path, data = _read_tiff(path)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise DataError(
                f"{path}: a class-label stack must hold whole numbers (one class per pixel); "
                "found fractional, NaN or Inf values."
            )
    elif data.dtype.kind not in "uib":
        raise DataError(
            f"{path}: pixel type {data.dtype} is not supported; expected integer class labels."
        )
    low, high = data.min(), data.max()
    if low < 0 or high > np.iinfo(np.int32).max:
        raise DataError(
            f"{path}: class labels must lie in [0, 2**31); found values in [{low}, {high}]."
        )
    return data.astype(np.int32)


def _find_stack(folder: Path, name: str) -> Path | None:
    for suffix in (*TIFF_SUFFIXES, *(s.upper() for s in TIFF_SUFFIXES)):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    return None


def _check_folder(folder: Path, role: str) -> None:
    if not folder.exists():
        raise DataError(f"{folder}: {role} folder not found (expected a folder of TIFF stacks).")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a {role} folder of TIFF stacks, found a file.")


class StackDataset:
    """Image and class-label stacks of several sequences, read into memory.

    Sequences are paired by file stem (``images/01.tif`` with ``labels-class/01.tif``; ``.tif``
    or ``.tiff``) and held in sorted name order; their index in :attr:`names` is the
    ``case_index`` of the batches. Every sequence must have frames of one common ``(H, W)``.

    Args:
        image_dir: folder of image stacks.
        label_dir: folder of class-label stacks.
        sequences: the stems to use (e.g. ``["01"]`` for training, ``["02"]`` for validation),
            or ``None`` for every TIFF in ``image_dir`` (hidden files skipped).
        num_classes: ``K``, the number of classes including background. ``None`` takes the
            largest label found plus one; pass it explicitly when splits are built separately,
            so that a class missing from one split does not change ``K``.

    Attributes:
        names: sequence names, sorted.
        image_files, label_files: the stack paths, in the order of :attr:`names`.
        images: float32 ``[F, H, W]`` per sequence (see :func:`read_stack`).
        labels: class maps ``[F, H, W]`` per sequence (uint8 when ``K <= 256``, else int32).
        num_frames: frames per sequence.
        shape: the frame shape ``(H, W)``.
        num_classes: ``K``.

    Raises:
        DataError: a folder is missing or has no stack, a requested sequence or its label stack
            is missing, a file is unreadable or not 3-D, an image and its label stack differ in
            shape (both files named), frame shapes differ between sequences, or a label is
            ``>= num_classes``.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        label_dir: str | os.PathLike,
        sequences: Sequence[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        self.image_dir = Path(os.path.expanduser(os.fspath(image_dir)))
        self.label_dir = Path(os.path.expanduser(os.fspath(label_dir)))
        _check_folder(self.image_dir, "image")
        _check_folder(self.label_dir, "label")
        available = sorted(
            Path(n).stem
            for n in os.listdir(self.image_dir)
            if n.lower().endswith(TIFF_SUFFIXES) and not n.startswith(".")
        )
        if sequences is None:
            if not available:
                raise DataError(f"{self.image_dir}: no TIFF stack (.tif or .tiff) in this folder.")
            names = available
        else:
            if isinstance(sequences, str):
                sequences = [sequences]
            names = sorted({str(s) for s in sequences})
            if not names:
                raise DataError(f"{self.image_dir}: no sequence requested (sequences is empty).")
        self.names: list[str] = names
        self.image_files: list[Path] = []
        self.label_files: list[Path] = []
        for name in names:
            image_file = _find_stack(self.image_dir, name)
            if image_file is None:
                raise DataError(
                    f"{self.image_dir}: no image stack for sequence {name!r} (expected {name}.tif "
                    f"or {name}.tiff); the folder has {', '.join(available) or 'no stacks'}."
                )
            label_file = _find_stack(self.label_dir, name)
            if label_file is None:
                raise DataError(
                    f"{self.label_dir}: no label stack for sequence {name!r} (expected {name}.tif "
                    f"or {name}.tiff, the partner of {image_file})."
                )
            self.image_files.append(image_file)
            self.label_files.append(label_file)

        self.images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for image_file, label_file in zip(self.image_files, self.label_files, strict=True):
            image, label = read_stack(image_file), read_label_stack(label_file)
            if image.shape != label.shape:
                raise DataError(
                    f"{label_file}: label stack shape {shape_text(label.shape)} differs from the "
                    f"image stack shape {shape_text(image.shape)} of {image_file}; expected one "
                    "class label per image pixel of every frame."
                )
            if self.images and image.shape[1:] != self.images[0].shape[1:]:
                raise DataError(
                    f"{image_file}: frame shape {shape_text(image.shape[1:])} differs from "
                    f"{shape_text(self.images[0].shape[1:])} of {self.image_files[0]}; every "
                    "sequence of a dataset must have the same frame shape."
                )
            self.images.append(image)
            labels.append(label)
        largest = max(int(label.max()) for label in labels)
        if num_classes is None:
            num_classes = max(2, largest + 1)
        elif int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2; received num_classes={num_classes}.")
        self.num_classes = int(num_classes)
        for label_file, label in zip(self.label_files, labels, strict=True):
            if int(label.max()) >= self.num_classes:
                raise DataError(
                    f"{label_file}: holds class {int(label.max())} but num_classes="
                    f"{self.num_classes} (classes 0..{self.num_classes - 1})."
                )
        compact = np.uint8 if self.num_classes <= 256 else np.int32
        self.labels: list[np.ndarray] = [label.astype(compact) for label in labels]
        self.num_frames: list[int] = [int(image.shape[0]) for image in self.images]
        self.shape: tuple[int, int] = tuple(int(s) for s in self.images[0].shape[1:])

    @property
    def num_sequences(self) -> int:
        """Number of sequences."""
        return len(self.names)

    def _frame_range(self, frames: Sequence[int] | None, sequence: int) -> tuple[int, int]:
        count = self.num_frames[sequence]
        if frames is None:
            return 0, count
        start, stop = (int(f) for f in frames)
        if not 0 <= start < stop <= count:
            raise DataError(
                f"{self.image_files[sequence]}: frame range ({start}, {stop}) is outside the "
                f"stack's {count} frames; expected 0 <= start < stop <= {count}."
            )
        return start, stop

    def pairs(
        self, mode: str = "consecutive", frames: Sequence[int] | None = None, max_offset: int = 2
    ) -> np.ndarray:
        """Every registration pair of a kind, as rows ``(sequence, moving_frame, fixed_frame)``.

        Args:
            mode: ``"consecutive"``: ``(t, t+1)`` for validation and testing; ``"random"``: every
                ordered pair ``(t, t')`` with ``1 <= |t - t'| <= max_offset``, the set from which
                :meth:`sample_pairs` draws.
            frames: ``(start, stop)``, half-open: only pairs with both frames in
                ``start <= t < stop`` (e.g. PhC-U373's test range ``(60, 115)``), applied to every
                sequence; ``None`` for all frames.
            max_offset: the largest frame distance in ``"random"`` mode.

        Returns:
            int64 ``[N, 3]``, ordered by sequence, then moving frame, then fixed frame.
        """
        if mode not in ("consecutive", "random"):
            raise ValueError(f"mode must be 'consecutive' or 'random'; received mode={mode!r}.")
        offsets = [1] if mode == "consecutive" else _offsets(max_offset)
        rows = []
        for sequence in range(self.num_sequences):
            start, stop = self._frame_range(frames, sequence)
            for t in range(start, stop):
                rows.extend((sequence, t, t + d) for d in sorted(offsets) if start <= t + d < stop)
        return np.asarray(rows, np.int64).reshape(-1, 3)

    def sample_pairs(self, count: int, seed: int, step: int, max_offset: int = 2) -> np.ndarray:
        """The training pairs of one step: a pure function of ``(seed, step)``.

        Each pair takes a moving frame uniformly over all frames of all sequences, then a fixed
        frame of the same sequence uniformly among those within ``+-max_offset`` frames of it,
        before or after, never the frame itself.

        Returns:
            int64 ``[count, 3]`` rows ``(sequence, moving_frame, fixed_frame)``.

        Raises:
            ValueError: ``count`` < 1, or a negative ``seed`` or ``step``.
            DataError: no sequence has two frames.
        """
        if int(count) < 1:
            raise ValueError(f"count must be >= 1; received count={count}.")
        if int(seed) < 0 or int(step) < 0:
            raise ValueError(f"seed and step must be >= 0; received seed={seed}, step={step}.")
        offsets = np.asarray(_offsets(max_offset))
        usable = [s for s in range(self.num_sequences) if self.num_frames[s] >= 2]
        if not usable:
            raise DataError(
                f"{self.image_dir}: every sequence has a single frame; training pairs need two."
            )
        cumulative = np.cumsum([self.num_frames[s] for s in usable])
        rng = np.random.default_rng([int(seed), int(step)])
        rows = np.empty((int(count), 3), np.int64)
        for i in range(int(count)):
            flat = int(rng.integers(cumulative[-1]))
            position = int(np.searchsorted(cumulative, flat, side="right"))
            sequence = usable[position]
            moving = flat - (int(cumulative[position - 1]) if position else 0)
            valid = offsets[
                (moving + offsets >= 0) & (moving + offsets < self.num_frames[sequence])
            ]
            rows[i] = (sequence, moving, moving + int(valid[rng.integers(len(valid))]))
        return rows

    def gather(self, pairs: np.ndarray) -> dict[str, np.ndarray]:
        """The images and one-hot labels of pair rows ``(sequence, moving, fixed)``.

        Returns:
            float32 ``moving_image``, ``fixed_image`` ``[B, H, W, 1]``, ``moving_label``,
            ``fixed_label`` ``[B, H, W, K]`` (one-hot), int32 ``case_index`` (the sequence
            index), ``moving_frame`` and ``fixed_frame`` ``[B]``.
        """
        pairs = np.asarray(pairs, np.int64).reshape(-1, 3)
        classes = self._classes(pairs)
        eye = np.eye(self.num_classes, dtype=np.float32)
        return {
            "moving_image": np.stack([self.images[s][m] for s, m, _ in pairs])[..., None],
            "fixed_image": np.stack([self.images[s][f] for s, _, f in pairs])[..., None],
            "moving_label": eye[classes["moving_class"]],
            "fixed_label": eye[classes["fixed_class"]],
            "case_index": pairs[:, 0].astype(np.int32),
            "moving_frame": pairs[:, 1].astype(np.int32),
            "fixed_frame": pairs[:, 2].astype(np.int32),
        }

    def _classes(self, pairs: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "moving_class": np.stack([self.labels[s][m] for s, m, _ in pairs]),
            "fixed_class": np.stack([self.labels[s][f] for s, _, f in pairs]),
        }


def _offsets(max_offset: int) -> list[int]:
    if int(max_offset) < 1:
        raise ValueError(f"max_offset must be >= 1; received max_offset={max_offset}.")
    m = int(max_offset)
    return [d for d in range(-m, m + 1) if d != 0]


def random_similarity_affine(
    batch: int,
    shape: Sequence[int],
    rotation: float = 180.0,
    scale: Sequence[float] = (0.8, 1.2),
    flip: bool = True,
    seed: Any = (0, 0),
) -> tf.Tensor:
    """Random 2-D rotations, isotropic zooms and flips about the image centre (DeepSim's draw).

    Per transform: an angle ``U(-rotation, rotation)`` degrees, a zoom ``s ~ U(*scale)`` (the
    content appears ``s`` times larger), and, with ``flip``, each axis mirrored with probability
    1/2. The result maps output voxel indices to input voxel indices, as
    :func:`labelreg.data.augment.apply_affine` expects: ``x_in = c + R F (x_out - c) / s`` with
    ``c`` the centre of the ``shape`` grid. The draw is stateless: the same ``seed`` (an int
    ``[2]``, e.g. :func:`labelreg.data.augment.step_seed`) gives the same transforms.

    Returns:
        float32 ``[batch, 2, 3]``.
    """
    from labelreg._tf import tf

    if float(rotation) < 0:
        raise ValueError(f"rotation must be >= 0 degrees; received rotation={rotation}.")
    low, high = (float(s) for s in scale)
    if not 0.0 < low <= high:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high; received scale={scale}.")
    draws = tf.random.stateless_uniform([int(batch), 4], tf.cast(seed, tf.int64), dtype=tf.float64)
    angle = (2.0 * draws[:, 0] - 1.0) * np.deg2rad(float(rotation))
    zoom = low + (high - low) * draws[:, 1]
    one = tf.ones_like(draws[:, 2:])
    signs = tf.where(draws[:, 2:] < 0.5, -one, one) if flip else one
    cos, sin = tf.cos(angle), tf.sin(angle)
    # The rows of R @ diag(flip_row, flip_col), then divided by the zoom.
    matrix = (
        tf.stack(
            [
                tf.stack([cos * signs[:, 0], -sin * signs[:, 1]], axis=-1),
                tf.stack([sin * signs[:, 0], cos * signs[:, 1]], axis=-1),
            ],
            axis=1,
        )
        / zoom[:, None, None]
    )
    centre = tf.constant([(int(s) - 1) / 2.0 for s in shape], tf.float64)
    translation = centre[None] - tf.einsum("bij,j->bi", matrix, centre)
    return tf.cast(tf.concat([matrix, translation[..., None]], axis=-1), tf.float32)


def make_stack_train_dataset(
    dataset: StackDataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    max_offset: int = 2,
    augment: bool = True,
    rotation: float = 180.0,
    scale: Sequence[float] = (0.8, 1.2),
    flip: bool = True,
    stop_step: int | None = None,
) -> tf.data.Dataset:
    """The training stream of random nearby-frame pairs, optionally augmented.

    Element ``k`` is the batch of step ``start_step + k``, a pure function of ``(seed, step)``:
    the pairs come from :meth:`StackDataset.sample_pairs` and the augmentation from stateless
    draws seeded with :func:`labelreg.data.augment.step_seed`, so a run resumed at step ``k``
    sees exactly the batches an uninterrupted run saw from step ``k``.

    Augmentation (DeepSim's, drawn per pair rather than per batch): one
    :func:`random_similarity_affine` per pair applied identically to the moving and fixed image
    and labels with :func:`labelreg.data.augment.apply_affine` (linear, zero outside). The one-hot
    labels are interpolated linearly and then made one-hot again by arg-max over the ``K``
    channels, so each pixel takes its majority class; pixels mapped from outside the frame (all
    channels 0) become background.

    Args:
        dataset: the training sequences.
        batch_size: pairs per batch.
        seed: the sampling and augmentation seed, ``>= 0``.
        start_step: the step of the first element.
        max_offset: the largest frame distance of a pair.
        augment: apply the random affine.
        rotation: largest rotation angle in degrees.
        scale: ``(low, high)`` of the isotropic zoom.
        flip: mirror each axis with probability 1/2.
        stop_step: the step after the last element (``None``: endless; see
            :func:`labelreg.data.make_train_dataset`).

    Returns:
        A ``tf.data.Dataset`` of dicts: float32 ``moving_image``, ``fixed_image``
        ``[B, H, W, 1]``, ``moving_label``, ``fixed_label`` ``[B, H, W, K]`` (one-hot, background
        included), int32 ``case_index`` (the sequence index in ``dataset.names``),
        ``moving_frame``, ``fixed_frame`` ``[B]`` (frames before augmentation), and int64
        ``step [B]``.
    """
    from labelreg._tf import tf
    from labelreg.data.augment import apply_affine, step_seed
    from labelreg.ops import xla_disabled

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; received batch_size={batch_size}.")
    if int(start_step) < 0:
        raise ValueError(f"start_step must be >= 0; received start_step={start_step}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0; received seed={seed}.")
    _offsets(max_offset)
    batch, classes, (height, width) = int(batch_size), dataset.num_classes, dataset.shape
    if augment:  # validate the options now rather than inside tf.data
        random_similarity_affine(1, dataset.shape, rotation, scale, flip)

    def generate() -> Iterator[dict[str, np.ndarray]]:
        step = int(start_step)
        while stop_step is None or step < stop_step:
            pairs = dataset.sample_pairs(batch, int(seed), step, max_offset)
            yield {
                "moving_image": np.stack([dataset.images[s][m] for s, m, _ in pairs])[..., None],
                "fixed_image": np.stack([dataset.images[s][f] for s, _, f in pairs])[..., None],
                **{k: v.astype(np.int32) for k, v in dataset._classes(pairs).items()},
                "case_index": pairs[:, 0].astype(np.int32),
                "moving_frame": pairs[:, 1].astype(np.int32),
                "fixed_frame": pairs[:, 2].astype(np.int32),
                "step": np.full([batch], step, np.int64),
            }
            step += 1

    image_spec = tf.TensorSpec([batch, height, width, 1], tf.float32)
    class_spec = tf.TensorSpec([batch, height, width], tf.int32)
    index_spec = tf.TensorSpec([batch], tf.int32)
    signature = {
        "moving_image": image_spec,
        "fixed_image": image_spec,
        "moving_class": class_spec,
        "fixed_class": class_spec,
        "case_index": index_spec,
        "moving_frame": index_spec,
        "fixed_frame": index_spec,
        "step": tf.TensorSpec([batch], tf.int64),
    }

    def finish(element: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = dict(element)
        moving = tf.one_hot(out.pop("moving_class"), classes, dtype=tf.float32)
        fixed = tf.one_hot(out.pop("fixed_class"), classes, dtype=tf.float32)
        if augment:
            theta = random_similarity_affine(
                batch, (height, width), rotation, scale, flip, seed=step_seed(seed, out["step"][0])
            )
            images = tf.concat([out["moving_image"], out["fixed_image"]], axis=-1)
            images, labels = apply_affine(images, tf.concat([moving, fixed], axis=-1), theta)
            out["moving_image"], out["fixed_image"] = images[..., :1], images[..., 1:]
            moving = tf.one_hot(tf.argmax(labels[..., :classes], -1), classes, dtype=tf.float32)
            fixed = tf.one_hot(tf.argmax(labels[..., classes:], -1), classes, dtype=tf.float32)
        out["moving_label"], out["fixed_label"] = moving, fixed
        return out

    stream = tf.data.Dataset.from_generator(generate, output_signature=signature)
    # tf.data runs its functions uncompiled; tracing the warp without XLA keeps it valid there.
    # ``finish`` branches on Python values only: without AutoGraph's rewriting of every nested
    # call (the affine resampling, the warp) the map traces in a fifth of the time.
    with xla_disabled():
        stream = stream.map(tf.autograph.experimental.do_not_convert(finish),
                            num_parallel_calls=1, deterministic=True)
    return stream.prefetch(1)


def make_stack_eval_pairs(
    dataset: StackDataset, frames: Sequence[int] | None = None, batch_size: int | None = 1
) -> Iterator[dict[str, np.ndarray]]:
    """The consecutive pairs ``(t, t+1)`` of every sequence, in order, as NumPy batches.

    Args:
        dataset: the validation or test sequences.
        frames: ``(start, stop)`` half-open frame range (see :meth:`StackDataset.pairs`), or
            ``None`` for all frames.
        batch_size: pairs per batch (the last may be smaller), or ``None`` for one batch of all.

    Yields:
        Dicts like :func:`make_stack_train_dataset`'s elements, without augmentation and without
        ``step``, plus ``case_name`` (``str [B]``, the sequence names).
    """
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 or None; received batch_size={batch_size}.")
    pairs = dataset.pairs("consecutive", frames)
    size = len(pairs) if batch_size is None else int(batch_size)
    for first in range(0, len(pairs), max(size, 1)):
        chunk = pairs[first : first + size]
        out = dataset.gather(chunk)
        out["case_name"] = np.asarray([dataset.names[s] for s in chunk[:, 0]])
        yield out


def open_stacks(data: Mapping[str, Any], key: str, num_classes: int | None = None
                ) -> StackDataset | None:
    """The stacks named by a config's ``[Data] <key>`` (``train_sequences``,
    ``valid_sequences``) in ``<dir_stacks>/images`` and ``labels-class``, generating the synthetic
    demo stacks first when ``synthetic_stacks`` is set; ``None`` when no names are given.

    Args:
        data: the ``[Data]`` section (keys ``dir_stacks``, ``synthetic_stacks``,
            ``train_sequences``, ``valid_sequences`` and ``key``).
        key: the key listing the sequence names.
        num_classes: ``K`` (pass the training stacks' so that every split one-hot encodes alike).
    """
    names = tuple(data[key])
    if not names:
        return None
    folder = Path(data["dir_stacks"])
    if data["synthetic_stacks"]:
        from labelreg.data.synthetic_stacks import write_synthetic_stacks

        wanted = sorted({*data["train_sequences"], *data["valid_sequences"]})
        write_synthetic_stacks(folder, sequences=tuple(wanted), frames=data["synthetic_frames"],
                               size=tuple(data["synthetic_size"]),
                               motion=data["synthetic_motion"])
    from labelreg.data.synthetic_stacks import IMAGE_FOLDER, LABEL_FOLDER

    return StackDataset(folder / IMAGE_FOLDER, folder / LABEL_FOLDER, sequences=names,
                        num_classes=num_classes)


def configured_train_dataset(data: Mapping[str, Any], stacks: StackDataset, batch_size: int,
                             seed: int, start_step: int = 0, stop_step: int | None = None
                             ) -> Any:
    """:func:`make_stack_train_dataset` with the pairing and augmentation of a config's
    ``[Data]`` section (``max_offset``, ``rotation``, ``scale_range``, ``flip``)."""
    return make_stack_train_dataset(
        stacks, int(batch_size), seed, start_step=start_step, stop_step=stop_step,
        max_offset=data["max_offset"],
        rotation=data["rotation"], scale=tuple(data["scale_range"]), flip=data["flip"])
