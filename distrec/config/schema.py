"""The one typed config tree of distrec: every choice is a frozen keyword-only dataclass field,
documented by the comment beside it (which --help prints). YAML files in `configs/` mirror
the tree. Imports: stdlib.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")
OPTIMIZERS = ("row_wise_adagrad", "adagrad", "sgd", "adam")
LOSSES = ("bpr", "mrl", "softmax")
SAMPLERS = ("uniform", "dns", "mns")
RESUME_MODES = ("auto", "never", "must")  # train.resume (run.checkpoint_manager.prepare_resume)
# "synthetic" and the formats of ingest.READERS (listed here: config.py must not import pyarrow;
# tests/unit/test_formats.py checks that the two agree).
DATA_FORMATS = ("synthetic", "user_lines", "log", "parquet", "recbole")
NAMED_COLUMN_FORMATS = ("parquet", "recbole")  # formats whose columns data.columns names
TIME_FORMATS = ("log", "parquet", "recbole")  # formats that model.task=multi_interest can read
SYNTHETIC_PRESETS = ("tiny", "small", "books")
# What each task's evaluation computes (eval.evaluate.EvalSpec.of; by name, evaluate.METRIC_VALUES).
METRICS = {"mrl4rec": ("recall", "ndcg"), "multi_interest": ("recall", "ndcg", "hitrate")}
# The accepted values of every key that takes one of a few strings (checked, and listed by --help).
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "data.format": DATA_FORMATS,
    "data.cold_test_users": ("error", "drop"),
    "data.synthetic.preset": SYNTHETIC_PRESETS,
    "model.task": ("mrl4rec", "multi_interest"),
    "model.router": ("self_attentive", "capsule", "sasrec"),
    "model.collection": ("bag", "sequence"),
    "model.user_sharding": SHARDING_TYPES,
    "model.item_sharding": SHARDING_TYPES,
    "train.loss": LOSSES,
    "train.sampler": SAMPLERS,
    "train.mns_pool": ("per_level", "shared"),
    "train.refit_from": ("scratch", "selected"),
    "train.refit_alongside": ("auto", "never"),
    "train.optimizer": OPTIMIZERS,
    "train.neg_distribution": ("uniform", "log_uniform"),
    "train.dense_optimizer": ("adam", "adagrad", "sgd"),
    "train.resume": RESUME_MODES,
    "train.draws": ("auto", "host", "device"),
}


# ------------------------------------------------------------------ which keys a run reads
# A key that only some runs read says so where it is defined: `read_when(WHEN, default)`.
# config/reads.py turns a setting that the run would not read into an error naming the key.

ANY_VALUE = object()  # read_when's as_if when no value of the key is what the other runs do anyway


@dataclasses.dataclass(frozen=True)
class When:
    """A setup: `test(cfg)` says whether a run has it, `decided_by` are the keys that decide it,
    `where` says it in words (for the error)."""

    decided_by: tuple[str, ...]
    test: Callable[[Any], bool]
    where: str


def read_when(when: When, default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
              as_if: Any = ANY_VALUE, why: str = "") -> Any:
    """A field read only by runs with setup `when`. The others behave as if it were `as_if`
    (when some value is: setting it to that is accepted); `why` is added to the error."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"read_when": when, "as_if": as_if, "why": why})


def _mf(c) -> bool:
    return c.model.task == "mrl4rec"


def _multi(c) -> bool:
    return c.model.task == "multi_interest"


def _pairwise(c) -> bool:
    return _mf(c) and c.train.loss != "softmax"


FILES = When(("data.format",), lambda c: c.data.format != "synthetic", "data.format=user_lines, log, parquet, recbole")
LOG = When(("data.format",), lambda c: c.data.format == "log", "data.format=log")
SYNTHETIC = When(("data.format",), lambda c: c.data.format == "synthetic", "data.format=synthetic")
MF = When(("model.task",), _mf, "model.task=mrl4rec")
MULTI = When(("model.task",), _multi, "model.task=multi_interest")
MF_SPLIT = When(("model.task", "data.test"), lambda c: _mf(c) and c.data.test is None,
                "model.task=mrl4rec without a data.test file")
MF_TEST_FILE = When(("model.task", "data.test"), lambda c: _mf(c) and c.data.test is not None,
                    "model.task=mrl4rec with a data.test file")
SELF_ATTENTIVE = When(("model.task", "model.router"), lambda c: _multi(c) and c.model.router == "self_attentive",
                      "model.task=multi_interest with model.router=self_attentive")
SASREC = When(("model.task", "model.router"), lambda c: _multi(c) and c.model.router == "sasrec",
              "model.task=multi_interest with model.router=sasrec")
ATTENTION = When(("model.task", "model.router"), lambda c: _multi(c) and c.model.router != "capsule",
                 "model.task=multi_interest with model.router=sasrec or self_attentive")
PAIRWISE = When(("model.task", "train.loss"), _pairwise, "model.task=mrl4rec with train.loss=bpr or mrl")
HARD_NEGATIVES = When(("model.task", "train.loss", "train.sampler"), lambda c: _pairwise(c) and c.train.sampler != "uniform",
                      "model.task=mrl4rec with train.loss=bpr or mrl and train.sampler=dns or mns")
MNS = When(("model.task", "train.loss", "train.sampler"), lambda c: _pairwise(c) and c.train.sampler == "mns",
           "model.task=mrl4rec with train.loss=bpr or mrl and train.sampler=mns")
GRAMIAN = When(("model.task", "train.gramian"), lambda c: _mf(c) and c.train.gramian > 0,
               "model.task=mrl4rec with train.gramian > 0")
REFIT_SCRATCH = When(("model.task", "train.refit_from"), lambda c: _mf(c) and c.train.refit_from == "scratch",
                     "model.task=mrl4rec with train.refit_from=scratch")
REFIT_SELECTED = When(("model.task", "train.refit_from"), lambda c: _mf(c) and c.train.refit_from == "selected",
                      "model.task=mrl4rec with train.refit_from=selected")
ADAPTIVE = When(("train.optimizer",), lambda c: c.train.optimizer != "sgd", "train.optimizer=row_wise_adagrad, adagrad, adam")
SOFTMAX = When(("train.loss",), lambda c: c.train.loss == "softmax", "train.loss=softmax")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Sizes of the synthetic generator; a field left at None takes the preset's value."""

    preset: str = "small"  # sizes: tiny, small, or books (Amazon-Books size)
    num_users: int | None = None  # users to generate (None: the preset's)
    num_items: int | None = None  # items to generate (None: the preset's)
    num_interactions: int | None = None  # user-item pairs to generate (None: the preset's)
    num_categories: int | None = None  # item categories (None: the preset's)
    num_subcategories: int | None = None  # per category
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity within a sub-category
    seed: int = 7  # seed of the generator (the same seed gives the same data set)

    def __post_init__(self) -> None:
        _check_choice("data.synthetic.preset", self.preset)
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

    user: str | None = None  # the user id column
    item: str | None = None  # the item id column
    timestamp: str | None = None  # the timestamp column (orders sequences for model.task=multi_interest)
    rating: str | None = None  # the rating column (read only for data.min_rating)

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
    train: str | None = read_when(FILES, None)
    # user_lines: the test file (required); log / parquet / recbole: optional test file in the
    # same format (then no random split; data.test_fraction is not used).
    test: str | None = read_when(FILES, None)
    columns: ColumnsConfig = dataclasses.field(default_factory=ColumnsConfig)  # parquet / recbole
    # Keep interactions with rating >= min_rating (log: the 3rd column; parquet / recbole: the
    # rating column); None: the rating is neither read nor used.
    min_rating: float | None = None
    delimiter: str | None = read_when(LOG, None)  # log: one of tab, comma, pipe, space; None = detect
    header: bool | None = read_when(LOG, None)  # log: None = detect (a first line that is not numeric)
    test_fraction: float = read_when(MF_SPLIT, 0.2, why="it is the share of the per-user random split")  # log: per-user random split
    valid_fraction: float = read_when(MF, 0.1, why="multi_interest splits users by data.sequence.split")  # share of each user's training items held out for validation
    seed: int = 2022  # seed of the train / valid / test splits
    cache_dir: str | None = read_when(MF, None)  # Parquet dataset; None = <run_dir>/data
    # user_lines: a test user without training items is an error, or dropped with a count
    # (amazon-phones has 4 such users among 20,899 test users).
    cold_test_users: str = read_when(MF_TEST_FILE, "error")
    synthetic: SyntheticConfig = read_when(SYNTHETIC, default_factory=SyntheticConfig)  # data.format=synthetic
    sequence: SequenceConfig = read_when(MULTI, default_factory=SequenceConfig)  # model.task=multi_interest

    def __post_init__(self) -> None:
        _check_choice("data.format", self.format)
        _check_choice("data.cold_test_users", self.cold_test_users)
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
    dim: int = 64  # full embedding dimension (a multiple of 4, as fbgemm's kernels need)
    levels: tuple[int, ...] = (4, 8, 16, 32, 64)  # matryoshka prefix dimensions, increasing, ending at model.dim
    level_weights: tuple[float, ...] | None = None  # None = 1/L each
    collection: str = "bag"  # bag: EmbeddingBagCollection; sequence: EmbeddingCollection
    user_sharding: str = read_when(MF, "table_wise", why="multi_interest has no user table")  # how the user table is split over ranks (row_wise on CPU: collection=sequence)
    item_sharding: str = "table_wise"  # how the item table is split over ranks
    num_interests: int = read_when(MULTI, 4, as_if=1)  # multi_interest: K
    router: str = read_when(MULTI, "self_attentive")  # multi_interest: self_attentive (ComiRec-SA) or capsule (MIND-style)
    hidden_factor: int = read_when(SELF_ATTENTIVE, 4)  # self_attentive: attention hidden size = hidden_factor * dim
    positional: bool = read_when(SELF_ATTENTIVE, True)  # self_attentive: learnable positions added to the attention input
    num_blocks: int = read_when(SASREC, 2)  # sasrec: self-attention blocks
    num_heads: int = read_when(SASREC, 1)  # sasrec: attention heads (must divide model.dim)
    # sasrec: on the input, attention weights and feed-forward outputs (default 0.2);
    # self_attentive: on the history embeddings while training (default 0, as in ComiRec / REMI)
    dropout: float | None = read_when(ATTENTION, None)

    @property
    def router_dropout(self) -> float:
        """`dropout` with its per-router default filled in."""
        if self.dropout is not None:
            return self.dropout
        return 0.2 if self.router == "sasrec" else 0.0

    def __post_init__(self) -> None:
        _check_choice("model.task", self.task)
        _check_choice("model.router", self.router)
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
        if self.dim <= 0 or self.dim % 4:
            raise ConfigError(f"model.dim must be a positive multiple of 4 (fbgemm's embedding kernels work in "
                              f"blocks of 4), got {self.dim}; e.g. model.dim={max(4, self.dim // 4 * 4)} with "
                              f"model.levels ending there")
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
        if self.level_weights is not None and (min(self.level_weights) < 0 or not sum(self.level_weights) > 0):
            raise ConfigError(f"model.level_weights must be >= 0 with a positive sum (one weight per level of "
                              f"model.levels), got {list(self.level_weights)}")
        for name in ("hidden_factor", "num_blocks", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be an integer >= 1, got {getattr(self, name)}")
        _check_choice("model.collection", self.collection)
        _check_choice("model.user_sharding", self.user_sharding)
        _check_choice("model.item_sharding", self.item_sharding)

    @property
    def weights(self) -> tuple[float, ...]:
        if self.level_weights is not None:
            return tuple(self.level_weights)
        return tuple(1.0 / len(self.levels) for _ in self.levels)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation: loss, sampler, fused optimizer, schedule."""

    epochs: int = 30  # most epochs to train (early stopping may end sooner)
    batch_size: int = 2048  # global: split evenly over ranks
    loss: str = "mrl"  # mrl (level-weighted pairwise), bpr, or softmax (matryoshka sampled softmax)
    sampler: str = read_when(PAIRWISE, "mns")  # hard negatives for bpr / mrl: uniform, dns (dynamic), mns (matryoshka, one per level)
    num_negs: int = read_when(HARD_NEGATIVES, 16)  # candidates per hard negative (DNS / MNS)
    mns_pool: str = read_when(MNS, "per_level")  # per_level: a fresh block of candidates per level (paper); shared
    optimizer: str = "row_wise_adagrad"  # of the embedding tables, fused into the backward pass (adam: GPU only)
    lr: float = 0.2  # tuned for row-wise Adagrad on Amazon-Phones (docs/results.md)
    # Large batches: train.lr and train.dense_lr are the rates at `lr_reference_batch` pairs;
    # at another batch size B both are scaled by (B / lr_reference_batch)^lr_batch_power.
    # Adagrad normalises each coordinate by its own gradient history, so a batch k times larger
    # (k times fewer updates, each the sum of k gradients) moves a noise-dominated coordinate as
    # much per epoch as before and a consistently pushed one sqrt(k) times less. Measured on
    # Phones (docs/benchmarks.md, "Batch size"): power 0 keeps batch 2,048's validation R@20
    # within 1% from 8k to 64k at the same epochs; power 0.5 gains 1-2.5% at 8k-16k and loses
    # 2-3% at 32k-64k. So the default keeps the rates; 0.5 is the choice up to ~16k.
    lr_reference_batch: int = 2048  # the global batch at which train.lr and train.dense_lr apply unscaled
    lr_batch_power: float = 0.0  # exponent of the batch-size rule: 0 = the same rates at any batch, 0.5 = square root
    eps: float = read_when(ADAPTIVE, 1e-8)  # epsilon of the Adagrad / Adam updates
    l2: float = read_when(MF, 0.02, as_if=0.0)  # on the batch embeddings (as in common BPR code), tuned with lr
    # Weight each coordinate's L2 like the levels that use it (losses.level_l2_weights); false
    # is the uniform L2 of the MRL4Rec reference code, which starves the last block.
    l2_per_level: bool = read_when(MF, True)
    # Frequency-aware user L2 (the exponent nu of iALS++'s lambda * |I_u|^nu, Rendle et al.
    # 2022): each time a user is in the loss, its L2 is l2 * n_u^(nu - 1), n_u = its training
    # pairs, so its L2 per epoch is l2 * n_u^nu. 1: the plain per-pair L2. Below 1, users with
    # many pairs are held back less per pair: the Phones l2 of 0.05 per pair collapsed
    # MovieLens-100K (76 pairs per user), and with nu = 0.65 the same l2 serves both
    # (losses.frequency_l2, docs/results.md §8). Items keep the per-occurrence L2.
    l2_user_exponent: float = read_when(MF, 1.0, as_if=1.0)
    # Weight of the whole-catalogue term (losses.gramian_user_term / gramian_item_term, as in iALS): the mean squared
    # score over every item, at every level, once per user per epoch (each of a user's pairs
    # carries 1 / its pair count). Looks the whole item table up every train.gramian_every
    # steps (0 = off).
    gramian: float = read_when(MF, 0.0, as_if=0.0)
    # Steps between the whole-catalogue term's item updates. The users get its exact gradient
    # every step (the item Gramian is read from the local shards, no lookup); every k-th step
    # also looks every item up and updates it with that batch's share times (steps / updating
    # steps) of the epoch, about k: the same in expectation over the shuffled batches. 1: every step, as in iALS. The lookup and the
    # update of every item row were half of a Phones step at batch 2,048 (docs/results.md §8).
    gramian_every: int = read_when(GRAMIAN, 1, as_if=1)
    seed: int = 2022  # seed of initial weights, negative draws and batch order
    # Where model.task=mrl4rec draws a step's candidates and shared negatives: host (numpy,
    # then copied), device (torch ops where the step runs: no host work or copy per step), or
    # auto: device on CUDA, host on CPU, where numpy's draws take about half the time of
    # torch's. Both draw the same ids (nn/counters.py), so the choice never changes a run.
    draws: str = read_when(MF, "auto", as_if="auto")
    # Batches built this many steps ahead, in a background thread (run/prefetch.py), so the
    # host's share of a batch (order slice, numpy draws, the copy to the device) overlaps the
    # step's kernels; 0 builds each batch inside its step. A batch depends only on (epoch,
    # step), never on the model, so the choice never changes what is trained.
    prefetch: int = 1
    # After early stopping, train a fresh model on train + validation for the selected number
    # of epochs and test that one (the validation split then only picks the epoch count).
    refit: bool = read_when(MF, False, as_if=False)
    # scratch: the refit is a fresh model trained for the selected number of epochs (doubles the
    # cost). selected: the selected model goes on for train.refit_epochs epochs on train +
    # validation: every pair seen at a fraction of the cost, but on Phones 0.0024 (12 epochs) to
    # 0.0045 (4 epochs) test R@20 below the fresh refit (docs/results.md §8).
    refit_from: str = read_when(MF, "scratch")
    refit_epochs: int = read_when(REFIT_SELECTED, 4)  # refit_from=selected: epochs on train + validation after selection
    # auto: a refit from scratch trains beside the selection, epoch for epoch in a second thread
    # (each on half of the process's threads), when the run is one process with 2+ threads: the
    # same tested model in about the selection's time instead of twice it. never: after it.
    refit_alongside: str = read_when(REFIT_SCRATCH, "auto")
    checkpoint_every: int = 0  # epochs between resumable checkpoints in <run_dir>/checkpoint (0 = off)
    # Mid-epoch checkpoints: after every N-th training step / the first step M minutes after the
    # previous checkpoint (0 = off). A resumed run continues at exactly the next batch. SIGTERM
    # (preemption) always writes one and exits with code 143.
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 0.0  # minutes between mid-epoch checkpoints (0 = off)
    # auto: continue from <run_dir>/checkpoint/last when it exists (what a restarted job needs),
    # start afresh otherwise; never: always afresh (an old checkpoint is deleted); must: resume or stop.
    resume: str = "auto"
    # loss=softmax: negatives shared by a rank's local batch
    num_sampled: int = read_when(SOFTMAX, 0)  # 0 = 10 x the local batch size; >= the item count: every item (exact softmax)
    neg_distribution: str = read_when(MULTI, "uniform", as_if="uniform", why="mrl4rec's softmax draws uniformly")  # uniform, or log_uniform (popularity rank) with logQ correction
    gather_negatives: bool = read_when(MULTI, False, as_if=False)  # widen each rank's pool with every rank's negatives
    ihn_beta: float = read_when(SOFTMAX, 0.0, as_if=0.0)  # interest-aware hard negatives; 0 = plain sampled softmax
    rr_lambda: float = read_when(MULTI, 0.0, as_if=0.0)  # routing regularisation weight (per-user mean scaling, see losses.py)
    dense_optimizer: str = read_when(MULTI, "adam", why="the routing tower; mrl4rec has no dense layers")  # for the routing tower (dense, DDP); Adam runs on CPU for dense tensors
    dense_lr: float = read_when(MULTI, 1e-3, why="the routing tower; mrl4rec has no dense layers")  # learning rate of train.dense_optimizer

    @property
    def lr_scale(self) -> float:
        """The factor on train.lr and train.dense_lr at this batch size (see lr_batch_power)."""
        return (self.batch_size / self.lr_reference_batch) ** self.lr_batch_power

    def __post_init__(self) -> None:
        _check_choice("train.loss", self.loss)
        _check_choice("train.sampler", self.sampler)
        _check_choice("train.mns_pool", self.mns_pool)
        if not 0 <= self.l2_user_exponent <= 2:  # also refuses nan
            raise ConfigError(f"train.l2_user_exponent must be a number in [0, 2], got {self.l2_user_exponent}")
        _check_choice("train.refit_from", self.refit_from)
        _check_choice("train.refit_alongside", self.refit_alongside)
        _check_choice("train.optimizer", self.optimizer)
        _check_choice("train.neg_distribution", self.neg_distribution)
        _check_choice("train.dense_optimizer", self.dense_optimizer)
        _check_choice("train.resume", self.resume)
        _check_choice("train.draws", self.draws)
        for name in ("checkpoint_every", "checkpoint_every_steps", "checkpoint_every_minutes"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):  # also refuses nan
                raise ConfigError(f"train.{name} must be a finite number >= 0 (0 = off), got {value}")
        if self.num_sampled < 0 or self.ihn_beta < 0 or self.rr_lambda < 0:
            raise ConfigError("train.num_sampled, train.ihn_beta and train.rr_lambda must be >= 0")
        for name in ("epochs", "batch_size", "num_negs", "refit_epochs", "gramian_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.prefetch < 0:
            raise ConfigError(f"train.prefetch must be >= 0 (0 = off), got {self.prefetch}")
        if self.lr_reference_batch <= 0:
            raise ConfigError(f"train.lr_reference_batch must be positive, got {self.lr_reference_batch}")
        if not 0 <= self.lr_batch_power <= 1:
            raise ConfigError(f"train.lr_batch_power must be within [0, 1], got {self.lr_batch_power}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.l2 < 0:
            raise ConfigError(f"train.l2 must be >= 0, got {self.l2}")
        if self.eps < 0:
            raise ConfigError(f"train.eps must be >= 0, got {self.eps}")
        if self.dense_lr <= 0:
            raise ConfigError(f"train.dense_lr must be positive, got {self.dense_lr}")
        if not self.gramian >= 0:  # also refuses nan
            raise ConfigError(f"train.gramian must be >= 0, got {self.gramian}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Full-ranking evaluation and early stopping."""

    ks: tuple[int, ...] = (10, 20, 50)  # cut-offs K of recall@K, ndcg@K (and hitrate@K for multi_interest)
    every_epochs: int = 1  # epochs between evaluations on validation
    patience: int = 5  # evaluations without a better validation score before stopping
    select_metric: str = "recall@20"  # at full dimension, on validation
    track_test: bool = False  # also evaluate test at every evaluation (reporting only, never selection)
    chunk_mb: float = 256.0  # score-matrix memory per block of users
    mask_history: bool = read_when(MULTI, True, as_if=True, why="mrl4rec always masks a user's training items")  # multi_interest: mask every item of the user's history part
    # Validate on a fixed, seeded sample of this many users (None: all of them); the metrics
    # then carry their standard error ("<metric>_se"). Test always scores every user.
    valid_users: int | None = None

    def __post_init__(self) -> None:
        if self.valid_users is not None and self.valid_users <= 0:
            raise ConfigError(f"eval.valid_users must be positive (or null for every user), got {self.valid_users}")
        if not self.ks or any(k <= 0 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive, got {list(self.ks)}")
        for name in ("every_epochs", "patience", "chunk_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"eval.{name} must be positive, got {getattr(self, name)}")
        name, _, k = self.select_metric.partition("@")
        if name not in ("recall", "ndcg", "hitrate") or not k.isdigit() or int(k) not in self.ks:
            raise ConfigError(f"eval.select_metric must be recall@K, ndcg@K (or hitrate@K, model.task=multi_interest) "
                              f"with K in eval.ks={list(self.ks)}, got {self.select_metric!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """The whole run."""

    run_dir: str = "runs/default"  # where the run writes its config, metrics, checkpoints and embeddings
    device: str = "auto"  # auto: cuda + nccl when a GPU is visible, else cpu + gloo
    progress: bool = True  # a progress bar per epoch (false: plain lines, for logs)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check_choice("device", self.device)
        multi = self.model.task == "multi_interest"
        if multi and self.train.loss != "softmax":
            raise ConfigError(f"model.task=multi_interest trains with train.loss=softmax, got {self.train.loss}")
        if multi and self.data.format not in TIME_FORMATS:
            raise ConfigError(f"model.task=multi_interest reads time-ordered interactions: data.format must be "
                              f"{', '.join(TIME_FORMATS)}, got {self.data.format}")
        if multi and self.data.test is not None:
            raise ConfigError("model.task=multi_interest splits users by data.sequence.split and reads no "
                              "data.test; unset data.test")
        metric = self.eval.select_metric.partition("@")[0]
        if metric not in METRICS[self.model.task]:
            k = self.eval.select_metric.partition("@")[2]
            raise ConfigError(f"eval.select_metric={self.eval.select_metric}: model.task={self.model.task} computes "
                              f"{' and '.join(METRICS[self.model.task])} only; use e.g. eval.select_metric=recall@{k}")


def _check_choice(key: str, value: str) -> None:
    choices = CHOICES[key]
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
