"""comir_tf: CoMIR (Pielawski, Wetzer et al., NeurIPS 2020) in TensorFlow 2 / Keras 3.

Two Tiramisu networks, one per modality, are trained contrastively on aligned image pairs so
that both map to a shared representation (a "CoMIR") that a classical rigid registration can
align. Sub-modules are imported on first use, so ``import comir_tf`` stays cheap.

Public names (see ``docs/comir.md``):

- ``Tiramisu``: the FC-DenseNet (``comir_tf.tiramisu``);
- ``info_nce_loss``, ``similarity_matrix``, ``retrieval_metrics``, ``contrastive_terms``,
  ``activation_decay``, ``comir_loss_terms``, ``CRITICS`` (``comir_tf.contrastive``);
- ``rot90`` (``comir_tf.equivariance``);
- ``generate``, ``write_comir`` (``comir_tf.generate``);
- ``register_rigid``, ``register_sift``, ``RigidTransform``, ``rigid_matrix``, ``warp_rigid``,
  ``corner_error`` (``comir_tf.register``);
- ``write_synthetic_pairs``, ``render_pair`` (``comir_tf.synthetic``);
- sub-modules ``config``, ``data``, ``evaluate``.

Training, inference and export run through labelreg's shared engine: the method is
:class:`labelreg.methods.comir.CoMIR`.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "Tiramisu": "tiramisu",
    "info_nce_loss": "contrastive",
    "similarity_matrix": "contrastive",
    "retrieval_metrics": "contrastive",
    "contrastive_terms": "contrastive",
    "activation_decay": "contrastive",
    "comir_loss_terms": "contrastive",
    "CRITICS": "contrastive",
    "rot90": "equivariance",
    "generate": "generate",
    "write_comir": "generate",
    "register_rigid": "register",
    "register_sift": "register",
    "RigidTransform": "register",
    "rigid_matrix": "register",
    "warp_rigid": "register",
    "corner_error": "register",
    "write_synthetic_pairs": "synthetic",
    "render_pair": "synthetic",
}
_SUBMODULES = ("tiramisu", "contrastive", "equivariance", "generate", "register", "synthetic",
               "config", "data", "evaluate")

__all__ = [*_NAMES, *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(f"comir_tf.{_NAMES[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"comir_tf.{name}")
    raise AttributeError(f"module 'comir_tf' has no attribute {name!r}")
