"""Exceptions raised by labelreg for bad configuration and bad data."""

from __future__ import annotations

__all__ = ["LabelregError", "ConfigError", "DataError"]


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
