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
from typing import Any

from labelreg.errors import ConfigError, DataError, LabelregError

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
