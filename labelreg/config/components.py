"""Options declared by components: a network (or any registry entry) owns its INI keys, which
join a file's schema when the file selects it; see :func:`parse_with_components`."""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelreg.config.engine import Config, Schema, parse, read_ini

__all__ = ["ComponentOptions", "Selector", "parse_with_components"]


@dataclass(frozen=True)
class ComponentOptions:
    """The INI keys a component (a network, a loss...) declares beside its code.

    Attributes:
        keys: section -> key -> :class:`Key`; the keys join a file's schema when the file
            selects the component (e.g. ``[Network] network_type = centroid_align``). Keys of the
            selector's own section are the component's constructor arguments.
        check: optional cross-check of the parsed values (raise with
            :func:`labelreg.config.fail`).
        docs: one line for the generated reference.
        arguments: INI key -> constructor argument, for a key whose argument has another name.
    """

    keys: Schema
    check: Callable[[Config], None] | None = None
    docs: str = ""
    arguments: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Selector:
    """A key whose value names an entry of a registry (``[Network] network_type`` in the
    networks registry): the options that entry declares (``Registry.options``) join the schema
    of a file that selects it."""

    section: str
    key: str
    registry: Any


def _selected(parser: configparser.ConfigParser, overrides: Sequence[str], selector: Selector,
              default: Any) -> str:
    """The raw value of a selector key (the file's, then the overrides'), lower case."""
    chosen = str(default)
    for section in parser.sections():
        if section.lower() == selector.section.lower():
            for key, text in parser.items(section, raw=True):
                if key.lower() == selector.key.lower():
                    chosen = text
    for override in overrides:
        target, _, text = str(override).partition("=")
        if target.strip().lower() == f"{selector.section}.{selector.key}".lower():
            chosen = text
    return chosen.strip().strip("'\"").lower()


def _section_of(schema: Schema, lower: str) -> str:
    return next((s for s in schema if s.lower() == lower), lower)


def parse_with_components(
    path: str | os.PathLike,
    schema: Schema,
    selectors: Sequence[Selector],
    overrides: Sequence[str] = (),
    renamed: Mapping[tuple[str, str], str] | None = None,
) -> Config:
    """:func:`parse` with the options of the components the file selects added to ``schema``.

    A key that another entry of a selector's registry declares, set in a file that does not
    select that entry, is an error naming the entry it belongs to. After parsing, each
    selected component's ``check`` runs.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    parser = read_ini(Path(os.path.expanduser(os.fspath(path))).absolute())
    full = {section: dict(keys) for section, keys in schema.items()}
    foreign: dict[tuple[str, str], str] = {}
    checks, choices = [], []
    for selector in selectors:
        chosen = _selected(parser, overrides, selector,
                           schema[selector.section][selector.key].default)
        choices.append(f"{selector.key} = {chosen}")
        for name in selector.registry:
            options = selector.registry.options(name)
            if options is None:
                continue
            for section, keys in options.keys.items():
                if name == chosen:
                    full.setdefault(section, {}).update(keys)
                else:
                    for key in keys:
                        foreign.setdefault((section.lower(), key.lower()),
                                           f"{selector.key} = {name}")
            if name == chosen and options.check is not None:
                checks.append(options.check)
    owners = {(section, key): f"{owner} (this file has {', '.join(choices)})"
              for (section, key), owner in foreign.items()
              if not any(k.lower() == key for k in full.get(_section_of(full, section), {}))}
    cfg = parse(path, full, overrides, renamed=renamed, owners=owners)
    for check in checks:
        check(cfg)
    return cfg
