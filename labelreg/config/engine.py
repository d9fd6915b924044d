"""The typed INI engine: schemas of :class:`Key` s, :func:`parse`, the read-only :class:`Config`.

A *schema* maps section names to key names to :class:`Key` descriptions (kind, default, one-line
doc, allowed choices, inclusive bounds). :func:`parse` reads an INI file with the standard
library's :mod:`configparser` (no interpolation, no inline comments), converts every value to its
kind without ever evaluating it, applies ``Section.key=value`` overrides, and returns a read-only
:class:`Config`. Anything unknown, malformed or out of range raises
:class:`labelreg.errors.ConfigError` naming the file, the section, the key, the value received and
the expected form, with a "did you mean ...?" hint for misspelt names.

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
import difflib
import math
import os
import tempfile
import types
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelreg.errors import ConfigError

__all__ = ["Key", "Schema", "REQUIRED", "KINDS", "Config", "parse", "fail", "check_pair",
           "read_ini"]


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


def read_ini(path: Path) -> configparser.ConfigParser:
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


def _unknown_key(where: str, section: str, key: str, text: str, schema: Schema,
                 owners: Mapping[tuple[str, str], str] | None) -> ConfigError:
    owner = (owners or {}).get((section.lower(), key.lower()))
    if owner is not None:
        return ConfigError(f"{where}: [{section}] {key} = {text!r}: an option of {owner}; "
                           "remove it or select that component.")
    hint = _did_you_mean(key, schema[section])
    return ConfigError(f"{where}: [{section}] {key} = {text!r}: unknown key in section "
                       f"[{section}]; expected one of {', '.join(schema[section])}.{hint}")


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
    owners: Mapping[tuple[str, str], str] | None = None,
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
        owners: ``(section, key)`` (lower case) -> the component that declares the key, for
            the message of a key this schema lacks (see :func:`parse_with_components`).

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
    parser = read_ini(path)
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

    # "--set Section.key=" (an empty value) of a key the schema lacks, e.g. an option of the
    # component that another override just deselected, removes the file's entry rather than
    # failing: a command line can switch a component without editing the file.
    parsed = [(override, *_parse_override(override)) for override in overrides]
    removed = {(section_text.lower(), key_text.lower())
               for _, section_text, key_text, text in parsed if not text.strip()}
    dropped = set()

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
            if name is None and (section.lower(), file_key.lower()) in removed:
                dropped.add((section.lower(), file_key.lower()))
                continue
            if name is None:
                raise _unknown_key(str(path), section, file_key, text, schema, owners)
            if name in raw[section]:
                raise ConfigError(f"{path}: [{section}] {name} is set twice (as {file_key}).")
            raw[section][name] = (text, str(path))

    for override, section_text, key_text, text in parsed:
        where = f"{path}: override {override!r}"
        section = _lookup(section_text, schema)
        if section is None:
            hint = _did_you_mean(section_text, schema)
            raise ConfigError(
                f"{where}: unknown section [{section_text}]; expected one of "
                f"{', '.join(f'[{s}]' for s in schema)}.{hint}"
            )
        name = _lookup(key_text, schema[section]) or rename(section, key_text, where)
        if name is None and (section.lower(), key_text.lower()) in dropped:
            continue  # removed from the file above
        if name is None:
            raise _unknown_key(where, section, key_text, text, schema, owners)
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


def fail(cfg: Config, section: str, key: str, message: str) -> ConfigError:
    """A ConfigError naming the file, section, key and value of ``cfg``, then ``message``."""
    value = _format_value(cfg.schema[section][key], cfg[section][key])
    return ConfigError(f"{cfg.path}: [{section}] {key} = {value!r}: {message}")


def check_pair(cfg: Config, section: str, first: str, second: str) -> None:
    """Two keys that must be set together (or both left unset)."""
    a, b = cfg[section][first], cfg[section][second]
    if (a is None) != (b is None):
        unset, other = (first, second) if a is None else (second, first)
        raise fail(cfg, section, unset, f"must be set together with {other} (or both left unset).")
