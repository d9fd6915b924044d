"""Shared test settings: quiet TensorFlow, deterministic seeds, small helpers."""

from __future__ import annotations

import os
from pathlib import Path

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


def save_untrained_run(ini: str | os.PathLike) -> Path:
    """Save the freshly built (untrained) networks of a method's INI file as ``training.py``
    would after training (``model.json`` and ``checkpoints/`` in ``[Train] dir_run``); returns
    the checkpoint prefix ``<dir_run>/model.ckpt``.

    For tests of inference, export and their errors: what they check is the handling of pairs,
    files and arguments, not the quality of the registration, and skipping the training (graph
    building included) saves most of their time."""
    from labelreg.engine.checkpoints import save_run
    from labelreg.methods.registry import get_method, load_config

    name, cfg = load_config(str(ini))
    method = get_method(name)(cfg, log=lambda line: None)
    method.prepare_data()
    method.models = method.build()
    run = Path(cfg["Train"]["dir_run"])
    save_run(method.models, run, method=method.name, checkpoint_name="model.ckpt",
             **method.meta())
    return run / "model.ckpt"
