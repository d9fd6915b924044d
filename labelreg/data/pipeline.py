"""tf.data input pipelines for training and ordered batches for validation and inference.

Training (:func:`make_train_dataset`): every file is read once, in parallel threads, into memory
(registration volumes are small: the 108-case MR/US set is about 0.5 GB as float32 images plus
one byte per label voxel); each step then gathers the minibatch chosen by
:class:`labelreg.data.sampling.PairSampler`, which depends only on ``(seed, step)``. The dataset
is infinite, deterministic for a seed, resumable at any step, and prefetched.

Intensity normalisation (``normalise=True``, ``[Data] normalise``): each image is mapped to
[0, 1] by its own minimum and maximum; a constant image becomes all zeros. Labels are not
normalised; they must already lie in [0, 1].
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from labelreg._tf import tf
from labelreg.data.nifti import PairedDataset
from labelreg.data.sampling import PairSampler
from labelreg.errors import DataError

__all__ = [
    "normalise_intensity",
    "read_case",
    "CaseCache",
    "make_train_dataset",
    "make_eval_batches",
    "TimedIterator",
    "measure_input_share",
]


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """Min-max normalise one image to [0, 1] (float32); a constant image becomes zeros.

    Intensities whose range exceeds float32 (values near +-3.4e38) are scaled without
    overflowing, so the result stays finite.

    Raises:
        ValueError: for an empty or non-real (complex, text) array, or a NaN or Inf value.
    """
    array = np.asarray(image)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"image must hold real numbers to be normalised; received dtype {array.dtype}."
        )
    if array.size == 0:
        raise ValueError(f"image is empty (shape {array.shape}); expected at least one voxel.")
    with np.errstate(over="ignore"):
        image = array.astype(np.float32, copy=False)
    low, high = float(image.min()), float(image.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if not bad:
            raise ValueError(
                f"image holds values beyond the float32 range (up to "
                f"{float(np.max(np.abs(array))):g}); intensities must fit in float32."
            )
        raise ValueError(
            f"image contains {bad} NaN or Inf value(s) out of {image.size} (shape "
            f"{image.shape}); intensities must be finite to be normalised."
        )
    if high <= low:
        return np.zeros_like(image)
    if high - low > float(np.finfo(np.float32).max):
        # The range overflows float32: halve first, which is exact in binary floating point,
        # so the result is the same as the direct formula would give without the overflow.
        half = np.float32(0.5)
        low32, high32 = np.float32(low), np.float32(high)
        return ((image * half - low32 * half) / (high32 * half - low32 * half)).astype(np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def _check_label_range(label: np.ndarray, path: Any) -> None:
    low, high = float(label.min()), float(label.max())
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{path}: label values must lie in [0, 1] (1 = inside); found values in "
            f"[{low:g}, {high:g}]. Rescale the labels (e.g. a 0/255 mask to 0/1)."
        )


def _warn_empty_labels(paired: PairedDataset, loaded: dict[tuple[str, int], np.ndarray]) -> None:
    """One warning listing every label volume without a voxel inside (valid, but no signal)."""
    empty = [
        f"{paired.file(role, case)} (label {j})"
        for (role, case), data in loaded.items() if role.endswith("label")
        for j in range(data.shape[-1]) if not np.any(data[..., j])
    ]
    if empty:
        warnings.warn(
            f"{len(empty)} label volume(s) are empty (all zero): {', '.join(empty[:6])}"
            f"{', ...' if len(empty) > 6 else ''}. Training goes on; an empty label gives no "
            "alignment signal (two empty labels agree with Dice 1; its centroid distance is NaN).",
            stacklevel=3,
        )


def _compact_label(label: np.ndarray) -> np.ndarray:
    # Binary labels are held as uint8 (4x less memory); soft labels stay float32.
    if np.all((label == 0.0) | (label == 1.0)):
        return label.astype(np.uint8)
    return label.astype(np.float32)


def read_case(paired: PairedDataset, role: str, case: int, normalise: bool = True,
              cache: CaseCache | None = None) -> np.ndarray:
    """One volume of one case, as training, validation and evaluation all read it.

    Args:
        paired: the dataset.
        role: ``moving_image``, ``fixed_image``, ``moving_label`` or ``fixed_label``.
        case: index of the case.
        normalise: min-max normalise an image to [0, 1] (only when read from file).
        cache: ``paired`` already in memory (a :class:`CaseCache` of it, whose own
            normalisation then applies): nothing is read from disk.

    Returns:
        An image ``[*S]`` or the labels ``[*S, L]``, float32.

    Raises:
        DataError: the file is unreadable, holds NaN/Inf, or a label lies outside [0, 1].
    """
    if cache is not None:
        array = getattr(cache, f"{role}s")[case]
        return array if role.endswith("image") else np.asarray(array, np.float32)
    data = paired.read(role, case)  # [*S, L]
    if role.endswith("image"):
        return normalise_intensity(data[..., 0]) if normalise else data[..., 0]
    _check_label_range(data, paired.file(role, case))
    return data


class CaseCache:
    """Every image and label of a :class:`PairedDataset`, read once into memory.

    Args:
        paired: the dataset.
        normalise: min-max normalise each image to [0, 1].
        num_workers: threads reading files in parallel (``None``: up to 8, one per CPU).

    Raises:
        DataError: a file cannot be read, holds NaN/Inf, or a label lies outside [0, 1].

    A label volume without any voxel inside is valid (two empty labels agree) and is reported
    with one ``UserWarning`` listing the files.
    """

    def __init__(
        self, paired: PairedDataset, normalise: bool = True, num_workers: int | None = None
    ) -> None:
        self.paired = paired
        self.normalise = bool(normalise)
        roles = ["moving_image", "fixed_image"]
        if paired.has_labels:
            roles += ["moving_label", "fixed_label"]
        tasks = [(role, case) for case in range(paired.num_cases) for role in roles]
        workers = num_workers or min(8, os.cpu_count() or 1)
        # nibabel's gzip decompression releases the GIL, so threads read files in parallel.
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            arrays = list(pool.map(lambda task: self._load(*task), tasks))
        loaded = dict(zip(tasks, arrays, strict=True))
        if paired.has_labels:
            _warn_empty_labels(paired, loaded)
        n = paired.num_cases
        self.moving_images = np.stack([loaded["moving_image", c] for c in range(n)])
        self.fixed_images = np.stack([loaded["fixed_image", c] for c in range(n)])
        self.moving_labels = [loaded["moving_label", c] for c in range(n)] if paired.has_labels \
            else None
        self.fixed_labels = [loaded["fixed_label", c] for c in range(n)] if paired.has_labels \
            else None

    def _load(self, role: str, case: int) -> np.ndarray:
        array = read_case(self.paired, role, case, self.normalise)
        return array if role.endswith("image") else _compact_label(array)

    @property
    def num_cases(self) -> int:
        """Number of cases."""
        return self.paired.num_cases

    def batch(self, cases: Iterable[int], labels: Iterable[int] | None = None,
              segmentation_labels: bool = False) -> dict[str, Any]:
        """Stack cases (and one label index per case) into a batch.

        Args:
            cases: case indices.
            labels: one label index per case (``None``: label 0).
            segmentation_labels: also give label 0 of every case, whatever ``labels`` says
                (the target of a network's segmentations).

        Returns:
            A dict of float32 ``moving_image [B, *S_mov, 1]``, ``fixed_image [B, *S_fix, 1]``,
            ``moving_label`` / ``fixed_label`` (same shapes, only with labels),
            ``moving_seg_label`` / ``fixed_seg_label`` (same shapes, with labels and
            ``segmentation_labels``), and int32 ``case_index [B]``, ``label_index [B]`` (zeros
            without labels).
        """
        cases = np.asarray(list(cases), dtype=np.int64)
        labels = np.zeros_like(cases) if labels is None else np.asarray(list(labels), np.int64)
        out = {
            "moving_image": self.moving_images[cases][..., None],
            "fixed_image": self.fixed_images[cases][..., None],
        }
        if self.moving_labels is not None and self.fixed_labels is not None:
            out["moving_label"] = np.stack(
                [self.moving_labels[c][..., j] for c, j in zip(cases, labels, strict=True)]
            ).astype(np.float32)[..., None]
            out["fixed_label"] = np.stack(
                [self.fixed_labels[c][..., j] for c, j in zip(cases, labels, strict=True)]
            ).astype(np.float32)[..., None]
            if segmentation_labels:
                for role, stored in (("moving", self.moving_labels), ("fixed", self.fixed_labels)):
                    out[f"{role}_seg_label"] = np.stack(
                        [stored[c][..., 0] for c in cases]).astype(np.float32)[..., None]
        out["case_index"] = cases.astype(np.int32)
        out["label_index"] = labels.astype(np.int32)
        return out


def _signature(paired: PairedDataset, batch: int, segmentation_labels: bool = False
               ) -> dict[str, tf.TensorSpec]:
    spec = {
        "moving_image": tf.TensorSpec([batch, *paired.moving_shape, 1], tf.float32),
        "fixed_image": tf.TensorSpec([batch, *paired.fixed_shape, 1], tf.float32),
    }
    if paired.has_labels:
        spec["moving_label"] = tf.TensorSpec([batch, *paired.moving_shape, 1], tf.float32)
        spec["fixed_label"] = tf.TensorSpec([batch, *paired.fixed_shape, 1], tf.float32)
        if segmentation_labels:
            spec["moving_seg_label"] = spec["moving_label"]
            spec["fixed_seg_label"] = spec["fixed_label"]
    spec["case_index"] = tf.TensorSpec([batch], tf.int32)
    spec["label_index"] = tf.TensorSpec([batch], tf.int32)
    spec["step"] = tf.TensorSpec([], tf.int64)
    return spec


def make_train_dataset(
    paired: PairedDataset,
    minibatch_size: int,
    seed: int,
    start_step: int = 0,
    normalise: bool = True,
    num_workers: int | None = None,
    cache: CaseCache | None = None,
    segmentation_labels: bool = False,
    label0_probability: float | None = None,
    stop_step: int | None = None,
) -> tf.data.Dataset:
    """The training stream of label-reg's two-stage sampling.

    Element ``k`` (counting from 0) is the minibatch of training step ``start_step + k``: the
    cases of that step and one random label index per pair, the same for moving and fixed (see
    :class:`labelreg.data.sampling.PairSampler`). So a run resumed with ``start_step=k`` sees
    exactly the batches an uninterrupted run saw from step ``k``.

    Args:
        paired: the training pairs.
        minibatch_size: pairs per batch (``[Train] minibatch_size``).
        seed: the sampling seed (``[Train] seed``).
        start_step: the step of the first element.
        normalise: min-max normalise each image to [0, 1] (constant images become zeros).
        num_workers: threads reading the files (``None``: up to 8).
        cache: ``paired`` already read (e.g. to check the data before a run folder is made);
            ``None`` reads it here.
        segmentation_labels: also yield ``moving_seg_label`` / ``fixed_seg_label``, label 0
            of each pair (see :meth:`CaseCache.batch`).
        label0_probability: how often label 0 is the sampled label (``None``: uniform over a
            case's labels; :class:`~labelreg.data.sampling.PairSampler`).
        stop_step: the step after the last element (``None``: endless), so that a stream
            ends with its run and the generator makes no batch that nothing reads.

    Returns:
        A prefetched ``tf.data.Dataset`` of dicts: float32 ``moving_image [B, *S_mov,
        1]``, ``fixed_image [B, *S_fix, 1]``, ``moving_label [B, *S_mov, 1]``, ``fixed_label [B,
        *S_fix, 1]`` (the labels only when the dataset has them; with ``segmentation_labels``
        also ``moving_seg_label``, ``fixed_seg_label``), int32 ``case_index [B]`` and
        ``label_index [B]``, and int64 scalar ``step``. Augmentation is not applied here; apply
        :func:`labelreg.data.augment.augment_batch` in the train step.

    Raises:
        DataError: ``minibatch_size`` exceeds the number of cases (raised before any file is
            read), or a file is unreadable or invalid.
    """
    if int(start_step) < 0:
        raise ValueError(f"start_step must be >= 0; received start_step={start_step}.")
    sampler = PairSampler(paired.num_labels, minibatch_size, seed,
                          label0_probability=label0_probability)
    if cache is None:
        cache = CaseCache(paired, normalise=normalise, num_workers=num_workers)

    def generate() -> Iterator[dict[str, Any]]:
        for step, cases, labels in sampler.iterate(start_step, stop_step):
            batch = cache.batch(cases, labels if paired.has_labels else None,
                                segmentation_labels=segmentation_labels)
            batch["step"] = np.int64(step)
            yield batch

    dataset = tf.data.Dataset.from_generator(
        generate,
        output_signature=_signature(paired, sampler.minibatch_size,
                                    segmentation_labels and paired.has_labels),
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_batches(
    paired: PairedDataset,
    batch_size: int,
    normalise: bool = True,
    label_index: int | None = None,
    cache: CaseCache | None = None,
) -> Iterator[dict[str, Any]]:
    """Every case, and every label of every case, in order, in batches.

    The items are the pairs ``(case, label)`` for case ``0..N-1`` and, per case, label
    ``0..L-1`` (or only ``label_index`` when given; a dataset without labels gives one item per
    case). Files are read once, case by case, so memory holds one case at a time.

    Args:
        paired: the validation or test pairs.
        batch_size: items per batch; the last batch may be smaller.
        normalise: min-max normalise each image to [0, 1].
        label_index: only this label of each case (e.g. 0, the gland), or ``None`` for all.
        cache: ``paired`` already in memory (a :class:`CaseCache` of it, whose own
            normalisation then applies): nothing is read from disk.

    Yields:
        Dicts of NumPy arrays like :func:`make_train_dataset`'s elements (without ``step``),
        plus ``case_name``: the case names (``str [B]``).

    Raises:
        ValueError: ``batch_size`` < 1.
        DataError: a case lacks ``label_index``, or a file is unreadable or invalid.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; received batch_size={batch_size}.")

    def read(role: str, case: int) -> np.ndarray:
        return read_case(paired, role, case, normalise, cache)

    def items() -> Iterator[dict[str, Any]]:
        for case in range(paired.num_cases):
            moving, fixed = read("moving_image", case), read("fixed_image", case)
            item = {"moving_image": moving, "fixed_image": fixed, "case_index": case,
                    "case_name": paired.names[case]}
            if not paired.has_labels:
                yield {**item, "label_index": 0}
                continue
            moving_labels, fixed_labels = read("moving_label", case), read("fixed_label", case)
            count = paired.num_labels[case]
            if label_index is not None and not 0 <= label_index < count:
                raise DataError(
                    f"{paired.file('moving_label', case)}: label index {label_index} requested "
                    f"but the case holds {count} label(s)."
                )
            wanted = range(count) if label_index is None else [label_index]
            for j in wanted:
                yield {**item, "label_index": j, "moving_label": moving_labels[..., j],
                       "fixed_label": fixed_labels[..., j]}

    def collate(group: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("moving_image", "fixed_image", "moving_label", "fixed_label"):
            if key in group[0]:
                out[key] = np.stack([g[key] for g in group]).astype(np.float32)[..., None]
        out["case_index"] = np.asarray([g["case_index"] for g in group], np.int32)
        out["label_index"] = np.asarray([g["label_index"] for g in group], np.int32)
        out["case_name"] = np.asarray([g["case_name"] for g in group])
        return out

    group: list[dict[str, Any]] = []
    for item in items():
        group.append(item)
        if len(group) == batch_size:
            yield collate(group)
            group = []
    if group:
        yield collate(group)


class TimedIterator:
    """Wraps an iterator and accumulates the time spent waiting in ``next()``.

    Use it to measure how much of a training loop waits on input::

        batches = TimedIterator(dataset)
        start = time.perf_counter()
        for _ in range(100):
            train_step(next(batches))
        share = batches.wait_seconds / (time.perf_counter() - start)

    Attributes:
        wait_seconds: total seconds spent inside ``next()``.
        count: number of items returned.
    """

    def __init__(self, iterable: Iterable[Any]) -> None:
        self._iterator = iter(iterable)
        self.wait_seconds = 0.0
        self.count = 0

    def __iter__(self) -> TimedIterator:
        return self

    def __next__(self) -> Any:
        start = time.perf_counter()
        try:
            return next(self._iterator)
        finally:
            self.wait_seconds += time.perf_counter() - start
            self.count += 1

    def reset(self) -> None:
        """Zero the counters (e.g. after warm-up steps)."""
        self.wait_seconds = 0.0
        self.count = 0


def measure_input_share(
    batches: Iterable[Any],
    step_fn: Callable[[Any], Any],
    num_steps: int,
    warmup_steps: int = 1,
) -> dict[str, float]:
    """Run ``step_fn`` on ``num_steps`` batches and report the share of time spent on input.

    ``step_fn`` should block until its work is done (e.g. return a value read with ``.numpy()``),
    otherwise asynchronous execution hides its cost.

    Args:
        batches: an iterable of batches (e.g. a ``tf.data.Dataset``).
        step_fn: called with each batch.
        num_steps: measured steps.
        warmup_steps: steps run first and not measured (tracing, filling the prefetch buffer).

    Returns:
        ``{"steps", "total_seconds", "input_seconds", "input_share", "seconds_per_step"}``.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1; received num_steps={num_steps}.")
    timed = TimedIterator(batches)
    for _ in range(int(warmup_steps)):
        step_fn(next(timed))
    timed.reset()
    start = time.perf_counter()
    for _ in range(int(num_steps)):
        step_fn(next(timed))
    total = time.perf_counter() - start
    return {
        "steps": float(num_steps),
        "total_seconds": total,
        "input_seconds": timed.wait_seconds,
        "input_share": timed.wait_seconds / total if total > 0 else 0.0,
        "seconds_per_step": total / int(num_steps),
    }
