"""Which keys a run reads: a key set for a setup that never reads it (data.train with
data.format=synthetic) is an error, so that no setting is silently ignored. Imports: stdlib.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from distrec.config.schema import Config, ConfigError

_ANY = object()  # Use.as_if when no value of the key is what the run does anyway


@dataclasses.dataclass(frozen=True)
class Use:
    """Key `key` (or every key under a section `key.`) is read only when `reads(cfg)`, as `where`
    says; `decided_by` are the keys that decide it. A run that does not read it behaves as if it
    were `as_if` (when there is such a value), so setting it to that is accepted."""

    key: str
    decided_by: tuple[str, ...]
    reads: Callable[[Config], bool]
    where: str
    as_if: Any = _ANY


def _mf(c: Config) -> bool:
    return c.model.task == "mrl4rec"


def _multi(c: Config) -> bool:
    return c.model.task == "multi_interest"


def _pairwise(c: Config) -> bool:
    return _mf(c) and c.train.loss != "softmax"


_FILES = ("data.format",)
_TASK = ("model.task",)
_ROUTER = ("model.task", "model.router")
_SAMPLING = ("model.task", "train.loss", "train.sampler")
MF_ONLY = "model.task=mrl4rec"
MULTI_ONLY = "model.task=multi_interest"
# Worked out from the code that reads each key: data/dataset.py and data/ingest.py (mrl4rec data),
# data/sequences.py (multi_interest data), workload.py, model.py, multi_interest.py, towers.py,
# samplers.py, embeddings.py, evaluate.py. A key not listed here is read by every run.
USES = (
    Use("data.train", _FILES, lambda c: c.data.format != "synthetic", "data.format=user_lines, log, parquet, recbole"),
    Use("data.test", _FILES, lambda c: c.data.format != "synthetic", "data.format=user_lines, log, parquet, recbole"),
    Use("data.delimiter", _FILES, lambda c: c.data.format == "log", "data.format=log"),
    Use("data.header", _FILES, lambda c: c.data.format == "log", "data.format=log"),
    Use("data.synthetic.", _FILES, lambda c: c.data.format == "synthetic", "data.format=synthetic"),
    Use("data.test_fraction", ("model.task", "data.test"), lambda c: _mf(c) and c.data.test is None,
        "model.task=mrl4rec without a data.test file (it is the share of the per-user random split)"),
    Use("data.valid_fraction", _TASK, _mf, MF_ONLY + " (multi_interest splits users by data.sequence.split)"),
    Use("data.cache_dir", _TASK, _mf, MF_ONLY),
    Use("data.cold_test_users", ("model.task", "data.test"), lambda c: _mf(c) and c.data.test is not None,
        "model.task=mrl4rec with a data.test file"),
    Use("data.sequence.", _TASK, _multi, MULTI_ONLY),
    Use("model.user_sharding", _TASK, _mf, MF_ONLY + " (multi_interest has no user table)"),
    Use("model.num_interests", _TASK, _multi, MULTI_ONLY, as_if=1),
    Use("model.router", _TASK, _multi, MULTI_ONLY),
    Use("model.hidden_factor", _ROUTER, lambda c: _multi(c) and c.model.router == "self_attentive",
        "model.task=multi_interest with model.router=self_attentive"),
    Use("model.positional", _ROUTER, lambda c: _multi(c) and c.model.router == "self_attentive",
        "model.task=multi_interest with model.router=self_attentive"),
    Use("model.num_blocks", _ROUTER, lambda c: _multi(c) and c.model.router == "sasrec",
        "model.task=multi_interest with model.router=sasrec"),
    Use("model.num_heads", _ROUTER, lambda c: _multi(c) and c.model.router == "sasrec",
        "model.task=multi_interest with model.router=sasrec"),
    Use("model.dropout", _ROUTER, lambda c: _multi(c) and c.model.router != "capsule",
        "model.task=multi_interest with model.router=sasrec or self_attentive"),
    Use("train.sampler", ("model.task", "train.loss"), _pairwise, "model.task=mrl4rec with train.loss=bpr or mrl"),
    Use("train.num_negs", _SAMPLING, lambda c: _pairwise(c) and c.train.sampler != "uniform",
        "model.task=mrl4rec with train.loss=bpr or mrl and train.sampler=dns or mns"),
    Use("train.mns_pool", _SAMPLING, lambda c: _pairwise(c) and c.train.sampler == "mns",
        "model.task=mrl4rec with train.loss=bpr or mrl and train.sampler=mns"),
    Use("train.l2", _TASK, _mf, MF_ONLY, as_if=0.0),
    Use("train.l2_per_level", _TASK, _mf, MF_ONLY),
    Use("train.l2_user_exponent", _TASK, _mf, MF_ONLY, as_if=1.0),
    Use("train.gramian", _TASK, _mf, MF_ONLY, as_if=0.0),
    Use("train.gramian_every", ("model.task", "train.gramian"), lambda c: _mf(c) and c.train.gramian > 0,
        "model.task=mrl4rec with train.gramian > 0", as_if=1),
    Use("train.refit", _TASK, _mf, MF_ONLY, as_if=False),
    # Not tied to train.refit: a search turns the refit off in its trials and on in its final run.
    Use("train.refit_from", _TASK, _mf, MF_ONLY),
    Use("train.refit_alongside", ("model.task", "train.refit_from"), lambda c: _mf(c) and c.train.refit_from == "scratch",
        "model.task=mrl4rec with train.refit_from=scratch"),
    Use("train.refit_epochs", ("model.task", "train.refit_from"), lambda c: _mf(c) and c.train.refit_from == "selected",
        "model.task=mrl4rec with train.refit_from=selected"),
    Use("train.eps", ("train.optimizer",), lambda c: c.train.optimizer != "sgd",
        "train.optimizer=row_wise_adagrad, adagrad, adam"),
    Use("train.num_sampled", ("train.loss",), lambda c: c.train.loss == "softmax", "train.loss=softmax"),
    Use("train.ihn_beta", ("train.loss",), lambda c: c.train.loss == "softmax", "train.loss=softmax", as_if=0.0),
    Use("train.neg_distribution", _TASK, _multi, MULTI_ONLY + " (mrl4rec's softmax draws uniformly)", as_if="uniform"),
    Use("train.gather_negatives", _TASK, _multi, MULTI_ONLY, as_if=False),
    Use("train.rr_lambda", _TASK, _multi, MULTI_ONLY, as_if=0.0),
    Use("train.dense_optimizer", _TASK, _multi, MULTI_ONLY + " (the routing tower; mrl4rec has no dense layers)"),
    Use("train.dense_lr", _TASK, _multi, MULTI_ONLY + " (the routing tower; mrl4rec has no dense layers)"),
    Use("eval.mask_history", _TASK, _multi, MULTI_ONLY + " (mrl4rec always masks a user's training items)",
        as_if=True),
)


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
    if value == get(Config(), key) or (use.as_if is not _ANY and value == use.as_if):
        return None  # the default, or what the run does anyway: asks for nothing that is not done
    setup = ", ".join(f"{d}={text(get(cfg, d))}" for d in use.decided_by)
    hint = f" (or set it to {text(use.as_if)})" if use.as_if is not _ANY else ""
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
