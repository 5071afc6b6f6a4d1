"""Dataclasses built from YAML mappings: every key known, every value of its field's type.

The machinery behind training configs (`pgnet.config`) and sweep files: an unknown key or a
value of the wrong type is a ConfigError that names the key and the file, so a typo never
silently falls back to a default. `--set key=value` overrides go through `apply_overrides`.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from pgnet.errors import ConfigError


def build_dataclass(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    """`cls(**values)` with every key known and every value of its field's type, else a ConfigError
    naming the key (`prefix` + name) and `source`. Fields with `init=False` are not keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name, source) for name, value in values.items()}
    return cls(**kwargs)


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check `value` against a dataclass field's type; convert lists to tuples."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise ConfigError(f"{source}: {key}={value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return build_dataclass(annotation, value, source, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(v, t, key, source) for v, t in zip(value, args))
    if annotation is float:
        return _as_float(value, key, source)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{source}: '{key}' must be {annotation.__name__}, got {value!r}")
    return value


def _as_float(value: Any, key: str, source: str) -> float:
    """A finite number; also text such as `1e-3`, which YAML 1.1 (PyYAML) reads as a string, not a float."""
    number = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):  # not a number; an integer beyond float's range
            pass
    if number is None or not math.isfinite(number):
        raise ConfigError(f"{source}: '{key}' must be a finite number, got {value!r}")
    return number


def plain(value: Any) -> Any:
    """Tuples to lists, recursively: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"norm": "gn"}}` -> `{"model.norm": "gn"}`."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def parse_value(text: str) -> Any:
    """A `--set` value, read as YAML: `0.1`, `true`, `[256, 192]`, `null`, `gn`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Apply `{"model.norm": "gn"}` or `["model.norm=gn"]` to a nested dict (a copy)."""
    out = copy.deepcopy(values)
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}")
            key, text = item.split("=", 1)
            pairs[key.strip()] = parse_value(text)
        overrides = pairs
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
        node[parts[-1]] = value
    return out


def read_yaml(file: Path, source: str | None = None) -> Any:
    """A YAML file's contents; invalid YAML is a ConfigError naming `source` (default: the file)."""
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source or file}: not valid YAML: {exc}") from None


def resolve_bundled(path: str | Path, bundled_dir: Path, kind: str) -> Path:
    """A file path, or the name of a file bundled in `bundled_dir` (`cpu_small`, `smoke`)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    bundled = Path(bundled_dir) / (candidate.name if candidate.suffix else f"{candidate.name}.yaml")
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in Path(bundled_dir).glob("*.yaml")))
    raise ConfigError(f"{kind} file '{path}' not found (bundled {kind}s: {known})")
