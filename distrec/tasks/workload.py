"""What the training loop needs from a task, built once per run: data, model, batches, eval sets.

Two tasks (`model.task`): `mrl4rec` (matryoshka MF over user/item tables, pairwise losses,
hard negatives) and `multi_interest` (REMI / ComiRec-SA over behaviour sequences). The loop
in train.py sees only a `Workload`, so both share the launch, sharding, evaluation, early
stopping and outputs. Imports: the task modules, data, embeddings, evaluate, distributed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distrec import distributed
from distrec.config import Config
from distrec.eval import evaluate
from distrec.nn.embeddings import TABLE_SHARDING_FIELDS, Tables, attach_fused_optimizer, dense_optimizers
from distrec.serve import bundle



@dataclasses.dataclass
class Workload:
    summary: str  # one line for the log
    num_users: int  # rows of the user table (0: no user table)
    num_items: int
    num_samples: int  # training samples per epoch
    build: Callable[[], tuple[nn.Module, list[torch.optim.Optimizer]]]
    batches: Callable[[int, int], Iterator]  # (epoch, first batch) -> this rank's batches
    eval_sets: dict[str, evaluate.EvalSplit]  # "valid" / "test" -> targets and masked items, CSRs over eval rows
    encoder: Callable[[nn.Module, str], Callable[[np.ndarray], torch.Tensor]]  # (model, split) -> encode(rows)
    num_interests: int = 1
    user_raw: np.ndarray | None = None
    item_raw: np.ndarray | None = None
    refit: Callable[[], "Workload"] | None = None  # the same task on train + valid
    diagnostics: Callable[[nn.Module], dict] | None = None  # extra numbers logged per evaluation
    # Digest of the training data (checkpoints refuse to resume on other data); computed on
    # first use, so runs that never checkpoint (and refits) do not hash the data.
    data_hash: Callable[[], str] = lambda: ""
    # Serving exports: the run's interactions as table rows (columns of
    # embeddings/interactions.parquet) and the user-side encoder, if any (towers.router_spec).
    interactions: Callable[[], dict[str, np.ndarray]] | None = None
    encoder_spec: dict | None = None

    @property
    def has_valid(self) -> bool:
        return int(np.diff(self.eval_sets["valid"].targets[0]).sum()) > 0

    def evaluate(self, model: nn.Module, split: str, cfg: Config, env: distributed.DistEnv,
                 rows: np.ndarray | None = None) -> dict:
        """`split`'s metrics (EvalSpec.of(cfg)) over `rows` (default: every row with a target;
        validation: the fixed sample of eval.valid_users when it is set)."""
        model.eval()  # no dropout while scoring; train_epoch switches back
        tables = inner(model).tables
        which = self.eval_sets[split]
        if rows is None and split == "valid" and cfg.eval.valid_users:
            # The validation sample is fixed (seed 0), so every epoch and every run sees the same users.
            rows = evaluate.sample_rows(which.targets, cfg.eval.valid_users, seed=0)
        return evaluate.evaluate(self.encoder(model, split), tables.items, self.num_items, env, which,
                                 evaluate.EvalSpec.of(cfg), num_interests=self.num_interests, rows=rows)


    def write_bundle(self, model: nn.Module, env: distributed.DistEnv, run_dir: Path, *, resolved: dict, origin: dict,
                     out_dir: Path | None = None) -> None:
        """`model`'s serving bundle (serve.bundle.write): every rank takes part in
        gathering the sharded tables, rank 0 writes them with the run's interactions and router."""
        task = inner(model)
        users = evaluate.gather_table(task.tables.users, self.num_users, env) if self.num_users else None
        items = evaluate.gather_table(task.tables.items, self.num_items, env)
        if env.is_main:
            bundle.write(
                run_dir, users, items, self.user_raw, self.item_raw, resolved=resolved,
                interactions=self.interactions() if self.interactions else None,
                encoder=(self.encoder_spec, task.router.state_dict()) if self.encoder_spec is not None else None,
                origin=origin, out_dir=out_dir)


def digest(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (~0.2 s for Books' 6.4M training pairs)."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def inner(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def shard_task(task: nn.Module, tables: Tables, cfg: Config, env: distributed.DistEnv):
    attach_fused_optimizer(tables, cfg.train, cfg.model)
    model = distributed.shard(task, env, cfg.model, TABLE_SHARDING_FIELDS)
    return model, dense_optimizers(model, cfg.train)
