"""REMI on ComiRec-SA: multi-interest retrieval over behaviour sequences and sharded item tables.

`MultiInterest.forward(batch)` is the training step's forward `(loss, stats)`: histories,
positives and the rank's shared negatives are all looked up through the sharded item table;
the routing tower (dense, under DDP) turns each history into K interests; the loss is the
matryoshka sampled softmax with IHN plus routing regularisation. `sequence_batches` builds
batches vectorised; `NegativeSampler` draws each rank's shared negatives; `workload` is the
task as the loop sees it.
Imports: numpy, torch, distrec.config / data / distributed / nn / tasks.workload.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distrec import distributed
from distrec.config import Config, ModelConfig, TrainConfig
from distrec.data.batches import DeviceBatch, epoch_batches
from distrec.data.dataset import print_warning
from distrec.data.csr import ranges
from distrec.data.sequences import SequenceData, history_windows, load_sequences
from distrec.eval import evaluate
from distrec.nn import counters, losses
from distrec.nn.embeddings import Tables, lookup_padded
from distrec.nn.samplers import shared_negatives
from distrec.nn.towers import build_router, router_spec
from distrec.tasks.workload import Workload, digest, inner, shard_task


@dataclasses.dataclass
class SeqBatch(DeviceBatch):
    """One rank's share of a global batch of (history window, next item) samples."""

    hist: torch.Tensor  # [B, L] item ids (padding: id 0 with mask False)
    mask: torch.Tensor  # [B, L] bool
    pos: torch.Tensor  # [B] target item ids
    negs: torch.Tensor  # [N] negative ids shared by the batch
    neg_log_q: torch.Tensor | None  # [N] log sampling probability (log-uniform only)
    global_size: int
    world_size: int = 1
    catalogue: bool = False  # negs is every item in id order (the exact full softmax)


def router_spec_of(model_cfg: ModelConfig, max_len: int) -> dict:
    """The run's router as `towers.router_spec` describes it (also written to the manifest)."""
    return router_spec(model_cfg.router, model_cfg.dim, model_cfg.num_interests, max_len,
                       hidden_factor=model_cfg.hidden_factor, positional=model_cfg.positional,
                       num_blocks=model_cfg.num_blocks, num_heads=model_cfg.num_heads, dropout=model_cfg.router_dropout)


class MultiInterest(nn.Module):
    def __init__(self, tables: Tables, model_cfg: ModelConfig, train_cfg: TrainConfig, max_len: int):
        super().__init__()
        self.tables = tables
        self.router = build_router(router_spec_of(model_cfg, max_len))
        self.levels = tuple(model_cfg.levels)
        self.weights = model_cfg.weights
        self.beta = train_cfg.ihn_beta
        self.rr_lambda = train_cfg.rr_lambda

    def encode(self, hist: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interests `[B, K, D]` and routing `[B, K, L]` of history windows `hist [B, L]`."""
        b, length = hist.shape
        h = lookup_padded(self.tables.items, hist.reshape(-1)).view(b, length, self.tables.dim)
        return self.router(h, mask)

    def forward(self, batch: SeqBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, length = batch.hist.shape
        # Histories, positives and negatives share one lookup (one all-to-all per step).
        rows = self.tables.items(torch.cat([batch.hist.reshape(-1), batch.pos, batch.negs]))
        h, pos, negs = rows[: b * length].view(b, length, -1), rows[b * length : b * length + b], rows[b * length + b :]
        interests, attn = self.router(h, batch.mask)
        per_level: list = []  # each level's unweighted loss, summed over the batch (for the logs)
        if batch.catalogue and self.beta == 0:
            # Every item is a negative: the exact full softmax through the fused cross-entropy.
            # Same value as the general path with the positives dropped as hits, several times
            # faster (IHN, beta > 0, still takes the general path).
            per_sample = losses.matryoshka_catalogue_softmax(interests, negs, batch.pos, self.levels, self.weights, per_level)
        else:
            per_sample = losses.matryoshka_sampled_softmax(
                interests, pos, negs, self.levels, self.weights, beta=self.beta,
                neg_log_q=batch.neg_log_q, pos_id=batch.pos, neg_ids=batch.negs, per_level=per_level,
            )
        total = per_sample
        if self.rr_lambda > 0:
            total = total + self.rr_lambda * losses.routing_regularization(attn, batch.mask)
        # Each rank's share of the global-batch mean, scaled by the world size: DDP and
        # TorchRec both average gradients over ranks (see model.MatryoshkaMF).
        loss = total.sum() * batch.world_size / batch.global_size
        return loss, {"loss_sum": per_sample.detach().sum(), "pairs": torch.tensor(float(b)),
                      "level_loss_sum": torch.stack(per_level)}


class NegativeSampler:
    """Each rank's negatives for a batch: uniform, or log-uniform over popularity ranks.

    Log-uniform (as TensorFlow's candidate sampler) draws popularity rank r with probability
    log((r + 2) / (r + 1)) / log(I + 1); the loss subtracts log q (logQ correction).
    """

    def __init__(self, data: SequenceData, distribution: str):
        self.num_items = data.num_items
        self.distribution = distribution
        is_train = np.zeros(data.num_users, bool)
        is_train[data.train_users] = True
        counts = np.bincount(data.seq_items[np.repeat(is_train, data.lengths)], minlength=data.num_items)
        self.by_rank = np.argsort(-counts, kind="stable")  # item id of each popularity rank
        ranks = np.empty(data.num_items, np.int64)
        ranks[self.by_rank] = np.arange(data.num_items)
        self.log_q = np.log(np.log((ranks + 2) / (ranks + 1)) / np.log(data.num_items + 1))  # per item id

    def draw(self, stream: np.uint64, first: int, local: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """`n` negative ids and their log q (None: uniform) for the `local` samples from global
        position `first` on (counter-based, as `shared_negatives`), or every item once, without
        log q, when `n` reaches the catalogue (the exact softmax needs no correction)."""
        if self.distribution == "uniform" or n >= self.num_items:
            return shared_negatives(stream, first, local, self.num_items, n), None
        per = -(-n // max(local, 1))
        u = counters.random(stream, np.arange(first * per, first * per + n))
        ranks = np.floor(np.exp(u * np.log(self.num_items + 1))).astype(np.int64) - 1
        ids = self.by_rank[np.clip(ranks, 0, self.num_items - 1)]
        return ids, self.log_q[ids]


def sequence_batches(
    data: SequenceData, sampler: NegativeSampler, cfg: Config, env: distributed.DistEnv, epoch: int, start: int = 0
) -> Iterator[SeqBatch]:
    """The epoch's batches for this rank from batch `start` on: (history window, next item) for
    every training position. Negatives are counter-based draws keyed by sample position."""
    users, positions = data.train_samples()
    stream = counters.stream(cfg.train.seed, counters.Stream.SEQUENCE_NEGATIVES, epoch)
    for part in epoch_batches(len(users), cfg.train.batch_size, cfg.train.seed, epoch, env.rank, env.world_size, start):
        idx, global_size = part.rows, part.global_size
        hist, mask = history_windows(data, users[idx], positions[idx], cfg.data.sequence.max_len)
        num = cfg.train.num_sampled or 10 * len(idx)
        # Asked for at least the catalogue, the sampler gives every item once, and with the
        # batch's positives removed as accidental hits the sampled softmax is the exact one.
        catalogue = num >= data.num_items
        negs, log_q = sampler.draw(stream, part.first, len(idx), num)
        negs = torch.as_tensor(negs)
        log_q = torch.as_tensor(log_q, dtype=torch.float32) if log_q is not None else None
        if cfg.train.gather_negatives and env.world_size > 1 and not catalogue:
            # Every rank's negatives for every rank: ids travel, rows are looked up (with
            # gradients) through the sharded table like any other id.
            negs = distributed.all_gather_rows(negs.to(env.device), env, num * env.world_size).cpu()
            if log_q is not None:
                log_q = distributed.all_gather_rows(log_q.to(env.device), env, num * env.world_size).cpu()
        yield SeqBatch(
            hist=torch.as_tensor(hist), mask=torch.as_tensor(mask), pos=torch.as_tensor(data.items_at(users[idx], positions[idx])),
            negs=negs, neg_log_q=log_q, global_size=global_size, world_size=env.world_size, catalogue=catalogue,
        ).to(env.device)


def interest_encoder(model: MultiInterest, data: SequenceData, users: np.ndarray, ends: np.ndarray, max_len: int, device: torch.device):
    """Evaluation queries: the interests `[n, K, D]` of rows (positions into `users`)."""

    def encode(rows: np.ndarray) -> torch.Tensor:
        hist, mask = history_windows(data, users[rows], ends[rows], max_len) if len(rows) else (
            np.zeros((0, max_len), np.int64), np.zeros((0, max_len), bool))
        interests, _ = model.encode(torch.as_tensor(hist, device=device), torch.as_tensor(mask, device=device))
        return interests

    return encode


def workload(cfg: Config, env: distributed.DistEnv, data_dir: Path | None = None) -> Workload:
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
        exclude = (data.segments(users, np.zeros_like(ends), ends),) if cfg.eval.mask_history else ()
        eval_sets[split] = evaluate.EvalSplit(targets, exclude)

    def build():
        tables = Tables(0, data.num_items, cfg.model)
        return shard_task(MultiInterest(tables, cfg.model, cfg.train, max_len), tables, cfg, env)

    def encoder(model: nn.Module, split: str):
        users, ends, _ = splits[split]
        return interest_encoder(inner(model), data, users, ends, max_len, env.device)

    def diagnostics(model: nn.Module) -> dict:
        # Routing collapse on a fixed sample of validation users (the same on every rank).
        users, ends, _ = splits["valid"]
        hist, mask = history_windows(data, users[:1024], ends[:1024], max_len)
        with torch.no_grad():
            mask_t = torch.as_tensor(mask, device=env.device)
            _, attn = inner(model).encode(torch.as_tensor(hist, device=env.device), mask_t)
        return {"routing": losses.routing_diagnostics(attn, mask_t)}

    users, _ = data.train_samples()
    return Workload(
        summary=f"{data.num_users} users ({len(data.train_users)} train / {len(data.valid_users)} valid / "
                f"{len(data.test_users)} test), {data.num_items} items, {len(users)} training samples",
        num_users=0, num_items=data.num_items, num_samples=len(users),
        build=build, batches=lambda epoch, start=0: sequence_batches(data, sampler, cfg, env, epoch, start),
        eval_sets=eval_sets, encoder=encoder, num_interests=cfg.model.num_interests,
        user_raw=data.user_raw, item_raw=data.item_raw, diagnostics=diagnostics,
        data_hash=functools.cache(lambda: digest(data.seq_indptr, data.seq_items, data.train_users)),
        interactions=lambda: {"user": np.repeat(np.arange(data.num_users), data.lengths), "item": data.seq_items,
                              "position": ranges(data.lengths)},
        encoder_spec=router_spec_of(cfg.model, max_len),
    )
