"""INI configuration: a small typed schema engine and labelreg's schema.

A *schema* maps section names to key names to :class:`Key` descriptions (kind, default, one-line
doc, allowed choices, inclusive bounds). :func:`parse` reads an INI file with the standard
library's :mod:`configparser` (no interpolation, no inline comments), converts every value to its
kind without ever evaluating it, applies ``Section.key=value`` overrides, and returns a read-only
:class:`Config`. Anything unknown, malformed or out of range raises
:class:`labelreg.errors.ConfigError` naming the file, the section, the key, the value received and
the expected form, with a "did you mean ...?" hint for misspelt names.

:func:`load` parses with :data:`LABELREG_SCHEMA` (which accepts label-reg's ``config_demo.ini``
unchanged), fills the defaults that depend on other keys, and checks keys against each other.

Value syntax:

- ``int`` / ``float``: ``4``, ``1e-5`` (an int may be written ``1e5`` when it is whole);
- ``bool``: ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case);
- ``str``: the text as written; with ``choices`` matched case-insensitively;
- ``path``: ``~`` expands, a relative path resolves against the INI file's folder, an empty
  value means unset (``None``);
- ``int_list`` / ``float_list`` / ``str_list``: ``[0, 1, 2]``, ``0, 1, 2`` or ``0 1 2``; an empty
  value or ``[]`` is the empty list. Lists are returned as tuples.

Section and key names match case-insensitively; the schema's spelling is used in the result.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import math
import os
import sys
import tempfile
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelreg.errors import ConfigError

__all__ = [
    "Key",
    "Schema",
    "REQUIRED",
    "KINDS",
    "Config",
    "parse",
    "load",
    "schema_markdown",
    "LABELREG_SCHEMA",  # noqa: F822 - built on first access by the module __getattr__
    "LABELREG_SECTION_DOCS",
    "generated_docs",
    "update_docs",
    "replace_generated_block",
    "method_section",
    "train_section",
    "derive_run_paths",
    "check_train",
    "parse_method",
    "fail",
]


class _Required:
    """Sentinel type: the key has no default and must be given."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

KINDS = ("int", "float", "bool", "str", "path", "int_list", "float_list", "str_list")

_EXPECTED_FORM = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false, yes/no, on/off, 1/0)",
    "str": "a string",
    "path": "a path (empty means unset)",
    "int_list": "a list of integers, e.g. [0, 1, 2]",
    "float_list": "a list of numbers, e.g. [1.5, 1.5, 1.5]",
    "str_list": "a list of names, e.g. [a, b]",
}

_BOOLEANS = {
    "true": True, "yes": True, "on": True, "1": True,
    "false": False, "no": False, "off": False, "0": False,
}


@dataclass(frozen=True)
class Key:
    """One INI key of a schema.

    Attributes:
        kind: one of :data:`KINDS`.
        default: the value used when the key is absent (already of the key's kind; a path default
            may be a relative string, resolved against the INI folder), or :data:`REQUIRED`.
        doc: one line, used in the docs and in error messages.
        choices: the allowed values (for lists: of each element), or ``None`` for any.
        min: inclusive lower bound of a number or of each list element.
        max: inclusive upper bound of a number or of each list element.
    """

    kind: str
    default: Any
    doc: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Key.kind must be one of {KINDS}; received kind={self.kind!r}.")
        if self.choices is not None and not isinstance(self.choices, tuple):
            object.__setattr__(self, "choices", tuple(self.choices))


Schema = dict[str, dict[str, Key]]


# --------------------------------------------------------------------------------------------
# Value conversion
# --------------------------------------------------------------------------------------------


class _BadValue(Exception):
    """Raised by the converters; turned into a ConfigError with the full location."""


def _expected(key: Key) -> str:
    form = _EXPECTED_FORM[key.kind]
    if key.choices is not None:
        values = ", ".join(str(c) for c in key.choices)
        form = f"one of {values}" if not key.kind.endswith("_list") else f"{form} of {values}"
    if key.min is not None or key.max is not None:
        lo = "-inf" if key.min is None else _format_scalar(key.min)
        hi = "inf" if key.max is None else _format_scalar(key.max)
        form += f" in [{lo}, {hi}]"
    return form


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise _BadValue from None
    # Accept "1e5" for whole numbers (label-reg wrote int(1e5)), never "1.5".
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise _BadValue


def _to_float(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise _BadValue from None
    if not math.isfinite(number):
        raise _BadValue
    return number


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _split_list(text: str) -> list[str]:
    text = text.strip()
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1].strip()
    if not text:
        return []
    parts = text.split(",") if "," in text else text.split()
    items = [p.strip() for p in parts]
    if items and items[-1] == "":  # allow one trailing comma: "[0, 1,]"
        items.pop()
    if any(item == "" for item in items):
        raise _BadValue
    return items


def _check_bounds(key: Key, number: float) -> None:
    if key.min is not None and number < key.min:
        raise _BadValue
    if key.max is not None and number > key.max:
        raise _BadValue


def _match_choice(key: Key, value: str) -> str:
    if key.choices is None:
        return value
    for choice in key.choices:
        if value.lower() == str(choice).lower():
            return choice
    raise _BadValue


def _convert_scalar(key: Key, kind: str, text: str) -> Any:
    if kind == "int":
        value = _to_int(text)
        _check_bounds(key, value)
        if key.choices is not None and value not in key.choices:
            raise _BadValue
        return value
    if kind == "float":
        value = _to_float(text)
        _check_bounds(key, value)
        return value
    if kind == "bool":
        try:
            return _BOOLEANS[text.lower()]
        except KeyError:
            raise _BadValue from None
    # str
    return _match_choice(key, _unquote(text))


def _resolve_path(text: str, base: Path) -> Path | None:
    text = _unquote(text.strip())
    if not text:
        return None
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = base / path
    return Path(os.path.normpath(path))


def _convert(key: Key, text: str, base: Path) -> Any:
    """Convert the raw INI text of one value to the key's kind (raises _BadValue)."""
    text = text.strip()
    if key.kind == "path":
        return _resolve_path(text, base)
    if key.kind.endswith("_list"):
        scalar_kind = key.kind[: -len("_list")]
        return tuple(
            _convert_scalar(key, scalar_kind, _unquote(item)) for item in _split_list(text)
        )
    if text == "" and key.default is None:
        return None  # an optional scalar left empty stays unset
    return _convert_scalar(key, key.kind, text)


def _resolve_default(key: Key, base: Path) -> Any:
    if key.kind == "path" and isinstance(key.default, str | Path):
        return _resolve_path(str(key.default), base)
    if key.kind.endswith("_list") and isinstance(key.default, list | tuple):
        return tuple(key.default)
    return key.default


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _format_value(key: Key, value: Any) -> str:
    if value is None:
        return ""
    if key.kind.endswith("_list"):
        return "[" + ", ".join(_format_scalar(v) for v in value) + "]"
    if key.kind == "path":
        return str(value)
    return _format_scalar(value)


def _format_default(key: Key) -> str:
    if key.default is REQUIRED:
        return "required"
    if key.default is None or key.default == "":
        return "unset"
    return _format_value(key, key.default)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


class Config(Mapping[str, Mapping[str, Any]]):
    """Typed, validated settings read from one INI file.

    ``cfg["Train"]["learning_rate"]`` or ``cfg.section("Train").learning_rate``. Every section
    and key of the schema is present, with its default when the file did not set it. The object
    is read-only.

    Attributes:
        path: the INI file that was parsed (absolute).
        schema: the schema it was validated against.
    """

    def __init__(
        self,
        path: Path,
        schema: Schema,
        values: Mapping[str, Mapping[str, Any]],
        present: Sequence[str] = (),
        notes: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self._values = {s: dict(values[s]) for s in schema}
        self._present = frozenset(present)
        #: Messages for the user that are not errors (deprecated key names that were accepted).
        self.notes = tuple(notes)

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        if section not in self._values:
            hint = _did_you_mean(section, self._values)
            raise KeyError(f"{self.path}: no section [{section}] in the schema.{hint}")
        return types.MappingProxyType(self._values[section])

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Config(path={str(self.path)!r}, sections={list(self._values)})"

    def section(self, name: str) -> types.SimpleNamespace:
        """The keys of one section as attributes: ``cfg.section("Train").learning_rate``."""
        return types.SimpleNamespace(**self[name])

    def has_section(self, name: str) -> bool:
        """Whether the file (or an override) set the section, as opposed to pure defaults."""
        return name in self._present

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """A deep copy of the values as plain dicts."""
        return {s: dict(v) for s, v in self._values.items()}

    def to_ini_text(self) -> str:
        """Every section and key with its resolved value, as INI text that parses back equal.

        Paths are written absolute, so the text may be saved in any folder.
        """
        lines = [f"# Resolved configuration of {self.path}", ""]
        for section, keys in self.schema.items():
            lines.append(f"[{section}]")
            for name, key in keys.items():
                lines.append(f"# {key.doc}")
                text = _format_value(key, self._values[section][name])
                lines.append(f"{name} = {text}".rstrip())
            lines.append("")
        return "\n".join(lines)

    def write(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_ini_text` to ``path`` atomically (temporary file, then rename).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.to_ini_text())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    def _replace(self, section: str, key: str, value: Any) -> None:
        # Only for load()'s derived defaults, before the object is handed out.
        self._values[section][key] = value


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _did_you_mean(name: str, candidates: Sequence[str] | Mapping[str, Any]) -> str:
    names = list(candidates)
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f" Did you mean {lowered[close[0]]!r}?" if close else ""


def _lookup(name: str, candidates: Mapping[str, Any]) -> str | None:
    if name in candidates:
        return name
    for candidate in candidates:
        if candidate.lower() == name.lower():
            return candidate
    return None


def _bad_value_error(where: str, section: str, name: str, key: Key, text: str) -> ConfigError:
    message = (
        f"{where}: [{section}] {name} = {text!r}: expected {_expected(key)} ({key.doc})."
    )
    if key.choices is not None and key.kind in ("str", "str_list"):
        for item in _safe_split(text) if key.kind == "str_list" else [text]:
            item = _unquote(item.strip())
            if _lookup(item, {str(c): None for c in key.choices}) is None:
                message += _did_you_mean(item, [str(c) for c in key.choices])
                break
    return ConfigError(message)


def _safe_split(text: str) -> list[str]:
    try:
        return _split_list(text)
    except _BadValue:
        return [text]


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        empty_lines_in_values=False,
        # An unlikely name, so that a "[DEFAULT]" section is an ordinary (unknown) section
        # instead of silently feeding every other section.
        default_section="\x00labelreg-default",
    )
    parser.optionxform = str  # keep the case; names are matched case-insensitively below
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found.") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected an INI file, found a folder.") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err}).") from None
    except configparser.Error as err:
        raise ConfigError(f"{path}: not a valid INI file: {err}") from None
    return parser


def _parse_override(text: str) -> tuple[str, str, str]:
    form = "expected 'Section.key=value', e.g. 'Train.learning_rate=1e-4'"
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"override {text!r}: {form}.")
    target, value = text.split("=", 1)
    target = target.strip()
    if target.count(".") != 1:
        raise ConfigError(f"override {text!r}: {form}.")
    section, name = (part.strip() for part in target.split("."))
    if not section or not name:
        raise ConfigError(f"override {text!r}: {form}.")
    return section, name, value.strip()


def parse(
    path: str | os.PathLike,
    schema: Schema,
    overrides: Sequence[str] = (),
    allow_missing_sections: bool = True,
    renamed: Mapping[tuple[str, str], str] | None = None,
) -> Config:
    """Read, convert and validate an INI file against a schema.

    Args:
        path: the INI file.
        schema: section -> key -> :class:`Key`.
        overrides: ``"Section.key=value"`` strings applied after the file, validated the same way
            (the command line passes them with ``--set``).
        allow_missing_sections: if ``False``, every section of the schema must appear in the file
            (or in an override).
        renamed: ``(section, old key) -> new key`` for keys that were renamed: the old name is
            read as the new one and a deprecation note is added to ``Config.notes``.

    Returns:
        A :class:`Config` with every section and key of the schema.

    Raises:
        ConfigError: missing or unreadable file, unknown section or key, a value of the wrong
            form, out of range or not among the choices, a missing required key or section, or a
            malformed override. The message names the file, section, key and value.
    """
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides must be a sequence of 'Section.key=value' strings; received the single "
            f"string {overrides!r} (wrap it in a list)."
        )
    path = Path(os.path.expanduser(os.fspath(path))).absolute()
    parser = _read_ini(path)
    base = path.parent

    raw: dict[str, dict[str, tuple[str, str]]] = {s: {} for s in schema}  # -> (text, where)
    present: set[str] = set()
    notes: list[str] = []
    old_names = {(section.lower(), old.lower()): new
                 for (section, old), new in (renamed or {}).items()}

    def rename(section: str, key: str, where: str) -> str | None:
        new = old_names.get((section.lower(), key.lower()))
        if new is not None:
            notes.append(f"{where}: [{section}] {key} is deprecated; it is read as {new}. "
                         f"Rename it to {new}.")
        return new
    for file_section in parser.sections():
        section = _lookup(file_section, schema)
        if section is None:
            hint = _did_you_mean(file_section, schema)
            raise ConfigError(
                f"{path}: unknown section [{file_section}]; expected one of "
                f"{', '.join(f'[{s}]' for s in schema)}.{hint}"
            )
        if section in present:
            raise ConfigError(f"{path}: section [{section}] appears twice (as [{file_section}]).")
        present.add(section)
        for file_key, text in parser.items(file_section, raw=True):
            name = _lookup(file_key, schema[section]) or rename(section, file_key, str(path))
            if name is None:
                hint = _did_you_mean(file_key, schema[section])
                raise ConfigError(
                    f"{path}: [{section}] {file_key} = {text!r}: unknown key in section "
                    f"[{section}]; expected one of {', '.join(schema[section])}.{hint}"
                )
            if name in raw[section]:
                raise ConfigError(f"{path}: [{section}] {name} is set twice (as {file_key}).")
            raw[section][name] = (text, str(path))

    for override in overrides:
        section_text, key_text, text = _parse_override(override)
        where = f"{path}: override {override!r}"
        section = _lookup(section_text, schema)
        if section is None:
            hint = _did_you_mean(section_text, schema)
            raise ConfigError(
                f"{where}: unknown section [{section_text}]; expected one of "
                f"{', '.join(f'[{s}]' for s in schema)}.{hint}"
            )
        name = _lookup(key_text, schema[section]) or rename(section, key_text, where)
        if name is None:
            hint = _did_you_mean(key_text, schema[section])
            raise ConfigError(
                f"{where}: [{section}] {key_text} = {text!r}: unknown key in section "
                f"[{section}]; expected one of {', '.join(schema[section])}.{hint}"
            )
        present.add(section)
        raw[section][name] = (text, where)

    if not allow_missing_sections:
        missing = [s for s in schema if s not in present]
        if missing:
            raise ConfigError(
                f"{path}: missing section(s) {', '.join(f'[{s}]' for s in missing)}; this file "
                f"must contain every section of {', '.join(f'[{s}]' for s in schema)}."
            )

    values: dict[str, dict[str, Any]] = {}
    for section, keys in schema.items():
        values[section] = {}
        for name, key in keys.items():
            if name in raw[section]:
                text, where = raw[section][name]
                try:
                    values[section][name] = _convert(key, text, base)
                except _BadValue:
                    raise _bad_value_error(where, section, name, key, text) from None
            elif key.default is REQUIRED:
                raise ConfigError(
                    f"{path}: [{section}] {name} is required but missing ({key.doc}); expected "
                    f"{_expected(key)}."
                )
            else:
                values[section][name] = _resolve_default(key, base)
    return Config(path, schema, values, sorted(present), notes)


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def schema_markdown(schema: Schema, section_docs: Mapping[str, str] | None = None) -> str:
    """Markdown reference of a schema: one table per section (key, type, default, meaning).

    Args:
        schema: the schema to describe.
        section_docs: optional one-paragraph description per section.

    Returns:
        Markdown text ending with a newline.
    """
    out: list[str] = []
    for section, keys in schema.items():
        out.append(f"### [{section}]")
        out.append("")
        if section_docs and section in section_docs:
            out.append(section_docs[section])
            out.append("")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, key in keys.items():
            meaning = key.doc
            if key.choices is not None:
                meaning += " Choices: " + ", ".join(f"`{c}`" for c in key.choices) + "."
            if key.min is not None or key.max is not None:
                lo = "-inf" if key.min is None else _format_scalar(key.min)
                hi = "inf" if key.max is None else _format_scalar(key.max)
                meaning += f" Range: [{lo}, {hi}]."
            default = _format_default(key)
            default = default if default in ("required", "unset") else f"`{default}`"
            out.append(
                f"| `{name}` | {key.kind} | {_markdown_cell(default)} | {_markdown_cell(meaning)} |"
            )
        out.append("")
    return "\n".join(out)


_BEGIN = "<!-- BEGIN GENERATED: python -m labelreg.config docs/config.md -->"
_END = "<!-- END GENERATED -->"


def generated_docs() -> str:
    """The generated block of ``docs/config.md`` (between its markers)."""
    return f"{_BEGIN}\n\n{schema_markdown(_labelreg_schema(), LABELREG_SECTION_DOCS)}\n{_END}"


def replace_generated_block(path: str | os.PathLike, block: str, begin: str, end: str) -> Path:
    """Put ``block`` (which starts with ``begin`` and ends with ``end``) in place of the text
    between those markers in a Markdown file, or append it when the file has no such block."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if begin in text and end in text:
        text = text.split(begin, 1)[0] + block + text.split(begin, 1)[1].split(end, 1)[1]
    else:
        text = (text.rstrip() + "\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def update_docs(path: str | os.PathLike) -> Path:
    """Rewrite the generated block of a Markdown file (``docs/config.md``) from the schema."""
    return replace_generated_block(path, generated_docs(), _BEGIN, _END)


# --------------------------------------------------------------------------------------------
# labelreg's schema
# --------------------------------------------------------------------------------------------

def _loss_names(kind: str) -> tuple[str, ...]:
    from labelreg.losses.registry import available_losses  # no TensorFlow behind it

    return available_losses(kind)


def _network_names() -> tuple[str, ...]:
    from labelreg.networks.registry import NETWORKS  # no TensorFlow behind it

    return tuple(NETWORKS)


# --------------------------------------------------------------------------------------------
# Sections every method shares
# --------------------------------------------------------------------------------------------


def method_section(name: str) -> dict[str, Key]:
    """The ``[Method]`` section of a method's schema: ``name`` may only be the method's own
    (the method registry has chosen the schema by it)."""
    return {"name": Key("str", name, "The method this file configures (see docs/methods).",
                        choices=(name,))}


_TRAIN_DOCS = {
    "total_iterations": "Number of training steps.",
    "minibatch_size": "Training samples (image pairs) per step.",
    "learning_rate": "Learning rate of the optimiser (> 0); the peak rate under a schedule.",
    "lr_schedule": "How the learning rate changes with the step: constant, or cosine (decays "
                   "from learning_rate after the warm-up to 0 at total_iterations, Keras's "
                   "CosineDecay).",
    "warmup_steps": "Steps over which the learning rate rises linearly from 0 to learning_rate "
                    "before the schedule; 0 = none. Must be below total_iterations.",
    "optimizer": "Optimiser of every trained network (one optimiser per network).",
    "momentum": "Momentum of the sgd optimiser (unused by adam).",
    "weight_decay": "Weight decay added to the gradients after clipping, g + wd * w (PyTorch's "
                    "SGD convention); 0 = none.",
    "clip_norm": "Clip each network's gradients to this global norm; 0 = no clipping.",
    "freq_info_print": "Print progress and write TensorBoard scalars every this many steps.",
    "freq_model_save": "Save a checkpoint (and validate) every this many steps, and at the end.",
    "file_model_save": "Checkpoint file prefix; its folder is the run folder unless dir_run is "
                       "set; unset = <dir_run>/<the method's checkpoint name, e.g. model.ckpt>, "
                       "with dir_run unset too: runs/ beside the INI file.",
    "seed": "Seed of sampling, augmentation and initialisation.",
    "deterministic": "Enable TensorFlow op determinism (bitwise-repeatable CPU runs, slower).",
    "dir_run": "Run folder (checkpoints, resolved config, model.json); unset = the folder of "
               "file_model_save.",
    "resume": "Continue from the latest checkpoint in dir_run.",
    "dir_tensorboard": "TensorBoard logs; unset = <dir_run>/tensorboard.",
    "max_checkpoints_to_keep": "Checkpoints kept in dir_run.",
    "validate": "Validate at every checkpoint when the method has validation data.",
    "max_nonfinite_steps": "A step whose loss or gradients are NaN/inf is not applied and is "
                           "logged with its cases; the run stops after this many consecutive "
                           "such steps (the last good checkpoint is kept).",
    "strategy": "tf.distribute strategy: default (one device, or mirrored over several GPUs), "
                "mirrored (every local GPU, or every logical CPU device), multi_worker "
                "(MultiWorkerMirroredStrategy across machines, configured by TF_CONFIG; see "
                "docs/distributed.md).",
    "precision": "Arithmetic of the networks: float32, or mixed_bfloat16 (bfloat16 convolutions "
                 "with float32 weights; losses, the DDF and the warp stay float32).",
    "keep_best": "Also keep the checkpoint with the best validation figure in <dir_run>/best "
                 "(dice: highest median gland Dice; tre: lowest median landmark TRE); none = "
                 "only the latest checkpoints.",
    "gradient_checkpointing": "Recompute each network block's activations in the backward pass "
                              "instead of keeping them (less memory for large volumes, more "
                              "time).",
}


def train_section(**defaults: Any) -> dict[str, Key]:
    """The ``[Train]`` keys of every method, read by the one trainer (:mod:`labelreg.engine`).

    The key names are label-reg's. A method passes its own defaults, e.g.
    ``train_section(optimizer="sgd", learning_rate=1e-2)``.

    Raises:
        ValueError: for a default given for a key that does not exist.
    """
    keys = {
        "total_iterations": Key("int", 100000, _TRAIN_DOCS["total_iterations"], min=1),
        "minibatch_size": Key("int", 2, _TRAIN_DOCS["minibatch_size"], min=1),
        "learning_rate": Key("float", 1e-5, _TRAIN_DOCS["learning_rate"], min=0.0),
        "lr_schedule": Key("str", "constant", _TRAIN_DOCS["lr_schedule"],
                           choices=("constant", "cosine")),
        "warmup_steps": Key("int", 0, _TRAIN_DOCS["warmup_steps"], min=0),
        "optimizer": Key("str", "adam", _TRAIN_DOCS["optimizer"], choices=("adam", "sgd")),
        "momentum": Key("float", 0.9, _TRAIN_DOCS["momentum"], min=0.0, max=1.0),
        "weight_decay": Key("float", 0.0, _TRAIN_DOCS["weight_decay"], min=0.0),
        "clip_norm": Key("float", 0.0, _TRAIN_DOCS["clip_norm"], min=0.0),
        "freq_info_print": Key("int", 100, _TRAIN_DOCS["freq_info_print"], min=1),
        "freq_model_save": Key("int", 500, _TRAIN_DOCS["freq_model_save"], min=1),
        "file_model_save": Key("path", None, _TRAIN_DOCS["file_model_save"]),
        "seed": Key("int", 0, _TRAIN_DOCS["seed"], min=0),
        "deterministic": Key("bool", False, _TRAIN_DOCS["deterministic"]),
        "dir_run": Key("path", None, _TRAIN_DOCS["dir_run"]),
        "resume": Key("bool", True, _TRAIN_DOCS["resume"]),
        "dir_tensorboard": Key("path", None, _TRAIN_DOCS["dir_tensorboard"]),
        "max_checkpoints_to_keep": Key("int", 3, _TRAIN_DOCS["max_checkpoints_to_keep"], min=1),
        "validate": Key("bool", True, _TRAIN_DOCS["validate"]),
        "max_nonfinite_steps": Key("int", 10, _TRAIN_DOCS["max_nonfinite_steps"], min=1),
        "strategy": Key("str", "default", _TRAIN_DOCS["strategy"],
                        choices=("default", "mirrored", "multi_worker")),
        "precision": Key("str", "float32", _TRAIN_DOCS["precision"],
                         choices=("float32", "mixed_bfloat16")),
        "gradient_checkpointing": Key("bool", False, _TRAIN_DOCS["gradient_checkpointing"]),
        "keep_best": Key("str", "none", _TRAIN_DOCS["keep_best"], choices=("none", "dice", "tre")),
    }
    for name, value in defaults.items():
        if name not in keys:
            raise ValueError(f"train_section: no [Train] key {name!r}; keys: {', '.join(keys)}.")
        keys[name] = dataclasses.replace(keys[name], default=value)
    return keys


def derive_run_paths(cfg: Config, checkpoint_name: str = "model.ckpt") -> None:
    """Fill the unset run paths of ``[Train]``; every method's ``load`` calls it.

    ``file_model_save`` becomes ``<dir_run>/<checkpoint_name>`` (``dir_run`` unset too:
    ``runs/`` beside the INI file, label-reg's ``runs/model.ckpt``), ``dir_run`` the folder of
    ``file_model_save`` and ``dir_tensorboard`` ``<dir_run>/tensorboard``; where the schema has
    them, ``[Inference] file_model_saved`` becomes ``file_model_save`` and ``[Inference]
    dir_save`` ``<dir_run>/inference``.
    """
    train = cfg["Train"]
    if train["file_model_save"] is None:
        run = train["dir_run"] if train["dir_run"] is not None else cfg.path.parent / "runs"
        cfg._replace("Train", "file_model_save", Path(run) / checkpoint_name)
    if train["dir_run"] is None:
        cfg._replace("Train", "dir_run", Path(train["file_model_save"]).parent)
    if train["dir_tensorboard"] is None:
        cfg._replace("Train", "dir_tensorboard", Path(cfg["Train"]["dir_run"]) / "tensorboard")
    inference = cfg.schema.get("Inference", {})
    if "file_model_saved" in inference and cfg["Inference"]["file_model_saved"] is None:
        cfg._replace("Inference", "file_model_saved", cfg["Train"]["file_model_save"])
    if "dir_save" in inference and cfg["Inference"]["dir_save"] is None:
        cfg._replace("Inference", "dir_save", Path(cfg["Train"]["dir_run"]) / "inference")


def parse_method(
    path: str | os.PathLike,
    schema: Schema,
    overrides: Sequence[str] = (),
    renamed: Mapping[tuple[str, str], str] | None = None,
    checkpoint_name: str = "model.ckpt",
) -> Config:
    """:func:`parse` a method's INI file, then :func:`derive_run_paths` and
    :func:`check_train`: the part of every method's loader that the methods share.

    Raises:
        ConfigError: any problem, naming the file, section, key and value.
    """
    cfg = parse(path, schema, overrides, renamed=renamed)
    derive_run_paths(cfg, checkpoint_name)
    check_train(cfg)
    return cfg


def check_train(cfg: Config) -> None:
    """Checks of ``[Train]`` that every method shares."""
    if cfg["Train"]["learning_rate"] <= 0:
        raise fail(cfg, "Train", "learning_rate", "expected a number > 0.")
    if cfg["Train"]["warmup_steps"] >= cfg["Train"]["total_iterations"]:
        raise fail(cfg, "Train", "warmup_steps", "expected fewer steps than [Train] "
                   f"total_iterations ({cfg['Train']['total_iterations']}).")
    if cfg["Train"]["keep_best"] != "none" and not cfg["Train"]["validate"]:
        raise fail(cfg, "Train", "keep_best", "needs [Train] validate = true (the best "
                   "checkpoint is chosen on the validation figures).")


# --------------------------------------------------------------------------------------------
# labelreg's schema
# --------------------------------------------------------------------------------------------

LABELREG_SECTION_DOCS = {
    "Method": "Which method the file configures; optional here (a file without it, or without "
    "another method's own section, is label-driven registration).",
    "Data": "Training data: four folders of NIfTI files paired by file name (label-reg's layout), "
    "an optional validation set, and preprocessing.",
    "Network": "The registration network.",
    "Loss": "Label similarity (weak supervision), deformation regulariser and an optional image "
    "similarity.",
    "Train": "Optimisation, logging and checkpoints.",
    "Inference": "Registering test pairs with a trained model.",
}


def _build_labelreg_schema() -> Schema:
    label_losses = _loss_names("label")
    regularisers = _loss_names("regulariser")
    image_losses = ("none", *[n for n in _loss_names("image") if n != "none"])
    return {
        "Method": method_section("labelreg"),
        "Data": {
            "dir_moving_image": Key("path", None, "Folder of moving (e.g. MR) images."),
            "dir_fixed_image": Key("path", None, "Folder of fixed (e.g. ultrasound) images."),
            "dir_moving_label": Key(
                "path", None, "Folder of moving labels (3-D or 4-D NIfTI, one label per 4th index)."
            ),
            "dir_fixed_label": Key(
                "path", None, "Folder of fixed labels, same names and label counts as the moving."
            ),
            "dir_valid_moving_image": Key(
                "path", None, "Validation moving images (optional; unset = no validation)."
            ),
            "dir_valid_fixed_image": Key("path", None, "Validation fixed images (optional)."),
            "dir_valid_moving_label": Key("path", None, "Validation moving labels (optional)."),
            "dir_valid_fixed_label": Key("path", None, "Validation fixed labels (optional)."),
            "normalise": Key(
                "bool", True, "Min-max normalise each image to [0, 1] (a constant image becomes 0)."
            ),
            "augmentation": Key(
                "bool", True, "Random affine augmentation of moving and fixed pairs in training."
            ),
            "affine_scale": Key(
                "float", 0.1, "Largest inward move of a corner of [-1, 1]^n in the random affine.",
                min=0.0, max=0.5,
            ),
            "translation": Key(
                "float", 0.0, "Largest random shift (voxels, per axis) added to the random affine "
                "of each image, drawn independently for moving and fixed; 0 = label-reg's "
                "augmentation.", min=0.0, max=64.0,
            ),
            "intensity_gamma": Key(
                "float", 0.0, "Random gamma curve on each training image, over its own range: "
                "log(gamma) uniform in [-intensity_gamma, intensity_gamma], independently for "
                "moving and fixed (labels unchanged); 0 = none.", min=0.0, max=2.0,
            ),
            "intensity_noise": Key(
                "float", 0.0, "Largest standard deviation of the Gaussian noise added to each "
                "training image, as a fraction of its intensity range (uniform in [0, "
                "intensity_noise] per image); 0 = none.", min=0.0, max=1.0,
            ),
            "flip_axes": Key(
                "int_list", (), "Spatial axes (0-based) along which each training pair is "
                "mirrored with probability 1/2, both images and labels together (for anatomy "
                "roughly symmetric about the axis); empty = none.", min=0, max=2,
            ),
            "voxel_spacing": Key(
                "float_list", (), "Voxel size in mm per axis; empty = read from the NIfTI header.",
                min=0.0,
            ),
            "demo_data": Key(
                "path", None, "When set, the deterministic demo dataset is generated into this "
                "folder on first use (configs/demo.ini); unset for real data.",
            ),
        },
        "Network": {
            "network_type": Key(
                "str", "local", "Registration network (a name of the networks registry).",
                choices=_network_names(),
            ),
            "num_channel_initial": Key(
                "int", 0, "Channels of the first layer; 0 = the network's own default (local: 32).",
                min=0,
            ),
            "ddf_levels": Key(
                "int_list", (0, 1, 2, 3, 4), "Resolution levels summed into the DDF (0 = full).",
                min=0, max=4,
            ),
            "num_channel_segment": Key(
                "int", 8, "Width of each segmentation U-Net of centroid_align (the network "
                "that translates by the centroids of its segmentations before LocalNet).",
                min=1,
            ),
            "segment_resolution": Key(
                "float", 0.5, "Scale per axis at which centroid_align's U-Nets segment (1 = "
                "full resolution).", min=0.05, max=1.0,
            ),
            "segment_padding": Key(
                "int", 0, "Voxels of the segmentation grid by which centroid_align repeats each "
                "image's edge values on every side before its U-Net (cut from the output), so a "
                "gland cut by the field of view is not cut short by the U-Net; 0 = none.",
                min=0, max=64,
            ),
            "translation_jitter": Key(
                "float", 0.0, "Largest random shift (voxels, per axis) centroid_align adds to its "
                "centroid translation in training, so its LocalNet learns to correct the "
                "centroid error of unseen cases; 0 = none.", min=0.0, max=64.0,
            ),
            "moving_input": Key(
                "str", "resize", "How the network sees a moving image of another shape: resize "
                "(stretched to the fixed shape, label-reg) or identity (placed on the fixed grid "
                "as the zero DDF warps it, so the offset between the two input channels is the "
                "displacement to predict).", choices=("resize", "identity"),
            ),
        },
        "Loss": {
            "similarity_type": Key(
                "str", "dice", "Label similarity loss.", choices=label_losses
            ),
            "similarity_scales": Key(
                "int_list", (0, 1, 2, 4, 8, 16),
                "Gaussian sigmas (voxels) of the multi-scale label loss; 0 = unsmoothed.",
                min=0,
            ),
            "centroid_weight": Key(
                "float", 0.0, "Weight per mm of the soft centroid distance between the sampled "
                "fixed label and the warped moving label, added to the label loss (0 = "
                "label-reg's objective).", min=0.0,
            ),
            "segmentation_weight": Key(
                "float", 0.0, "Weight of the soft Dice loss of each segmentation of "
                "centroid_align against its image's label 0 (the gland in label-reg's data); "
                "0 trains its segmentations through the registration loss alone. Other "
                "networks have no segmentation: keep 0.", min=0.0,
            ),
            "segmentation_only_steps": Key(
                "int", 0, "Training steps, at the start, in which centroid_align trains its "
                "segmentations alone on their Dice loss (its LocalNet is neither run nor "
                "changed); the full objective follows, and the learning-rate schedule starts "
                "again there; 0 = none.", min=0,
            ),
            "freeze_segmentations": Key(
                "bool", False, "After segmentation_only_steps, keep centroid_align's "
                "segmentations as the first phase left them (no gradient, batch norm in "
                "inference mode) and train its LocalNet alone; false = train the whole "
                "network.",
            ),
            "regulariser_type": Key(
                "str", "bending", "Deformation regulariser.", choices=regularisers
            ),
            "regulariser_weight": Key("float", 0.5, "Weight of the regulariser.", min=0.0),
            "image_loss_type": Key(
                "str", "none", "Image similarity loss added to the label loss.",
                choices=image_losses,
            ),
            "image_loss_weight": Key(
                "float", 0.0, "Weight of the image loss (> 0 exactly when a type is set).", min=0.0
            ),
        },
        "Train": train_section(),
        "Inference": {
            "file_model_saved": Key(
                "path", None, "Checkpoint to load; unset = [Train] file_model_save."
            ),
            "dir_moving_image": Key("path", None, "Folder of moving test images."),
            "dir_fixed_image": Key("path", None, "Folder of fixed test images."),
            "dir_save": Key("path", None, "Output folder; unset = <dir_run>/inference."),
            "dir_moving_label": Key(
                "path", None, "Moving test labels to warp (optional; unset = no label warping)."
            ),
            "dir_fixed_label": Key(
                "path", None, "Fixed test labels for Dice/distance metrics (optional)."
            ),
            "minibatch_size": Key("int", 1, "Pairs per inference batch.", min=1),
            "precision": Key(
                "str", "float32", "Arithmetic of the network at inference: float32, or bfloat16 "
                "(bfloat16 convolutions; the DDF and the warp stay float32).",
                choices=("float32", "bfloat16"),
            ),
            "save_png": Key("bool", True, "Also write PNG overlays of the middle slices."),
            "label_interpolation": Key(
                "str", "linear", "Warping of labels (linear output is thresholded at 0.5 for "
                "metrics).", choices=("linear", "nearest"),
            ),
        },
    }


def _labelreg_schema() -> Schema:
    # Built on each use from the registries (no TensorFlow behind them), so a network or loss
    # registered at run time is a valid INI choice from then on.
    return _build_labelreg_schema()


def __getattr__(name: str) -> Any:
    if name == "LABELREG_SCHEMA":
        return _labelreg_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fail(cfg: Config, section: str, key: str, message: str) -> ConfigError:
    """A ConfigError naming the file, section, key and value of ``cfg``, then ``message``."""
    value = _format_value(cfg.schema[section][key], cfg[section][key])
    return ConfigError(f"{cfg.path}: [{section}] {key} = {value!r}: {message}")


def _check_pair(cfg: Config, section: str, first: str, second: str) -> None:
    a, b = cfg[section][first], cfg[section][second]
    if (a is None) != (b is None):
        unset, other = (first, second) if a is None else (second, first)
        raise fail(cfg, section, unset, f"must be set together with {other} (or both left unset).")


def _cross_check(cfg: Config) -> None:
    for section, key in (("Loss", "similarity_scales"), ("Network", "ddf_levels")):
        values = cfg[section][key]
        if not values:
            raise fail(cfg, section, key, "expected at least one value.")
        if len(set(values)) != len(values):
            raise fail(cfg, section, key, "expected distinct values.")
    spacing = cfg["Data"]["voxel_spacing"]
    if spacing and (len(spacing) not in (2, 3) or min(spacing) <= 0):
        raise fail(
            cfg, "Data", "voxel_spacing", "expected empty, or 2 or 3 sizes in mm, each > 0."
        )

    loss = cfg["Loss"]
    if loss["image_loss_type"] != "none" and loss["image_loss_weight"] <= 0:
        raise fail(
            cfg, "Loss", "image_loss_weight",
            f"expected > 0 because image_loss_type = {loss['image_loss_type']} (or set "
            "image_loss_type = none).",
        )
    if loss["image_loss_type"] == "none" and loss["image_loss_weight"] > 0:
        raise fail(
            cfg, "Loss", "image_loss_weight",
            "has no effect because image_loss_type = none; set an image loss type or weight 0.",
        )

    network = cfg["Network"]["network_type"]
    if loss["segmentation_weight"] > 0 and network != "centroid_align":
        raise fail(
            cfg, "Loss", "segmentation_weight",
            f"has no effect with network_type = {network}: only centroid_align segments; set "
            "0 or network_type = centroid_align.",
        )

    only = loss["segmentation_only_steps"]
    if loss["freeze_segmentations"] and only <= 0:
        raise fail(cfg, "Loss", "freeze_segmentations",
                   "keeps the segmentations of the first phase, so it needs "
                   "segmentation_only_steps > 0; set false or a first phase.")
    if only > 0:
        if loss["segmentation_weight"] <= 0:
            raise fail(cfg, "Loss", "segmentation_only_steps",
                       "trains the segmentations on their loss, so it needs segmentation_weight "
                       "> 0 (and network_type = centroid_align); set 0 or a weight.")
        train = cfg["Train"]
        total, warmup = train["total_iterations"], train["warmup_steps"]
        if only >= total:
            raise fail(cfg, "Loss", "segmentation_only_steps",
                       f"expected fewer than [Train] total_iterations = {total}.")
        if train["lr_schedule"] == "cosine" and min(only, total - only) <= warmup:
            raise fail(cfg, "Loss", "segmentation_only_steps",
                       f"expected both phases (this many steps, and total_iterations - it = "
                       f"{total - only}) longer than [Train] warmup_steps = {warmup}, as each "
                       "runs the cosine schedule on its own.")

    if cfg.has_section("Data"):
        data = cfg["Data"]
        for key in ("dir_moving_image", "dir_fixed_image"):
            if data[key] is None:
                raise fail(cfg, "Data", key, "is required for training (a folder of NIfTI files).")
        _check_pair(cfg, "Data", "dir_moving_label", "dir_fixed_label")
        _check_pair(cfg, "Data", "dir_valid_moving_image", "dir_valid_fixed_image")
        _check_pair(cfg, "Data", "dir_valid_moving_label", "dir_valid_fixed_label")
        if data["dir_valid_moving_label"] is not None and data["dir_valid_moving_image"] is None:
            raise fail(
                cfg, "Data", "dir_valid_moving_image",
                "must be set when validation labels are given.",
            )
        if data["dir_moving_label"] is None and loss["image_loss_type"] == "none":
            raise fail(
                cfg, "Data", "dir_moving_label",
                "no labels and no image loss: nothing to train on; set the label folders or "
                "[Loss] image_loss_type.",
            )

    if cfg.has_section("Inference"):
        inference = cfg["Inference"]
        for key in ("dir_moving_image", "dir_fixed_image"):
            if inference[key] is None:
                raise fail(cfg, "Inference", key, "is required for inference.")
        if inference["dir_fixed_label"] is not None and inference["dir_moving_label"] is None:
            raise fail(
                cfg, "Inference", "dir_moving_label",
                "must be set when dir_fixed_label is (label metrics need both).",
            )


def load(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Parse a labelreg INI file with :data:`LABELREG_SCHEMA` and check keys against each other.

    Fills the defaults that depend on other keys (``[Train] dir_run``, ``dir_tensorboard``,
    ``[Inference] file_model_saved``, ``dir_save``), then checks: learning rate > 0; non-empty,
    distinct scales and DDF levels; a voxel spacing of 2 or 3 positive sizes; an image loss has a
    weight > 0 and a weight has a loss; a present ``[Data]`` names its image folders, label and
    validation folders come in moving/fixed pairs, and there are labels or an image loss; a
    present ``[Inference]`` names its image folders.

    Args:
        path: the INI file (label-reg's ``config_demo.ini`` is accepted unchanged).
        overrides: ``"Section.key=value"`` strings.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: on any problem, naming file, section, key and value.
    """
    cfg = parse_method(path, _labelreg_schema(), overrides)
    _cross_check(cfg)
    return cfg


def docs_command(argv: Sequence[str], update: Callable[[str], object], module: str) -> int:
    """``python -m <module> DOCS_MD``: rewrite the generated reference block of one file with
    ``update(path)``; ``-h``/``--help`` or another argument count prints the usage instead
    (an option is never taken for a file name)."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print(f"usage: python -m {module} DOCS_MD   (rewrites the generated reference block)")
        return 0 if list(argv) in (["-h"], ["--help"]) else 2
    update(argv[0])
    print(f"updated {argv[0]}")
    return 0


def _main(argv: Sequence[str]) -> int:
    return docs_command(argv, update_docs, "labelreg.config")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
