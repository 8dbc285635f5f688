"""What the training loop needs from a task, built once per run: data, model, batches, eval sets.

Two tasks (`model.task`): `mrl4rec` (matryoshka MF over user/item tables, pairwise losses,
hard negatives) and `multi_interest` (REMI / ComiRec-SA over behaviour sequences). The loop
in train.py sees only a `Workload`, so both share the launch, sharding, evaluation, early
stopping and outputs. Imports: the task modules, data, embeddings, evaluate, parallel.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distrec import counters, evaluate, losses, outputs, parallel
from distrec.config import Config
from distrec.data import InteractionData, load_dataset
from distrec.data.dataset import print_warning
from distrec.data.batches import epoch_batches, num_batches
from distrec.data.sequences import SequenceData, history_windows, load_sequences, ranges
from distrec.embeddings import TABLE_SHARDING_FIELDS, Tables, attach_fused_optimizer, dense_optimizers
from distrec.model import Batch, MatryoshkaMF
from distrec.multi_interest import MultiInterest, NegativeSampler, interest_encoder, router_spec_of, sequence_batches
from distrec.samplers import CandidateSampler, candidate_shape, shared_negatives

Csr = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class Workload:
    summary: str  # one line for the log
    num_users: int  # rows of the user table (0: no user table)
    num_items: int
    num_samples: int  # training samples per epoch
    build: Callable[[], tuple[nn.Module, list[torch.optim.Optimizer]]]
    batches: Callable[[int, int], Iterator]  # (epoch, first batch) -> this rank's batches
    eval_sets: dict[str, tuple[Csr, list[Csr]]]  # split -> (targets, excluded items), CSRs over eval rows
    encoder: Callable[[nn.Module, str], Callable[[np.ndarray], torch.Tensor]]  # (model, split) -> encode(rows)
    num_interests: int = 1
    hitrate: bool = False
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
        return int(np.diff(self.eval_sets["valid"][0][0]).sum()) > 0

    def evaluate(self, model: nn.Module, split: str, cfg: Config, env: parallel.DistEnv) -> dict:
        targets, exclude = self.eval_sets[split]
        model.eval()  # no dropout while scoring; train_epoch switches back
        tables = _inner(model).tables
        # The validation sample is fixed (seed 0), so every epoch and every run sees the same users.
        rows = evaluate.sample_rows(targets, cfg.eval.valid_users, seed=0) if split == "valid" and cfg.eval.valid_users else None
        return evaluate.evaluate(
            self.encoder(model, split), tables.items, self.num_items, env, targets, exclude,
            cfg.model.levels, cfg.eval.ks, cfg.eval.chunk_mb, self.num_interests, self.hitrate, rows=rows,
        )


    def export(self, model: nn.Module, env: parallel.DistEnv, run_dir: Path, *, resolved: dict, origin: dict,
               out_dir: Path | None = None) -> None:
        """`model`'s serving bundle (outputs.export_embeddings): every rank takes part in
        gathering the sharded tables, rank 0 writes them with the run's interactions and router."""
        inner = _inner(model)
        users = evaluate.gather_table(inner.tables.users, self.num_users, env) if self.num_users else None
        items = evaluate.gather_table(inner.tables.items, self.num_items, env)
        if env.is_main:
            outputs.export_embeddings(
                run_dir, users, items, self.user_raw, self.item_raw, resolved=resolved,
                interactions=self.interactions() if self.interactions else None,
                encoder=(self.encoder_spec, inner.router.state_dict()) if self.encoder_spec is not None else None,
                origin=origin, out_dir=out_dir)


def digest(*arrays: np.ndarray) -> str:
    """A short content hash of arrays (~0.2 s for Books' 6.4M training pairs)."""
    h = hashlib.blake2b(digest_size=8)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _inner(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def shard_task(task: nn.Module, tables: Tables, cfg: Config, env: parallel.DistEnv):
    attach_fused_optimizer(tables, cfg.train, cfg.model)
    model = parallel.shard(task, env, cfg.model, TABLE_SHARDING_FIELDS)
    return model, dense_optimizers(model, cfg.train)


def build_workload(cfg: Config, env: parallel.DistEnv, data_dir: Path | None) -> Workload:
    if cfg.model.task == "multi_interest":
        return multi_interest_workload(cfg, env, data_dir)
    data = load_dataset(cfg.data, out_dir=data_dir, drop_cold_test_users=cfg.data.cold_test_users == "drop")
    return mrl4rec_workload(cfg, env, data)


def mrl4rec_workload(cfg: Config, env: parallel.DistEnv, data: InteractionData) -> Workload:
    csr = {split: data.csr(split) for split in ("train", "valid", "test")}
    sampler = CandidateSampler(data.train_users, data.train_items, data.num_items)
    shape = candidate_shape(cfg.train.sampler, cfg.train.num_negs, len(cfg.model.levels), cfg.train.mns_pool)
    softmax = cfg.train.loss == "softmax"
    pairs_per_user = np.bincount(data.train_users, minlength=data.num_users).clip(min=1)
    frequency = cfg.train.l2_user_exponent != 1

    def num_shared(local_batch: int) -> int:
        return cfg.train.num_sampled or 10 * local_batch

    def build():
        tables = Tables(data.num_users, data.num_items, cfg.model)
        return shard_task(MatryoshkaMF(tables, cfg.model, cfg.train, env), tables, cfg, env)

    def batches(epoch: int, start: int = 0) -> Iterator[Batch]:
        cand_stream, shared_stream = counters.key(cfg.train.seed, epoch, 1), counters.key(cfg.train.seed, epoch, 2)
        n = len(data.train_users)
        # train.gramian_every = k: the items' whole-catalogue update on steps 0, k, 2k, ..., each
        # weighted steps / updating steps, so that an epoch's item updates sum to the every-step total.
        steps, every = num_batches(n, cfg.train.batch_size), cfg.train.gramian_every
        item_weight = steps / -(-steps // every)
        for step, idx, global_size, first in epoch_batches(n, cfg.train.batch_size, cfg.train.seed, epoch, env.rank, env.world_size, start):
            users = data.train_users[idx]
            if softmax:
                shared = shared_negatives(shared_stream, first, len(idx), data.num_items, num_shared(len(idx)))
                cands = np.zeros((len(idx), 0, 0), np.int64)
            else:
                positions = np.arange(first, first + len(idx))
                cands, shared = sampler.draw(cand_stream, positions, users, shape), None
            yield Batch(
                users=torch.as_tensor(users), pos=torch.as_tensor(data.train_items[idx]), cands=torch.as_tensor(cands),
                global_size=global_size, world_size=env.world_size, shared=None if shared is None else torch.as_tensor(shared),
                catalogue=softmax and num_shared(len(idx)) >= data.num_items,  # shared_negatives gave every item
                user_scale=torch.as_tensor(1.0 / pairs_per_user[users], dtype=torch.float32)
                if cfg.train.gramian or frequency else None,
                gramian_item_weight=item_weight if step % every == 0 else 0.0,
            ).to(env.device)

    return Workload(
        summary=f"{data.num_users} users, {data.num_items} items, {len(data.train_users)} train / "
                f"{len(data.valid_users)} valid / {len(data.test_users)} test pairs",
        num_users=data.num_users, num_items=data.num_items, num_samples=len(data.train_users),
        build=build, batches=batches,
        eval_sets={"valid": (csr["valid"], [csr["train"]]), "test": (csr["test"], [csr["train"], csr["valid"]])},
        encoder=lambda model, split: evaluate.user_encoder(_inner(model).tables, env.device),
        user_raw=data.user_raw, item_raw=data.item_raw,
        refit=lambda: _refit_workload(cfg, env, data, csr),
        data_hash=functools.cache(lambda: digest(data.train_users, data.train_items)),
        interactions=data.split_columns,
    )


def _refit_workload(cfg: Config, env: parallel.DistEnv, data: InteractionData, csr: dict) -> Workload:
    merged = mrl4rec_workload(cfg, env, data.merge_valid_into_train())
    # Test on the original splits: train and validation items are both masked.
    merged.eval_sets = {"valid": (csr["valid"], [csr["train"]]), "test": (csr["test"], [csr["train"], csr["valid"]])}
    merged.interactions = data.split_columns  # the exports keep the original splits
    return merged


def multi_interest_workload(cfg: Config, env: parallel.DistEnv, data_dir: Path | None = None) -> Workload:
    # Warnings (weak data) on rank 0 only, in the log and in data/report.json like the MF task's.
    warn = print_warning if env.is_main else None
    data: SequenceData = load_sequences(cfg.data, warn=warn)
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "report.json").write_text(json.dumps(data.report, indent=2, default=int) + "\n")
    max_len = cfg.data.sequence.max_len
    sampler = NegativeSampler(data, cfg.train.neg_distribution)
    splits = {split: data.eval_split(split) for split in ("valid", "test")}
    eval_sets = {}
    for split, (users, ends, targets) in splits.items():
        # Mask the whole history part (items before `ends`), not only the window the model sees.
        exclude = [data.segments(users, np.zeros_like(ends), ends)] if cfg.eval.mask_history else []
        eval_sets[split] = (targets, exclude)

    def build():
        tables = Tables(0, data.num_items, cfg.model)
        return shard_task(MultiInterest(tables, cfg.model, cfg.train, max_len), tables, cfg, env)

    def encoder(model: nn.Module, split: str):
        users, ends, _ = splits[split]
        return interest_encoder(_inner(model), data, users, ends, max_len, env.device)

    def diagnostics(model: nn.Module) -> dict:
        # Routing collapse on a fixed sample of validation users (the same on every rank).
        users, ends, _ = splits["valid"]
        hist, mask = history_windows(data, users[:1024], ends[:1024], max_len)
        with torch.no_grad():
            mask_t = torch.as_tensor(mask, device=env.device)
            _, attn = _inner(model).encode(torch.as_tensor(hist, device=env.device), mask_t)
        return {"routing": losses.routing_diagnostics(attn, mask_t)}

    users, _ = data.train_samples()
    return Workload(
        summary=f"{data.num_users} users ({len(data.train_users)} train / {len(data.valid_users)} valid / "
                f"{len(data.test_users)} test), {data.num_items} items, {len(users)} training samples",
        num_users=0, num_items=data.num_items, num_samples=len(users),
        build=build, batches=lambda epoch, start=0: sequence_batches(data, sampler, cfg, env, epoch, start),
        eval_sets=eval_sets, encoder=encoder, num_interests=cfg.model.num_interests, hitrate=True,
        user_raw=data.user_raw, item_raw=data.item_raw, diagnostics=diagnostics,
        data_hash=functools.cache(lambda: digest(data.seq_indptr, data.seq_items, data.train_users)),
        interactions=lambda: {"user": np.repeat(np.arange(data.num_users), data.lengths), "item": data.seq_items,
                              "position": ranges(data.lengths)},
        encoder_spec=router_spec_of(cfg.model, max_len),
    )
