"""Writing output files and folders so that a reader never sees half of one (no TensorFlow
import): atomic files, CSV tables, NIfTI images, PNG pictures, and staging folders renamed into
place once complete."""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from labelreg.errors import DataError

__all__ = ["atomic_write_text", "atomic_write_bytes", "write_csv", "read_csv", "nifti_image",
           "write_png", "hidden_sibling", "is_temporary", "remove_stale", "remove_folder",
           "publish_folder", "check_writable"]


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


# -- output tables and images --------------------------------------------------------------------


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str]) -> Path:
    """One row per mapping under the header ``columns``; floats with 6 significant digits;
    written atomically (:func:`atomic_write_text`).

    Returns:
        ``path``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def read_csv(path: str | os.PathLike, text_columns: Sequence[str] = ("case",),
             int_columns: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a table written by :func:`write_csv`: ``text_columns`` as written,
    ``int_columns`` as ``int``, every other column as ``float`` (``nan`` stays NaN).

    Raises:
        OSError: the file cannot be read; ValueError: a value does not convert.
    """
    with Path(path).open(newline="", encoding="utf-8") as stream:
        return [{key: (value if key in text_columns else int(value) if key in int_columns
                       else float(value)) for key, value in row.items()}
                for row in csv.DictReader(stream)]


def nifti_image(data: np.ndarray, affine: np.ndarray, header: Any) -> nib.Nifti1Image:
    """A float32 NIfTI image with the given affine (as qform and sform) and header (copied;
    ``None`` gives nibabel's default header with codes 1)."""
    header = header.copy() if header is not None else None
    image = nib.Nifti1Image(data.astype(np.float32), affine, header)
    image.set_data_dtype(np.float32)
    image.header.set_qform(affine, code=int(header["qform_code"]) if header is not None else 1)
    image.header.set_sform(affine, code=int(header["sform_code"]) if header is not None else 1)
    return image


def write_png(path: str | os.PathLike, picture: np.ndarray) -> Path:
    """Write an ``[H, W, 3]`` uint8 picture as PNG, atomically."""
    from PIL import Image  # Pillow is only needed by the outputs that draw pictures

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


# -- folders ---------------------------------------------------------------------------------------


def hidden_sibling(path: str | os.PathLike, kind: str) -> Path:
    """A fresh hidden name next to ``path``, e.g. ``.case01.partial-1a2b3c4d``; names of this
    form are what :func:`remove_stale` clears."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}")


def is_temporary(name: str) -> bool:
    """Whether a folder entry is a staging folder or temporary file of this module."""
    return name.startswith(".") and (".partial-" in name or ".old-" in name
                                     or name.endswith(".partial"))


def remove_stale(folder: str | os.PathLike) -> None:
    """Remove the staging folders and temporary files an interrupted run left in ``folder``."""
    for entry in Path(folder).iterdir():
        if is_temporary(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def remove_folder(folder: str | os.PathLike) -> None:
    """Remove ``folder`` by first renaming it aside (hidden), so that it is never seen half
    removed; a folder that cannot be renamed is left in place."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    aside = hidden_sibling(folder, "old")
    try:
        os.rename(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def publish_folder(staging: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename the complete ``staging`` folder to ``target``, replacing an older ``target``.

    A folder cannot be renamed over a non-empty one, so an older ``target`` is first renamed
    aside (hidden, removed afterwards, or by the next run after a crash): ``target`` is either
    the old folder, briefly absent, or the new one, never a mixture.
    """
    staging, target = Path(staging), Path(target)
    aside = None
    if target.exists():
        aside = hidden_sibling(target, "old")
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except OSError:
        if aside is not None:
            os.rename(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def check_writable(folder: str | os.PathLike, key: str) -> None:
    """Fail before any work when ``folder`` (the setting ``key``) cannot be created or written.

    Raises:
        DataError: naming the folder, the key and why.
    """
    folder = Path(folder)
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    problem = None
    if not ancestor.is_dir():
        problem = f"{ancestor} is not a folder"
    else:
        try:
            with tempfile.TemporaryFile(dir=ancestor):
                pass
        except OSError as err:
            problem = f"{ancestor} is not writable ({err.strerror})"
    if problem:
        raise DataError(f"{folder}: cannot write the output folder ({key}): {problem}.")
