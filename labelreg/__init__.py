"""labelreg: learning-based image registration for TensorFlow 2 / Keras 3.

The sub-modules are imported on first use, so `import labelreg` stays cheap and a command-line
`-h` answers before TensorFlow loads.

Public names (see ``docs/api.md``):

- ``labelreg.warp``, ``resample_affine``, ``affine_to_ddf``, ``random_affine``, ``compose``,
  ``integrate_svf``: spatial operations (``labelreg.ops``).
- ``labelreg.losses``, ``labelreg.metrics``, ``labelreg.networks``, ``labelreg.config``,
  ``labelreg.data``, ``labelreg.export``: the sub-modules of the same names.
- ``labelreg.ConfigError``, ``labelreg.DataError``: the errors raised for bad configuration and data.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from labelreg import cpu as _cpu
from labelreg.errors import ConfigError, DataError, LabelregError

# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 class features; on
# an AVX2-only x86 CPU it falls back to Eigen's 3-D convolutions, which made a LocalNet training
# step 7 times slower (14.0 s against 1.9 s for the demo). Prefer oneDNN unless the user chose
# (TF_ENABLE_ONEDNN_OPTS=0 still turns it off). It must be set before TensorFlow loads, so here,
# before any sub-module imports it.
# A script that imported TensorFlow first already has its setting: say so once, in one line
# (through logging, so it shows without configuration and a logging setup can silence it).
_onednn_note = _cpu.onednn_import_note("tensorflow" in sys.modules)
if _onednn_note is not None:
    logging.getLogger("labelreg").warning(_onednn_note)
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

_OPS = ("warp", "resample_affine", "affine_to_ddf", "random_affine", "compose", "integrate_svf")
_SUBMODULES = (
    "ops", "losses", "metrics", "networks", "config", "data", "export", "apps", "serving", "engine",
    "methods", "infer", "cli", "registry",
)

__all__ = [*_OPS, *_SUBMODULES, "ConfigError", "DataError", "LabelregError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _OPS:
        return getattr(importlib.import_module("labelreg.ops"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"labelreg.{name}")
    raise AttributeError(f"module 'labelreg' has no attribute {name!r}")
