"""Export trained models as TF-Serving SavedModels (and, optionally, to ONNX).

- :mod:`labelreg.export.publish`: versioned publishing for any method (staging, never
  overwriting, ``<base>/<name>/<version>/``).
- :mod:`labelreg.export.runs`: :func:`export_saved_model` of a training run (the signatures
  come from the run's method), :func:`export_onnx`.
- :mod:`labelreg.export.registration`: the signatures of a registration network
  (``serving_default``, ``warp_labels``, ``register_with_labels``) and :func:`export_model` for
  an in-memory network.
"""

from labelreg.export.publish import (
    METADATA_DIR,
    SERVING_DEFAULT,
    export_endpoints,
    list_versions,
    next_version,
    training_step,
)
from labelreg.export.registration import (
    REGISTER_WITH_LABELS,
    SIGNATURE_NAMES,
    WARP_LABELS,
    ServingFunctions,
    carry_ddf_to_grids,
    export_model,
    normalise_intensity,
)
from labelreg.export.runs import export_onnx, export_saved_model

__all__ = [
    "METADATA_DIR",
    "SERVING_DEFAULT",
    "WARP_LABELS",
    "REGISTER_WITH_LABELS",
    "SIGNATURE_NAMES",
    "ServingFunctions",
    "normalise_intensity",
    "carry_ddf_to_grids",
    "export_endpoints",
    "export_model",
    "export_saved_model",
    "export_onnx",
    "list_versions",
    "next_version",
    "training_step",
]
