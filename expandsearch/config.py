"""Typed run configuration: YAML files and ``a.b.c=value`` overrides turned into nested frozen dataclasses.

Every tunable in the project lives in a ``@dataclass(frozen=True)`` whose fields carry an attribute docstring and
whose ``__post_init__`` validates them (``EpisodeConfig``, ``BCConfig``, …). This module is the one bridge from
text to those objects, so a long run never starts on a typo:

- :func:`load_config` layers the dataclass defaults, a YAML file (partial; sections are nested mappings) and
  dotted command-line overrides, in that order.
- :func:`config_from_dict` checks every key against the fields (an unknown key fails with a "did you mean"), and
  every value against the annotated type (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple``,
  ``Literal``, nested dataclasses, ``Path``) before ``dataclasses.replace`` builds the objects; a section given
  as a partial mapping keeps its other values. Errors of ``__post_init__`` come back naming their section.
- :func:`config_to_dict` is the inverse (plain YAML-able data), so a run can save the exact config it used.
- :func:`field_docs` / :func:`describe_config` read the attribute docstrings back (with :mod:`ast`, since Python
  keeps no reference to them) for ``--help``-style listings, so the docs live in one place: the dataclass.

Every problem raises :class:`ConfigError`, a ``ValueError`` whose message names the dotted key and, when loading,
where the value came from (the file or the override).
"""

from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import difflib
import functools
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file, override or value that cannot make a valid config; ``key`` is the dotted key at fault."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of ``cls``, then the YAML file at ``path`` (if any), then the ``key=value`` overrides."""
    file_data = _read_yaml(Path(path)) if path is not None else {}
    try:
        return config_from_dict(cls, apply_overrides(file_data, overrides))
    except ConfigError as error:
        sources = _sources(error.key, path, file_data, overrides)
        if not sources:
            raise
        raise ConfigError(f"{error} (from {', '.join(sources)})", error.key) from error


def config_from_dict(cls: type[T], data: Mapping[str, Any], *, base: T | None = None) -> T:
    """``base`` (default ``cls()``) with the values of the (partial, nested) mapping ``data``; checked by type."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"config must be a mapping of keys to values, got {_show(data)}", "")
    return typing.cast(T, _build(cls() if base is None else base, data, ""))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each ``a.b.c=value`` set; values are YAML (``3``, ``true``, ``[1, 2]``, ``null``)."""
    result = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"override {override!r} is not of the form key=value (e.g. rl.lr=1e-6)", key.strip())
        nested: Any = _parse_value(raw)
        for part in reversed(parts[1:]):
            nested = {part.strip(): nested}
        try:
            _merge(result, {parts[0].strip(): nested})
        except ConfigError as error:
            raise ConfigError(f"override {override!r}: {error}", key.strip()) from error
    return result


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested data (sections as dicts, tuples as lists, paths as strings), ready for YAML."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def field_docs(cls: type) -> dict[str, str]:
    """Dotted key → attribute docstring of each documented field, sections (and their own docs) included."""
    docs: dict[str, str] = {}
    class_docs = _class_docs(cls)
    for name, tp in _init_fields(cls).items():
        if name in class_docs:
            docs[name] = class_docs[name]
        section = _section_type(tp)
        if section is not None:
            docs.update({f"{name}.{key}": doc for key, doc in field_docs(section).items()})
    return docs


def describe_config(cls: type, config: Any | None = None) -> str:
    """One ``key = value  # doc`` line per leaf of ``config`` (default ``cls()``), values as an override takes them."""
    docs = field_docs(cls)
    lines = []
    for key, value in _leaves(cls() if config is None else config, ""):
        doc = docs.get(key, "").strip().split("\n")[0]
        lines.append(f"{key} = {_yaml_scalar(value)}" + (f"  # {doc}" if doc else ""))
    return "\n".join(lines)


# --- building ------------------------------------------------------------------------------------------------


def _build(current: Any, data: Mapping[Any, Any], prefix: str) -> Any:
    cls: type = type(current)
    fields = _init_fields(cls)
    changes = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(_unknown_key_message(key, name, list(fields), prefix), key)
        changes[name] = _coerce(fields[name], value, getattr(current, name), key)
    try:
        return dataclasses.replace(current, **changes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        section = prefix.rstrip(".")
        where = f"config section {section!r}" if section else f"config ({type(current).__name__})"
        raise ConfigError(f"{where}: {error}", section) from error


def _unknown_key_message(key: str, name: object, known: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    if close:
        return f"unknown config key {key!r} (did you mean {prefix + close[0]!r}?)"
    section = f" of section {prefix.rstrip('.')!r}" if prefix else ""
    return f"unknown config key {key!r}; known keys{section}: {', '.join(known)}"


def _coerce(tp: Any, value: Any, current: Any, key: str) -> Any:
    section = _section_type(tp)
    if section is not None and isinstance(value, Mapping):
        base = current if isinstance(current, section) else section()
        return _build(base, value, key + ".")
    if section is not None and not (value is None and _allows_none(tp)):
        raise ConfigError(f"config key {key!r} is a section: give a mapping of its keys, got {_show(value)}", key)
    if isinstance(value, Mapping) and tp is not Any:
        raise ConfigError(f"config key {key!r} takes a single {_type_name(tp)}, got a mapping {dict(value)!r}", key)
    return _coerce_value(tp, value, key)


def _coerce_value(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(typing.get_args(tp), value, key)
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in typing.get_args(tp)):
            return value
        choices = ", ".join(repr(choice) for choice in typing.get_args(tp))
        raise ConfigError(f"config key {key!r} must be one of {choices}, got {_show(value)}", key)
    if origin is tuple:
        return _coerce_tuple(typing.get_args(tp), value, key)
    return _coerce_scalar(tp, value, key)


def _coerce_union(args: tuple[Any, ...], value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    options = [arg for arg in args if arg is not type(None)]
    errors = []
    for option in options:
        try:
            return _coerce_value(option, value, key)
        except ConfigError as error:
            errors.append(error)
    if len(errors) == 1:
        raise errors[0]
    names = " | ".join(_type_name(arg) for arg in args)
    raise ConfigError(f"config key {key!r} expects {names}, got {_show(value)}", key)


def _coerce_tuple(args: tuple[Any, ...], value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key {key!r} expects a list, got {_show(value)}", key)
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif args and len(args) != len(value):
        raise ConfigError(f"config key {key!r} expects a list of {len(args)} values, got {len(value)}: {value!r}", key)
    if not args:  # bare ``tuple``: any elements
        return tuple(value)
    return tuple(_coerce_value(tp, item, f"{key}[{i}]") for i, (tp, item) in enumerate(zip(args, value, strict=True)))


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads exponent notation without a dot ("5e-4") as a string; it means the number
        with contextlib.suppress(ValueError):
            if isinstance(value, str) and math.isfinite(float(value)):
                return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float, bool)) or value is None:
            raise ConfigError(
                f"config key {key!r} expects a string, got {_show(value)}; quote it in YAML (e.g. '{value}')", key
            )
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {_show(value)}", key)


# --- introspection -------------------------------------------------------------------------------------------


@functools.cache
def _init_fields(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation, for the fields the constructor (and ``replace``) accepts."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _section_type(tp: Any) -> type | None:
    """The dataclass a field holds (``Sub`` or ``Sub | None``), or None for a plain value."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        sections = [arg for arg in typing.get_args(tp) if isinstance(arg, type) and dataclasses.is_dataclass(arg)]
        return sections[0] if len(sections) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


@functools.cache
def _class_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` and its bases (the string literal right after each annotated field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):  # a subclass's doc of a field wins over its base's
        docs.update(_own_docs(klass))
    return docs


def _own_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):  # built in a REPL or generated: no source, so no docs
        return {}
    node = tree.body[0]
    if not isinstance(node, ast.ClassDef):
        return {}
    docs = {}
    for stmt, following in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


# --- reading and showing -------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"cannot parse config file {path}{where}: {problem}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    if data is None:  # an empty (or all-comments) file: nothing changed
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {_show(data)}")
    return data


def _parse_value(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:  # e.g. "@x": a string the shell passed; the field's type still checks it
        return raw.strip()
    if isinstance(value, dict) and not raw.strip().startswith("{"):
        return raw.strip()  # "a: b" is text with a colon, unless written as a flow mapping
    return value


def _merge(into: dict[str, Any], data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping) and key in into and into[key] is not None:
            raise ConfigError(f"{key!r} is set to {_show(into[key])}, not a section")
        else:
            into[key] = copy.deepcopy(value) if isinstance(value, Mapping) else value


def _sources(
    key: str | None, path: str | Path | None, file_data: Mapping[str, Any], overrides: Sequence[str]
) -> list[str]:
    """Where the value at fault came from: the file and/or the overrides that touch ``key``."""
    if key is None:
        return []
    sources = [str(path)] if path is not None and _has_key(file_data, key) else []
    for override in overrides:
        target = override.partition("=")[0].strip()
        if not key or target == key or target.startswith(key + ".") or key.startswith(target + "."):
            sources.append(f"override {override!r}")
    return sources


def _has_key(data: Any, key: str) -> bool:
    for part in key.split(".") if key else ():
        if not isinstance(data, Mapping) or part.split("[")[0] not in data:
            return False
        data = data[part.split("[")[0]]
    return True


def _leaves(config: Any, prefix: str) -> list[tuple[str, Any]]:
    leaves = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not f.init:
            continue
        if dataclasses.is_dataclass(value):
            leaves.extend(_leaves(value, f"{prefix}{f.name}."))
        else:
            leaves.append((prefix + f.name, _plain(value)))
    return leaves


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return str(value) if isinstance(value, Path) else value


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000)
    return text.removesuffix("\n...\n").strip()


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
