"""Strict configuration: YAML files and ``--key value`` overrides mapped onto dataclasses.

An unknown key is an error that names the key, where it came from, and the closest valid
key; a value of the wrong type (or a number that is NaN or infinite) is an error naming the
expected type. Keys given on the command line are checked as such: an unknown one is blamed on
the option, not on the YAML file. Nested dataclasses are
nested YAML mappings; on the command line they are addressed with dots (``--optim.lr 1e-4``).
Dashes and underscores in keys are the same (``--max-steps`` == ``--max_steps``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message says where and how to fix it."""


def _norm(key: str) -> str:
    return key.replace("-", "_")


def _field_map(cls: type) -> Dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _resolve_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``; raises ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, getattr(types, "UnionType", Union)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, found {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (list, List, Sequence, tuple, Tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if origin in (tuple, Tuple) and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, found {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        out = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin in (tuple, Tuple) else out
    if origin in (dict, Dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, found {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: must be a finite number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    return value


def from_dict(cls: Type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys."""
    fields = _field_map(cls)
    kwargs = {}
    for raw_key, value in data.items():
        key = _norm(str(raw_key))
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{raw_key}'{_suggest(key, fields)} "
                              f"(valid keys: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(value, _resolve_type(cls, key), f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML-serialisable) view of a dataclass tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return data


def parse_overrides(argv: Sequence[str]) -> Dict[str, Any]:
    """Turn ``["--optim.lr", "1e-4", "--max-steps", "20"]`` into a nested dict.

    Values are parsed as YAML scalars (``1e-4`` -> float, ``true`` -> bool, ``[4,8]`` -> list).
    """
    out: Dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"override '{token}': expected '--key value'")
        if "=" in token:
            key, raw = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override '{token}' has no value; write '{token} VALUE'")
            key, raw = token[2:], argv[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and raw.strip().lower() in ("none", "null", "~"):
            value = None
        node = out
        parts = [_norm(p) for p in key.split(".")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '--{key}': '{part}' is not a section")
        node[parts[-1]] = value
    return out


def merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge; ``update`` wins. Keys are normalised (dashes -> underscores)."""
    out = {_norm(k): v for k, v in base.items()}
    for raw_key, value in update.items():
        key = _norm(raw_key)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def check_fields(cls: type, data: Mapping[str, Any], *, where: str) -> None:
    """Check a partial mapping of ``cls`` fields (keys known, values of the right type) without
    building ``cls`` (whose cross-field checks need the complete set); errors name ``where``."""
    fields = _field_map(cls)
    for raw_key, value in data.items():
        key = _norm(str(raw_key))
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{raw_key}'{_suggest(key, fields)} "
                              f"(valid keys: {', '.join(sorted(fields))})")
        _coerce(value, _resolve_type(cls, key), f"{where}.{key}")


def check_options(cls: type, overrides: Mapping[str, Any], prefix: str = "") -> None:
    """Check ``--key value`` overrides against ``cls``: every key a field (dotted for nested sections),
    every value of the field's type; a :class:`ConfigError` names the option."""
    fields = _field_map(cls)
    for raw_key, value in overrides.items():
        key = _norm(str(raw_key))
        if key not in fields:
            valid = [f"--{prefix}{name}" for name in sorted(fields)]
            close = difflib.get_close_matches(f"--{prefix}{key}", valid, n=1, cutoff=0.5)
            raise ConfigError(f"command line: unknown option '--{prefix}{raw_key}'"
                              + (f"; did you mean '{close[0]}'?" if close else "")
                              + " (--help lists every option)")
        kind = _resolve_type(cls, key)
        if _is_dataclass_type(kind) and isinstance(value, Mapping):
            check_options(kind, value, prefix=f"{prefix}{key}.")
        else:
            _coerce(value, kind, f"command line: --{prefix}{key}")


def load_config(cls: Type[T], path: Optional[Union[str, Path]] = None,
                overrides: Optional[Mapping[str, Any]] = None) -> T:
    """Load ``cls`` from an optional YAML file plus overrides (overrides win).

    An unknown or ill-typed override is blamed on its ``--option``; the rest on the file.
    """
    data = load_yaml(path) if path is not None else {}
    if overrides:
        check_options(cls, overrides)
        data = merge(data, overrides)
    return from_dict(cls, data, where=str(path) if path is not None else "config")


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
