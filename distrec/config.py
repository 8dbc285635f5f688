"""The one typed config tree of distrec, its YAML loader and `a.b=value` overrides.

Every choice is a frozen keyword-only dataclass field; YAML files in `configs/` mirror the
tree. Unknown keys and ill-typed values are errors that name the key. Imports: stdlib, yaml.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
OPTIMIZERS = ("row_wise_adagrad", "adagrad", "sgd", "adam")
LOSSES = ("bpr", "mrl", "softmax")
SAMPLERS = ("uniform", "dns", "mns")
RESUME_MODES = ("auto", "never", "must")  # train.resume (train.prepare_resume)
# "synthetic" and the formats of ingest.READERS (listed here: config.py must not import pyarrow;
# tests/unit/test_formats.py checks that the two agree).
DATA_FORMATS = ("synthetic", "user_lines", "log", "parquet", "recbole")
NAMED_COLUMN_FORMATS = ("parquet", "recbole")  # formats whose columns data.columns names
TIME_FORMATS = ("log", "parquet", "recbole")  # formats that model.task=multi_interest can read
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
class SequenceConfig:
    """How a time-ordered log becomes behaviour sequences (task=multi_interest, REMI / ComiRec)."""

    # True: file order is time order within each user (Video.txt); False: stable sort on the
    # timestamp column (a log's 4th field, as ml-100k u.data; parquet / recbole: the column
    # data.columns.timestamp), ties keep file order. None (default): sort by the timestamp
    # column where a parquet / recbole input has one, file order otherwise (and for a log).
    time_ordered: bool | None = None
    k_core: int = 0  # 0 = off; else drop items with < k interactions, then users with < k
    k_core_passes: int = 1  # passes of that filter; the REMI reference does one; 0 = until stable
    max_len: int = 20  # history length n
    min_train_position: int = 1  # first target position of a training user (the reference uses 4)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / valid / test shares of the users
    history_fraction: float = 0.8  # eval users: the first int(f * len) items (at least 1) are history

    def __post_init__(self) -> None:
        key = "data.sequence"
        for name, low in (("k_core", 0), ("k_core_passes", 0), ("max_len", 1), ("min_train_position", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{key}.{name} must be an integer >= {low}, got {getattr(self, name)!r}")
        split = tuple(self.split)
        if len(split) != 3 or any(not 0.0 <= x <= 1.0 for x in split) or abs(sum(split) - 1.0) > 1e-6:
            raise ConfigError(f"{key}.split must be three shares in [0, 1] (train, valid, test) that sum to 1, got {list(split)}")
        if split[0] <= 0.0:
            raise ConfigError(f"{key}.split must give training users a positive share, got {list(split)}")
        if not 0.0 < self.history_fraction < 1.0:
            raise ConfigError(f"{key}.history_fraction must be in (0, 1), got {self.history_fraction}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ColumnsConfig:
    """Column names of a parquet / recbole input; None takes the format's default.

    Defaults: parquet user, item, timestamp, rating; recbole user_id, item_id, timestamp, rating
    (the name before `:type` in an .inter header). Columns are read only when needed: the
    timestamp to order sequences (where present, or an error when named here), the rating for
    data.min_rating.
    """

    user: str | None = None
    item: str | None = None
    timestamp: str | None = None
    rating: str | None = None

    def __post_init__(self) -> None:
        names = {}
        for role in ("user", "item", "timestamp", "rating"):
            value = getattr(self, role)
            if value is None:
                continue
            if not value.strip():
                raise ConfigError(f"data.columns.{role} must be a column name, got {value!r}")
            if value in names:
                raise ConfigError(f"data.columns.{role} and data.columns.{names[value]} both name column {value!r}")
            names[value] = role

    @property
    def is_set(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where interactions come from and how they are split."""

    format: str = "synthetic"  # synthetic, user_lines, log, parquet, recbole (README "Data")
    # user_lines: train file; log: the interaction log; parquet: a file or a directory of
    # *.parquet files, read as one data set; recbole: an .inter file or a directory of them.
    train: str | None = None
    # user_lines: the test file (required); log / parquet / recbole: optional test file in the
    # same format (then no random split; data.test_fraction is not used).
    test: str | None = None
    columns: ColumnsConfig = dataclasses.field(default_factory=ColumnsConfig)  # parquet / recbole
    # Keep interactions with rating >= min_rating (log: the 3rd column; parquet / recbole: the
    # rating column); None: the rating is neither read nor used.
    min_rating: float | None = None
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
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format, DATA_FORMATS)
        _check_choice("data.cold_test_users", self.cold_test_users, ("error", "drop"))
        if self.format == "user_lines" and (self.train is None or self.test is None):
            raise ConfigError("data.format=user_lines needs data.train and data.test")
        if self.format in ("log", *NAMED_COLUMN_FORMATS) and self.train is None:
            raise ConfigError(f"data.format={self.format} needs data.train (the {self.format} input)")
        if self.columns.is_set and self.format not in NAMED_COLUMN_FORMATS:
            raise ConfigError(f"data.columns names the columns of parquet and recbole inputs; data.format={self.format} "
                              f"has none (a log's columns go by position: user, item, rating, timestamp)")
        if self.min_rating is not None and self.format not in ("log", *NAMED_COLUMN_FORMATS):
            raise ConfigError(f"data.min_rating filters on a rating column; data.format={self.format} has none")
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
    """Embedding tables, matryoshka levels and (multi_interest) the routing tower."""

    task: str = "mrl4rec"  # mrl4rec: MF over user/item tables; multi_interest: REMI / ComiRec-SA over sequences
    dim: int = 64
    levels: tuple[int, ...] = (4, 8, 16, 32, 64)
    level_weights: tuple[float, ...] | None = None  # None = 1/L each
    collection: str = "bag"  # bag: EmbeddingBagCollection; sequence: EmbeddingCollection
    user_sharding: str = "table_wise"
    item_sharding: str = "table_wise"
    num_interests: int = 4  # multi_interest: K
    router: str = "self_attentive"  # multi_interest: self_attentive (ComiRec-SA) or capsule (MIND-style)
    hidden_factor: int = 4  # self_attentive: attention hidden size = hidden_factor * dim
    positional: bool = True  # self_attentive: learnable positions added to the attention input
    num_blocks: int = 2  # sasrec: self-attention blocks
    num_heads: int = 1  # sasrec: attention heads (must divide model.dim)
    # sasrec: on the input, attention weights and feed-forward outputs (default 0.2);
    # self_attentive: on the history embeddings while training (default 0, as in ComiRec / REMI)
    dropout: float | None = None

    @property
    def router_dropout(self) -> float:
        """`dropout` with its per-router default filled in."""
        if self.dropout is not None:
            return self.dropout
        return 0.2 if self.router == "sasrec" else 0.0

    def __post_init__(self) -> None:
        _check_choice("model.task", self.task, ("mrl4rec", "multi_interest"))
        _check_choice("model.router", self.router, ("self_attentive", "capsule", "sasrec"))
        if self.router == "sasrec":
            if self.num_interests != 1:
                raise ConfigError(f"model.router=sasrec gives one vector per user: set model.num_interests=1, got {self.num_interests}")
            if self.num_blocks < 1 or self.num_heads < 1 or self.dim % self.num_heads:
                raise ConfigError(f"model.num_blocks must be >= 1 and model.num_heads >= 1 dividing model.dim={self.dim}, "
                                  f"got {self.num_blocks} and {self.num_heads}")
        if self.dropout is not None:
            if self.router == "capsule":
                raise ConfigError("model.dropout is read by model.router=sasrec and self_attentive, not capsule")
            if not 0.0 <= self.dropout < 1.0:
                raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.num_interests <= 0:
            raise ConfigError(f"model.num_interests must be positive, got {self.num_interests}")
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
    # Weight each coordinate's L2 like the levels that use it (losses.level_l2_weights); false
    # is the uniform L2 of the MRL4Rec reference code, which starves the last block.
    l2_per_level: bool = True
    # Weight of the whole-catalogue term (losses.gramian_penalty, as in iALS): the mean squared
    # score over every item, at every level, once per user per epoch (each of a user's pairs
    # carries 1 / its pair count). Looks the whole item table up every step (0 = off).
    gramian: float = 0.0
    seed: int = 2022
    # After early stopping, train a fresh model on train + validation for the selected number
    # of epochs and test that one (the validation split then only picks the epoch count).
    refit: bool = False
    checkpoint_every: int = 0  # epochs between resumable checkpoints in <run_dir>/checkpoint (0 = off)
    # Mid-epoch checkpoints: after every N-th training step / the first step M minutes after the
    # previous checkpoint (0 = off). A resumed run continues at exactly the next batch. SIGTERM
    # (preemption) always writes one and exits with code 143.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0
    # auto: continue from <run_dir>/checkpoint/last when it exists (what a restarted job needs),
    # start afresh otherwise; never: always afresh (an old checkpoint is deleted); must: resume or stop.
    resume: str = "auto"
    # loss=softmax: negatives shared by a rank's local batch
    num_sampled: int = 0  # 0 = 10 x the local batch size; >= the item count: every item (exact softmax)
    neg_distribution: str = "uniform"  # uniform, or log_uniform (popularity rank) with logQ correction
    gather_negatives: bool = False  # widen each rank's pool with every rank's negatives
    ihn_beta: float = 0.0  # interest-aware hard negatives; 0 = plain sampled softmax
    rr_lambda: float = 0.0  # routing regularisation weight (per-user mean scaling, see losses.py)
    dense_optimizer: str = "adam"  # for the routing tower (dense, DDP); Adam runs on CPU for dense tensors
    dense_lr: float = 1e-3

    def __post_init__(self) -> None:
        _check_choice("train.loss", self.loss, LOSSES)
        _check_choice("train.sampler", self.sampler, SAMPLERS)
        _check_choice("train.mns_pool", self.mns_pool, ("per_level", "shared"))
        _check_choice("train.optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("train.neg_distribution", self.neg_distribution, ("uniform", "log_uniform"))
        _check_choice("train.dense_optimizer", self.dense_optimizer, ("adam", "adagrad", "sgd"))
        _check_choice("train.resume", self.resume, RESUME_MODES)
        for name in ("checkpoint_every", "checkpoint_every_steps", "checkpoint_every_minutes"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):  # also refuses nan
                raise ConfigError(f"train.{name} must be a finite number >= 0 (0 = off), got {value}")
        if self.num_sampled < 0 or self.ihn_beta < 0 or self.rr_lambda < 0:
            raise ConfigError("train.num_sampled, train.ihn_beta and train.rr_lambda must be >= 0")
        for name in ("epochs", "batch_size", "num_negs"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.l2 < 0:
            raise ConfigError(f"train.l2 must be >= 0, got {self.l2}")
        if not self.gramian >= 0:  # also refuses nan
            raise ConfigError(f"train.gramian must be >= 0, got {self.gramian}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Full-ranking evaluation and early stopping."""

    ks: tuple[int, ...] = (10, 20, 50)
    every_epochs: int = 1
    patience: int = 5  # evaluations without a better validation score before stopping
    select_metric: str = "recall@20"  # at full dimension, on validation
    track_test: bool = False  # also evaluate test at every evaluation (reporting only, never selection)
    chunk_mb: float = 256.0  # score-matrix memory per block of users
    mask_history: bool = True  # multi_interest: mask every item of the user's history part
    # Validate on a fixed, seeded sample of this many users (None: all of them); the metrics
    # then carry their standard error ("<metric>_se"). Test always scores every user.
    valid_users: int | None = None

    def __post_init__(self) -> None:
        if self.valid_users is not None and self.valid_users <= 0:
            raise ConfigError(f"eval.valid_users must be positive (or null for every user), got {self.valid_users}")
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive, got {list(self.ks)}")
        if self.every_epochs <= 0 or self.patience <= 0 or self.chunk_mb <= 0:
            raise ConfigError("eval.every_epochs, eval.patience and eval.chunk_mb must be positive")
        name, _, k = self.select_metric.partition("@")
        if name not in ("recall", "ndcg", "hitrate") or not k.isdigit() or int(k) not in self.ks:
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
        multi = self.model.task == "multi_interest"
        if multi and self.train.loss != "softmax":
            raise ConfigError(f"model.task=multi_interest trains with train.loss=softmax, got {self.train.loss}")
        if multi and self.data.format not in TIME_FORMATS:
            raise ConfigError(f"model.task=multi_interest reads time-ordered interactions: data.format must be "
                              f"{', '.join(TIME_FORMATS)}, got {self.data.format}")
        if multi and self.data.test is not None:
            raise ConfigError("model.task=multi_interest splits users by data.sequence.split and reads no "
                              "data.test; unset data.test")


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
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[T, ...]
            args = (args[0],) * len(value)
        elif len(args) != len(value):
            raise ConfigError(f"config key {key} must have {len(args)} entries, got {list(value)}")
        return tuple(_coerce(elem, v, f"{key}[{i}]") for i, (elem, v) in enumerate(zip(args, value)))
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
