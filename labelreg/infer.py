"""``python inference.py config.ini`` for NIfTI pairs, as a function: :func:`infer` registers the
test pairs of ``[Inference]`` and writes the results (see :mod:`labelreg.pair_inference` for the
outputs, :mod:`labelreg.item_outputs` for the contract every method's inference keeps)."""

from __future__ import annotations

from labelreg.files import nifti_image
from labelreg.item_outputs import FAILED_COLUMNS, FailedItem, ItemsResult
from labelreg.pair_inference import METRIC_COLUMNS, infer, load_trained_model

#: The names earlier releases gave these.
InferenceResult = ItemsResult
FailedPair = FailedItem

__all__ = ["infer", "load_trained_model", "InferenceResult", "FailedPair", "METRIC_COLUMNS",
           "FAILED_COLUMNS", "nifti_image"]
