"""Shared test settings: quiet TensorFlow, deterministic seeds, small helpers."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Before any test module imports TensorFlow: `import labelreg` sets its oneDNN default (cheap,
# the sub-modules load on first use).
import labelreg  # noqa: E402, F401

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mrus-sample")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def mrus_sample_dir() -> str:
    """The shared real-format MR/US sample (``../shared/data/mrus-sample``)."""
    path = os.path.abspath(os.environ.get("LABELREG_MRUS_SAMPLE", SHARED_DATA))
    if not os.path.isdir(path):
        pytest.fail(f"the shared sample data is missing at {path}; set LABELREG_MRUS_SAMPLE")
    return path
