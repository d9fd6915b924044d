"""Import TensorFlow once, with an actionable message when it is missing."""

from __future__ import annotations

try:
    import tensorflow as tf
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "labelreg needs TensorFlow 2.21, which is not installed. Install it with one of the "
        "extras: `pip install 'labelreg[cpu]'` (tensorflow-cpu) or `pip install 'labelreg[gpu]'` "
        "(tensorflow with CUDA)."
    ) from err

__all__ = ["tf"]
