"""Which keys a run reads: a key set for a setup that never reads it (data.train with
data.format=synthetic) is an error, so that no setting is silently ignored. Imports: stdlib.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

from distrec.config.schema import ANY_VALUE, Config, ConfigError

@dataclasses.dataclass(frozen=True)
class Use:
    """Key `key` (or every key under a section `key.`) is read only when `reads(cfg)`, as `where`
    says; `decided_by` are the keys that decide it. A run that does not read it behaves as if it
    were `as_if` (when there is such a value), so setting it to that is accepted."""

    key: str
    decided_by: tuple[str, ...]
    reads: Callable[[Config], bool]
    where: str
    as_if: Any = ANY_VALUE


def _uses(cls: type, prefix: str) -> list[Use]:
    """The `read_when` declarations of `cls`'s fields (schema.py), sections included, in order."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, section = prefix + f.name, dataclasses.is_dataclass(hints[f.name])
        when = f.metadata.get("read_when")
        if when is not None:
            where = when.where + (f" ({f.metadata['why']})" if f.metadata["why"] else "")
            out.append(Use(key + "." if section else key, when.decided_by, when.test, where, f.metadata["as_if"]))
        if section:
            out += _uses(hints[f.name], key + ".")
    return out


# Every key that only some runs read, from the declarations beside the keys; a key not listed
# here is read by every run.
USES = tuple(_uses(Config, ""))


def get(cfg: Any, key: str) -> Any:
    """The value of dotted `key` in a config tree."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def use_of(key: str) -> Use | None:
    return next((u for u in USES if key == u.key or (u.key.endswith(".") and key.startswith(u.key))), None)


def unused(cfg: Config, key: str) -> str | None:
    """Why a run with `cfg` does not read `key` (None: it does, or behaves as asked anyway)."""
    use = use_of(key)
    if use is None or use.reads(cfg):
        return None
    value = get(cfg, key)
    if value == get(Config(), key) or (use.as_if is not ANY_VALUE and value == use.as_if):
        return None  # the default, or what the run does anyway: asks for nothing that is not done
    setup = ", ".join(f"{d}={text(get(cfg, d))}" for d in use.decided_by)
    hint = f" (or set it to {text(use.as_if)})" if use.as_if is not ANY_VALUE else ""
    return f"{key} is read by {use.where}; this run has {setup}: remove {key}{hint}"


def check_unused(cfg: Config, file_keys: set[str], override_keys: set[str]) -> None:
    for key in sorted(override_keys) + sorted(file_keys):
        why = unused(cfg, key)
        if why is None:
            continue
        if key in file_keys and any(d in override_keys for d in use_of(key).decided_by):
            continue  # an override changed the setup the file was written for (`train.loss=softmax`)
        raise ConfigError(why)


def text(value: Any) -> str:
    """A value as it is written in YAML and on the command line."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, tuple):
        return "[" + ", ".join(text(v) for v in value) + "]"
    return str(value)
