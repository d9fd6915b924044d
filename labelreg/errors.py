"""Exceptions raised by labelreg for bad configuration and bad data, and the shape text their
messages use."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["LabelregError", "ConfigError", "DataError", "PartialFailure", "shape_text"]


def shape_text(shape: Iterable[Any]) -> str:
    """A shape as messages write it, e.g. ``(2, None, 64)`` (an unknown size is ``None``)."""
    return "(" + ", ".join("None" if d is None else str(int(d)) for d in shape) + ")"


class LabelregError(Exception):
    """Base class of every error labelreg raises on purpose."""


class ConfigError(LabelregError, ValueError):
    """An INI file, section, key or value is missing, unknown or invalid.

    The message names the file, the section, the key, the value received and the form that
    was expected.
    """


class DataError(LabelregError, ValueError):
    """An input file or folder is missing, unreadable or inconsistent with its partners.

    The message names the file (or folder) and what was expected.
    """


class PartialFailure(LabelregError):
    """Some items of a batch job (e.g. test pairs at inference) failed; the others were
    written. ``inference.py`` exits with code 1 on it.

    Attributes:
        lines: the summary of what was done, printed before the error.
    """

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = list(lines or [])
