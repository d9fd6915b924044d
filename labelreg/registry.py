"""Name registries: INI values (``network_type = local``, ``image_loss_type = lncc``, ``[Method]
name = comir``) to the Python objects they stand for.

A :class:`Registry` holds entries that are either objects or ``"module:attribute"`` strings
imported on first use. Built-in entries are strings, so the names are known, and a config can be
validated, without importing TensorFlow; an object registered at run time (a network class with
``@register_network("mine")``, a method from a test file) is selectable from then on with no
other edit.

This module imports nothing but the standard library.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from labelreg.errors import ConfigError

__all__ = ["Registry", "import_target", "lazy_attributes"]


def import_target(target: str) -> Any:
    """The object named by ``"package.module:attribute"``."""
    module, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return obj


def lazy_attributes(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``name`` from ``package.<names[name]>`` on first
    access, so that importing the package (e.g. for its registry) stays free of TensorFlow."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{names[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


class Registry:
    """Case-insensitive map from names to objects, with lazily imported built-in entries.

    Args:
        kind: what the entries are, for messages (``"network"``, ``"image loss"``...).
        builtins: name -> ``"module:attribute"`` (imported on first :meth:`get`) or object.
        sort_names: list the names alphabetically in messages (else in registration order).
    """

    def __init__(self, kind: str, builtins: dict[str, Any] | None = None,
                 sort_names: bool = False) -> None:
        self.kind = kind
        self.sort_names = sort_names
        self._entries: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._options: dict[str, Any] = {}
        for name, target in (builtins or {}).items():
            self.add(name, target)

    @staticmethod
    def key(name: Any) -> str:
        return str(name).strip().lower()

    def add(self, name: str, target: Any, replace: bool = False, options: Any = None,
            **info: Any) -> None:
        """Register ``target`` (an object or a ``"module:attribute"`` string) under ``name``.

        ``info`` is free metadata kept beside the entry (e.g. a loss's kind), readable without
        importing the target. ``options`` are the INI options the entry declares (a
        :class:`labelreg.config.ComponentOptions`, or a ``"module:attribute"`` string naming
        one in a module without TensorFlow, so a file is checked before TensorFlow loads); an
        object registered without them may carry its own as the class attribute
        ``ini_options``.

        Raises:
            ValueError: for an empty name, or a name taken by another object (unless
                ``replace``).
        """
        key = self.key(name)
        if not key:
            raise ValueError(f"a {self.kind} name must be a non-empty string; received {name!r}.")
        current = self._entries.get(key)
        if current is not None and current is not target and not replace:
            resolved = self._resolved(key)
            if resolved is not target:
                raise ValueError(f"{self.kind} name {key!r} is already registered to {resolved!r}.")
        self._entries[key] = target
        self._info[key] = dict(info)
        self._options[key] = options

    def register(self, name: str, options: Any = None, **info: Any) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`; returns the object unchanged."""

        def decorator(obj: Any) -> Any:
            self.add(name, obj, options=options, **info)
            return obj

        return decorator

    def remove(self, name: str) -> None:
        """Forget a name (for tests that register a temporary entry)."""
        self._entries.pop(self.key(name), None)
        self._info.pop(self.key(name), None)
        self._options.pop(self.key(name), None)

    def names(self, **info: Any) -> tuple[str, ...]:
        """The registered names in registration order, optionally only those whose metadata
        has the given values (``names(kind="image")``)."""
        return tuple(
            name for name in self._entries
            if all(self._info[name].get(k) == v for k, v in info.items())
        )

    def info(self, name: str) -> dict[str, Any]:
        return dict(self._info[self._known(name)])

    def options(self, name: str) -> Any:
        """The INI options ``name`` declares (see :meth:`add`), or ``None``; never imports a
        target given as a string."""
        key = self._known(name)
        options = self._options.get(key)
        if isinstance(options, str):
            options = self._options[key] = import_target(options)
        if options is None and not isinstance(self._entries[key], str):
            options = getattr(self._entries[key], "ini_options", None)
        return options

    def __contains__(self, name: object) -> bool:
        return self.key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def _known(self, name: Any) -> str:
        key = self.key(name)
        if key not in self._entries:
            close = difflib.get_close_matches(key, list(self._entries), n=1, cutoff=0.6)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            names = sorted(self._entries) if self.sort_names else list(self._entries)
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known names are: {', '.join(names)}.{hint}"
            )
        return key

    def _resolved(self, key: str) -> Any:
        target = self._entries[key]
        if isinstance(target, str):
            target = import_target(target)
            self._entries[key] = target
        return target

    def get(self, name: str) -> Any:
        """The object registered as ``name`` (importing it on first use).

        Raises:
            ConfigError: for an unknown name; the message lists the known ones.
        """
        return self._resolved(self._known(name))
