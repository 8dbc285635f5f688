"""The one typed config tree of distrec, its YAML loader and `a.b=value` overrides.

Every choice is a frozen keyword-only dataclass field; YAML files in `configs/` mirror the
tree. Unknown keys and ill-typed values are errors that name the key. Imports: stdlib, yaml.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
OPTIMIZERS = ("row_wise_adagrad", "adagrad", "sgd", "adam")
LOSSES = ("bpr", "mrl")
SAMPLERS = ("uniform", "dns", "mns")
DATA_FORMATS = ("synthetic", "user_lines", "log")
SYNTHETIC_PRESETS = ("tiny", "small", "books")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Sizes of the synthetic generator; a field left at None takes the preset's value."""

    preset: str = "small"
    num_users: int | None = None
    num_items: int | None = None
    num_interactions: int | None = None
    num_categories: int | None = None
    num_subcategories: int | None = None  # per category
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity within a sub-category
    seed: int = 7

    def __post_init__(self) -> None:
        _check_choice("data.synthetic.preset", self.preset, SYNTHETIC_PRESETS)
        for name in ("num_users", "num_items", "num_interactions", "num_categories", "num_subcategories"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"data.synthetic.{name} must be positive, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where interactions come from and how they are split."""

    format: str = "synthetic"
    train: str | None = None  # user_lines: train file; log: the interaction log
    test: str | None = None  # user_lines: test file
    delimiter: str | None = None  # log: one of tab, comma, pipe, space; None = detect
    header: bool | None = None  # log: None = detect (a first line that is not numeric)
    test_fraction: float = 0.2  # log: per-user random split
    valid_fraction: float = 0.1  # share of each user's training items held out for validation
    seed: int = 2022
    cache_dir: str | None = None  # Parquet dataset; None = <run_dir>/data
    # user_lines: a test user without training items is an error, or dropped with a count
    # (amazon-phones has 4 such users among 20,899 test users).
    cold_test_users: str = "error"
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, DATA_FORMATS)
        _check_choice("data.cold_test_users", self.cold_test_users, ("error", "drop"))
        if self.format == "user_lines" and (self.train is None or self.test is None):
            raise ConfigError("data.format=user_lines needs data.train and data.test")
        if self.format == "log" and self.train is None:
            raise ConfigError("data.format=log needs data.train (the log file)")
        names = {"tab": "\t", "comma": ",", "pipe": "|", "space": " "}
        if self.delimiter in names:  # spelled out, since a bare tab is awkward on a command line
            object.__setattr__(self, "delimiter", names[self.delimiter])
        if self.delimiter is not None and self.delimiter not in names.values():
            raise ConfigError(f"data.delimiter must be tab, comma, pipe or space, got {self.delimiter!r}")
        for name in ("test_fraction", "valid_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"data.{name} must be in [0, 1), got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Embedding tables and matryoshka levels."""

    dim: int = 64
    levels: tuple[int, ...] = (4, 8, 16, 32, 64)
    level_weights: tuple[float, ...] | None = None  # None = 1/L each
    collection: str = "bag"  # bag: EmbeddingBagCollection; sequence: EmbeddingCollection
    user_sharding: str = "table_wise"
    item_sharding: str = "table_wise"

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ConfigError(f"model.dim must be positive, got {self.dim}")
        if not self.levels:
            raise ConfigError("model.levels must not be empty")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:])) or self.levels[0] <= 0:
            raise ConfigError(f"model.levels must be positive and strictly increasing, got {list(self.levels)}")
        if self.levels[-1] != self.dim:
            raise ConfigError(
                f"model.levels must end at model.dim={self.dim} (the full dimension), got {list(self.levels)}"
            )
        if self.level_weights is not None and len(self.level_weights) != len(self.levels):
            raise ConfigError(
                f"model.level_weights has {len(self.level_weights)} entries for {len(self.levels)} levels"
            )
        _check_choice("model.collection", self.collection, ("bag", "sequence"))
        _check_choice("model.user_sharding", self.user_sharding, SHARDING_TYPES)
        _check_choice("model.item_sharding", self.item_sharding, SHARDING_TYPES)

    @property
    def weights(self) -> tuple[float, ...]:
        if self.level_weights is not None:
            return tuple(self.level_weights)
        return tuple(1.0 / len(self.levels) for _ in self.levels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation: loss, sampler, fused optimizer, schedule."""

    epochs: int = 30
    batch_size: int = 2048  # global: split evenly over ranks
    loss: str = "mrl"
    sampler: str = "mns"
    num_negs: int = 16  # candidates per hard negative (DNS / MNS)
    mns_pool: str = "per_level"  # per_level: a fresh block of candidates per level (paper); shared
    optimizer: str = "row_wise_adagrad"
    lr: float = 0.2  # tuned for row-wise Adagrad on Amazon-Phones (docs/results.md)
    eps: float = 1e-8
    l2: float = 0.02  # on the batch embeddings (as in common BPR code), tuned with lr
    seed: int = 2022
    # After early stopping, train a fresh model on train + validation for the selected number
    # of epochs and test that one (the validation split then only picks the epoch count).
    refit: bool = False

    def __post_init__(self) -> None:
        _check_choice("train.loss", self.loss, LOSSES)
        _check_choice("train.sampler", self.sampler, SAMPLERS)
        _check_choice("train.mns_pool", self.mns_pool, ("per_level", "shared"))
        _check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        for name in ("epochs", "batch_size", "num_negs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.l2 < 0:
            raise ConfigError(f"train.l2 must be >= 0, got {self.l2}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Full-ranking evaluation and early stopping."""

    ks: tuple[int, ...] = (10, 20, 50)
    every_epochs: int = 1
    patience: int = 5  # evaluations without a better validation score before stopping
    select_metric: str = "recall@20"  # at full dimension, on validation
    track_test: bool = False  # also evaluate test at every evaluation (reporting only, never selection)
    chunk_mb: float = 256.0  # score-matrix memory per block of users

    def __post_init__(self) -> None:
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive, got {list(self.ks)}")
        if self.every_epochs <= 0 or self.patience <= 0 or self.chunk_mb <= 0:
            raise ConfigError("eval.every_epochs, eval.patience and eval.chunk_mb must be positive")
        name, _, k = self.select_metric.partition("@")
        if name not in ("recall", "ndcg") or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"eval.select_metric must be recall@K or ndcg@K with K in eval.ks, got {self.select_metric!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The whole run."""

    run_dir: str = "runs/default"
    device: str = "auto"  # auto: cuda + nccl when a GPU is visible, else cpu + gloo
    progress: bool = True
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `a.b=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(text) if text != "" else None
    return build(Config, raw, prefix="")


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
        (elem, _) = typing.get_args(hint)
        return tuple(_coerce(elem, v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
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
