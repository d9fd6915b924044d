"""Writing output files so that a reader never sees half of one (no TensorFlow import)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["atomic_write_text", "atomic_write_bytes"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temporary file beside it and one
    ``os.replace``, so readers never see a half-written file and an interrupted write leaves the
    old file intact.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: its files are private (0600), and an output should get the umask's
    # permissions like any other file.
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        with open(partial, "xb") as handle:
            handle.write(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8, newlines as given. Every text output of
    the project (``model.json``, ``best.json``, the CSV tables) is written this way.

    Returns:
        ``path``.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))
