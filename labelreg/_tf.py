"""Import TensorFlow once, with an actionable message when it is missing.

The import runs inside :func:`labelreg.logs.native_stderr_filtered`: TensorFlow's C++ libraries
print informational notices straight to file descriptor 2 while they load (the absl
pre-initialisation notice, the oneDNN note), which ``TF_CPP_MIN_LOG_LEVEL`` does not silence.
They are dropped; anything else written meanwhile still reaches stderr, and everything does with
``LABELREG_VERBOSE=1`` (``--verbose``) or when the import fails.
"""

from __future__ import annotations

from labelreg.logs import native_stderr_filtered

try:
    with native_stderr_filtered():
        import tensorflow as tf
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "labelreg needs TensorFlow 2.21, which is not installed. Install it with one of the "
        "extras: `pip install 'labelreg[cpu]'` (tensorflow-cpu) or `pip install 'labelreg[gpu]'` "
        "(tensorflow with CUDA)."
    ) from err

__all__ = ["tf"]
