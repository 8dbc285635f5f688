"""The YAML loader and `a.b=value` overrides: unknown keys and ill-typed values are errors that
name the key. Imports: stdlib, yaml.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from distrec.config.reads import check_unused as _check_unused
from distrec.config.schema import Config, ConfigError


FILE_RELATIVE_KEYS = ("train", "test", "cache_dir")  # under data: paths that a config file gives relative to itself


def _resolve_data_paths(raw: dict[str, Any], base: Path, only: set[str] | None = None) -> None:
    """A config file's relative data paths point from the file's own directory, so a config
    works from any working directory (`configs/x.yaml` says `../../shared/data/...`). Paths
    given as overrides stay relative to the working directory, as on any command line."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for key in FILE_RELATIVE_KEYS:
        if only is not None and key not in only:
            continue
        value = data.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            data[key] = str((base / value).resolve())


def load(path: str | Path | None, overrides: list[str] = (), *, check_unused: bool = True) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `a.b=value` overrides.

    With `check_unused`, a key that the resolved run would not read is an error (`unused`): one
    set by an override always; one set by the file unless an override changed what decides it
    (e.g. `train.loss=softmax` on a file that sets `train.num_negs`)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            raise ConfigError(f"{where}: not valid YAML ({_yaml_problem(err)}); each line is `key: value`, "
                              f"sections indented under their name") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _resolve_data_paths(raw, path.resolve().parent)
    file_keys = _leaf_keys(raw)
    override_keys: set[str] = set()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)}); "
                              f"lists are written [a, b], strings need no quotes") from None
        node[parts[-1]] = value
        override_keys |= _leaf_keys({key: value}) if isinstance(value, dict) else {key}
    # Override paths are the working directory's; stored absolute, so config.yaml reloads anywhere.
    data_overrides = {k.partition(".")[2] for k in override_keys if k.startswith("data.")}
    if data_overrides:
        _resolve_data_paths(raw, Path.cwd(), only=data_overrides)
    cfg = build(Config, raw, prefix="")
    if check_unused:
        _check_unused(cfg, file_keys - override_keys, override_keys)
    return cfg


def _yaml_problem(err: Exception) -> str:
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return str(problem)


def _leaf_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys a (possibly nested) mapping sets."""
    keys = set()
    for name, value in raw.items():
        if isinstance(value, dict):
            keys |= _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a nested dict, type-checking each field and naming bad keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (known in this section: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - fields all have defaults
        raise ConfigError(f"{prefix or 'config'}: {err}") from err


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value if value is not None else {}, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            raise ConfigError(f"config key {key} must have {len(args)} entries, got {list(value)}")
        return tuple(_coerce(elem, v, f"{key}[{i}]") for i, (elem, v) in enumerate(zip(args, value)))
    if hint is float:
        number = value
        if isinstance(value, int) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, float):
            if not math.isfinite(number):  # nan passes every `x > 0` check below: refuse it here
                raise ConfigError(f"config key {key} must be a finite number, got {value!r}")
            return number
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key} must be {hint.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples as lists), for YAML/JSON output."""
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))
