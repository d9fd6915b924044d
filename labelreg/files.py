"""Writing output files so that a reader never sees half of one (no TensorFlow import)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["atomic_write_text"]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a hidden temporary file beside it and one
    ``os.replace``, so readers never see a half-written file and an interrupted write leaves the
    old file intact. Every text output of the project (``model.json``, ``best.json``, the CSV
    tables) is written this way.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600), and an output should get the umask's
    # permissions like any other file.
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(partial, "x", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
