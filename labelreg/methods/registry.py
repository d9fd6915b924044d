"""Which method an INI file configures, and its validated settings, before TensorFlow loads.

A file names its method with ``[Method] name = ...``; without that key, a file holding a
method's own section (``[CoMIR]``) is that method's, and any other file is label-driven
registration, so label-reg's ``config_demo.ini`` runs unchanged.

Built-in methods are registered by import string; a method added with :func:`register_method`
(a class deriving from :class:`~labelreg.methods.base.Method`) is selectable from the INI with
no other edit.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Sequence
from typing import Any

from labelreg.config import Config
from labelreg.errors import ConfigError
from labelreg.registry import Registry, import_target

__all__ = ["METHODS", "DEFAULT_METHOD", "register_method", "get_method", "method_name",
           "load_config", "check_inputs"]

DEFAULT_METHOD = "labelreg"

METHODS = Registry("method")
# Built-in methods name their TF-free config loader beside the (TensorFlow) class, so that a
# file is validated before TensorFlow is imported.
METHODS.add("labelreg", "labelreg.methods.label_driven:LabelDriven", section=None,
            config="labelreg.methods.label_driven_config:load",
            inputs="labelreg.methods.label_driven_config:check_inputs")
METHODS.add("comir", "labelreg.methods.comir:CoMIR", section="CoMIR",
            config="comir_tf.config:load")
METHODS.add("image_driven", "labelreg.methods.image_driven:ImageDriven", section=None,
            config="labelreg.methods.image_driven_config:load",
            inputs="labelreg.methods.image_driven_config:check_inputs")
METHODS.add("learnsim", "labelreg.methods.learnsim:LearnSim", section=None,
            config="labelreg.methods.learnsim_config:load")
METHODS.add("deepsim_features", "labelreg.methods.deepsim_features:DeepSimFeatures",
            section=None, config="labelreg.methods.image_driven_config:load_features")


def register_method(cls: type | None = None, *, section: str | None = None) -> Any:
    """Class decorator registering a method under its ``name`` attribute.

    Args:
        cls: the method class (a :class:`~labelreg.methods.base.Method`).
        section: an INI section that, when present, identifies the method's files.

    Raises:
        ValueError: for a class without a name, or a name already taken.
    """

    def decorator(method_cls: type) -> type:
        name = getattr(method_cls, "name", "")
        if not name:
            raise ValueError(f"{method_cls.__name__} needs a class attribute `name`.")
        METHODS.add(name, method_cls, section=section)
        return method_cls

    return decorator(cls) if cls is not None else decorator


def get_method(name: str) -> type:
    """The method class registered as ``name`` (imported on first use).

    Raises:
        ConfigError: for an unknown name; the message lists the known ones.
    """
    return METHODS.get(name)


def _sections(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError, OSError):
        return {}  # the method's own parser reports the problem with its location
    return {s.lower(): {k.lower(): v for k, v in parser.items(s, raw=True)}
            for s in parser.sections()}


def method_name(path: str | os.PathLike, overrides: Sequence[str] = ()) -> str:
    """The method an INI file configures (see the module docstring); ``--set Method.name=...``
    counts too.

    Raises:
        ConfigError: for an unknown ``[Method] name``, naming the file and the known methods.
    """
    sections = _sections(path)
    chosen = sections.get("method", {}).get("name")
    for override in overrides:
        target, _, value = str(override).partition("=")
        if target.strip().lower() == "method.name":
            chosen = value
    if chosen is not None:
        chosen = chosen.strip().strip("'\"")
        if chosen not in METHODS:
            raise ConfigError(
                f"{path}: [Method] name = {chosen!r}: unknown method; expected one of "
                f"{', '.join(METHODS)}."
            )
        return METHODS.key(chosen)
    for name in METHODS:
        section = METHODS.info(name).get("section")
        if section and section.lower() in sections:
            return name
    return DEFAULT_METHOD


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[str, Config]:
    """The method name of an INI file and its validated settings.

    For the built-in methods only the TF-free config loader is imported, so a configuration
    error is reported before TensorFlow loads; :func:`get_method` then gives the class.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    name = method_name(path, overrides)
    loader = METHODS.info(name).get("config")
    if loader is None:
        return name, get_method(name).load_config(path, overrides)
    return name, import_target(loader)(path, overrides)


def check_inputs(name: str, cfg: Config, command: str) -> None:
    """The method's own check that the input folders of ``command`` (``"train"``, ``"infer"``)
    exist, run before TensorFlow loads; a method without one (``inputs=`` of its registry
    entry) checks its data when it loads them.

    Raises:
        ConfigError: naming the file, section, key and folder.
    """
    checker = METHODS.info(name).get("inputs")
    if checker is not None:
        import_target(checker)(cfg, command)
