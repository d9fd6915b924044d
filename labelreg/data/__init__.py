"""Data: NIfTI folders, label-reg's pair sampling, affine augmentation, tf.data, demo data.

- :mod:`labelreg.data.nifti`: :class:`NiftiReader` (one folder, label-reg's ``DataReader``) and
  :class:`PairedDataset` (moving/fixed images and labels paired by file name).
- :mod:`labelreg.data.sampling`: :class:`PairSampler`, the two-stage sampling as a pure function
  of ``(seed, step)``.
- :mod:`labelreg.data.augment`: random affine augmentation in TensorFlow ops.
- :mod:`labelreg.data.pipeline`: :func:`make_train_dataset`, :func:`make_eval_batches` and input
  timing helpers.
- :mod:`labelreg.data.demo`: :func:`generate_demo_data`, a synthetic MR/US dataset with a known
  deformation.
- :mod:`labelreg.data.stacks`: 2-D TIFF stacks of microscopy sequences (DeepSim's layout),
  frame pairs and their augmented ``tf.data`` stream; :mod:`labelreg.data.synthetic_stacks`
  generates such stacks.

Names are imported on first use, so reading NIfTI files does not import TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "NiftiReader": "nifti",
    "PairedDataset": "nifti",
    "case_name": "nifti",
    "is_nifti": "nifti",
    "PairSampler": "sampling",
    "step_seed": "augment",
    "apply_affine": "augment",
    "augment_batch": "augment",
    "normalise_intensity": "pipeline",
    "CaseCache": "pipeline",
    "make_train_dataset": "pipeline",
    "make_eval_batches": "pipeline",
    "TimedIterator": "pipeline",
    "measure_input_share": "pipeline",
    "DemoCase": "demo",
    "make_demo_case": "demo",
    "generate_demo_data": "demo",
    "demo_dirs": "demo",
    "binary_dice": "demo",
    "read_stack": "stacks",
    "read_label_stack": "stacks",
    "StackDataset": "stacks",
    "random_similarity_affine": "stacks",
    "make_stack_train_dataset": "stacks",
    "make_stack_eval_pairs": "stacks",
    "write_synthetic_stacks": "synthetic_stacks",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        module = importlib.import_module(f"labelreg.data.{_NAMES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'labelreg.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
