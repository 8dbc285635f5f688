"""A hyper-parameter search space as data: a YAML file mapping a config key to a distribution.

    train.lr: {log_uniform: [0.02, 1.0]}
    train.l2: {log_uniform: [1.0e-4, 0.1]}
    train.loss: {choice: [mrl, bpr]}
    eval.patience: {int: [2, 6]}

Kinds: `uniform` and `log_uniform` (floats, bounds inclusive), `int` (inclusive), `choice`
(scalars). Holds the parser, the check of every key and value against the real config
(`config.load`), drawing a point from an Optuna trial (duck-typed, so this module does not
need Optuna) and turning a point into `key=value` overrides. Imports: config, stdlib, yaml.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Protocol

import yaml

from distrec import config

KINDS = ("uniform", "log_uniform", "int", "choice")
Scalar = str | int | float | bool


class SpaceError(ValueError):
    """The space file is wrong; the message names the file and the key."""


class Trial(Protocol):
    """The part of `optuna.trial.Trial` that drawing a point uses."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_categorical(self, name: str, choices: list[Scalar]) -> Scalar: ...


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config key: `kind` with `low`/`high` bounds, or the `choices` of a choice."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Scalar, ...] = ()

    def samples(self) -> tuple[Scalar, ...]:
        """Values that must all be valid for the config: both bounds, or every choice."""
        return self.choices if self.kind == "choice" else (self.low, self.high)

    def holds(self, value: Any) -> bool:
        """Whether `value` is a point of this distribution (a config's own value, say)."""
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial: Trial) -> Scalar:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "log_uniform")


def load(path: str | Path) -> list[Param]:
    """Parse and shape-check a space file (no config needed); errors name the file and key."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpaceError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: must map config keys to distributions, e.g. 'train.lr: {{log_uniform: [0.01, 1.0]}}'")
    return [_param(str(path), str(key), spec) for key, spec in raw.items()]


def _param(where: str, key: str, spec: Any) -> Param:
    def fail(message: str) -> SpaceError:
        return SpaceError(f"{where}: {key}: {message}")

    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise fail(f"must be one of {{{'|'.join(KINDS)}: ...}}, got {spec!r}")
    kind, value = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise fail(f"choice needs a non-empty list, got {value!r}")
        if any(not isinstance(v, (str, int, float, bool)) for v in value):
            raise fail(f"choice values must be scalars (str, number, bool), got {value!r}")
        if len(set(map(repr, value))) != len(value):
            raise fail(f"choice values repeat: {value!r}")
        return Param(key, kind, choices=tuple(value))
    if not isinstance(value, list) or len(value) != 2:
        raise fail(f"{kind} needs [low, high], got {value!r}")
    low, high = (_number(v, kind) for v in value)
    if low is None or high is None or not low < high:
        raise fail(f"{kind} needs numbers low < high{' (integers)' if kind == 'int' else ''}, got {value!r}")
    if kind == "log_uniform" and low <= 0:
        raise fail(f"log_uniform needs low > 0, got {low}")
    return Param(key, kind, low=low, high=high)


def _number(value: Any, kind: str) -> float | int | None:
    if isinstance(value, bool):
        return None
    if kind == "int":
        return value if isinstance(value, int) else None
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def check(space: list[Param], where: str, config_path: str | Path | None, overrides: list[str],
          reserved: list[str]) -> None:
    """Every key is a config key and every bound or choice a valid value for it, on top of
    `config_path` with `overrides`; none is `reserved` (set by the search) or also fixed in
    `overrides`. Checked before anything is launched, so a typo costs no trial."""
    fixed = {o.partition("=")[0] for o in overrides}
    for param in space:
        if param.key in reserved:
            raise SpaceError(f"{where}: {param.key}: set by the search itself, cannot be searched")
        if param.key in fixed:
            raise SpaceError(f"{where}: {param.key}: is both searched and fixed by an override; drop one")
        for value in param.samples():
            try:
                config.load(config_path, [*overrides, to_override(param.key, value)])
            except config.ConfigError as err:
                raise SpaceError(f"{where}: {param.key}: {err}") from None


def suggest(space: list[Param], trial: Trial) -> dict[str, Scalar]:
    """One point of the space, in file order."""
    return {param.key: param.suggest(trial) for param in space}


def to_override(key: str, value: Scalar) -> str:
    """`key=value` that `config.load` reads back as the same value (its values are YAML)."""
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 reads 1e-05 as a string
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
    elif isinstance(value, str) and yaml.safe_load(value) == value:
        text = value
    else:  # bools, ints, and strings YAML would read as something else ("true", "1")
        text = json.dumps(value)
    return f"{key}={text}"


def to_overrides(point: dict[str, Scalar]) -> list[str]:
    return [to_override(key, value) for key, value in point.items()]
