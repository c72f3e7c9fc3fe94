"""Building frozen dataclasses from nested mappings (parsed YAML), checking every key.

Generic over the dataclass: field annotations drive the checks (bool, int,
float, str, Optional, Literal, tuples), and each error names the dotted key.
Used by :mod:`hbpn.train.config`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

from hbpn.errors import HBPNError


class ConfigError(HBPNError, ValueError):
    """A training config has an unknown key, a wrong type or a bad value."""


#: Keys holding paths: resolved against the YAML file's folder (or the working directory for --set).
PATH_KEYS = {"data.hr_dirs", "data.paired_dir", "data.pairs.dir", "val.dir", "train.init_from"}


def plain(value: Any) -> Any:
    """Tuples to lists (and the accumulate schedule to a mapping) for YAML/JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if (
            value
            and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value)
            and all(isinstance(v[0], int) for v in value)
        ):
            return {int(a): int(b) for a, b in value}
        return [plain(v) for v in value]
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {key!r} has a wrong type: {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if args and args[-1] is Ellipsis and args[0] == tuple[int, int]:
            return _accumulate(value, key)  # a schedule: int, or mapping from_step -> count
        if not isinstance(value, (list, tuple)):
            value = [value] if args and args[-1] is Ellipsis else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key {key!r} must list {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if tp is float:
        value = _yaml11_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    raise ConfigError(f"config key {key!r}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _yaml11_float(value: Any) -> Any:
    """'2e-4' as a float: YAML 1.1 (PyYAML) reads exponents without a dot as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _accumulate(value: Any, key: str) -> tuple[tuple[int, int], ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        pairs = [(0, value)]
    elif isinstance(value, Mapping):
        pairs = [(_coerce(k, int, key), _coerce(v, int, key)) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
        pairs = [tuple(_coerce(x, int, key) for x in p) for p in value if isinstance(p, (list, tuple))]
        if len(pairs) != len(value) or any(len(p) != 2 for p in pairs):
            raise ConfigError(f"config key {key!r} must be an int or a mapping from_step: count, got {value!r}")
    else:
        raise ConfigError(f"config key {key!r} must be an int or a mapping from_step: count, got {value!r}")
    pairs = sorted(pairs)
    if not pairs or pairs[0][0] != 0:
        pairs.insert(0, (0, 1))
    if any(n < 1 for _, n in pairs):
        raise ConfigError(f"config key {key!r}: counts must be at least 1, got {value!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


def build(cls: type, data: Any, prefix: str, base: Path | None) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config key {prefix or '(top level)'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise ConfigError(f"config key {prefix + str(k)!r} is unknown")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key {prefix + f.name!r} is required")
            continue
        key = prefix + f.name
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[f.name] = build(tp, data[f.name] or {}, key + ".", base)
            continue
        if (item := _dataclass_items(tp)) is not None:
            kwargs[f.name] = _build_items(item, data[f.name], key, base)
            continue
        value = _coerce(data[f.name], tp, key)
        if key in PATH_KEYS and value is not None and base is not None:
            value = _resolve(value, base)
        kwargs[f.name] = value
    return cls(**kwargs)


def _dataclass_items(tp: Any) -> type | None:
    """The dataclass of a ``tuple[SomeDataclass, ...]`` annotation, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis and dataclasses.is_dataclass(args[0]):
        return args[0]  # type: ignore[return-value]
    return None


def _build_items(cls: type, value: Any, key: str, base: Path | None) -> tuple[Any, ...]:
    """A list of mappings, each built as ``cls``; errors name ``key[i].field``."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key {key!r} must be a list of mappings, got {value!r}")
    out = []
    for i, item in enumerate(value):
        built = build(cls, item, f"{key}[{i}].", None)
        if base is not None:  # paths inside list items resolve like the top-level ones
            paths = {
                f.name: _resolve(getattr(built, f.name), base)
                for f in dataclasses.fields(built)
                if f"{key}.{f.name}" in PATH_KEYS and getattr(built, f.name) is not None
            }
            built = dataclasses.replace(built, **paths)
        out.append(built)
    return tuple(out)


def _resolve(value: Any, base: Path) -> Any:
    if isinstance(value, tuple):
        return tuple(_resolve(v, base) for v in value)
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=2e-4", "data.scales=[2, 4]"]`` -> nested dict; values parsed as YAML."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=2e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is set to a value elsewhere")
        value = _yaml11_float(value) if isinstance(value, str) and value.strip()[:1] in "+-.0123456789" else value
        if isinstance(value, str) and key in PATH_KEYS:
            value = str(Path(value).expanduser().resolve())
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out
