"""The MRL4Rec training task: matrix factorisation over sharded tables, hard negatives, MRL loss,
or a matryoshka softmax over negatives shared by the batch (the whole catalogue when it fits).

`MatryoshkaMF.forward(batch)` is the whole training step's forward, `(loss, stats)`, so it
runs through DistributedModelParallel's forward (and its DDP wrapper for any dense table).
`workload` is the task as the loop sees it. Imports: numpy, torch, distrec.config / data /
distributed / nn / eval / tasks.workload.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distrec import distributed
from distrec.config import Config, ModelConfig, TrainConfig
from distrec.data import InteractionData, load_dataset
from distrec.data.batches import DeviceBatch, epoch_batches, epoch_order, num_batches
from distrec.eval import evaluate
from distrec.nn import counters, fused_pairwise, losses, samplers
from distrec.nn.embeddings import Tables, materialised
from distrec.nn.samplers import CandidateSampler, candidate_shape, shared_negatives
from distrec.tasks.workload import Workload, digest, inner, shard_task


@dataclasses.dataclass
class Batch(DeviceBatch):
    """One rank's share of a global batch of (user, positive) pairs."""

    users: torch.Tensor  # [B] user ids
    pos: torch.Tensor  # [B] positive item ids
    cands: torch.Tensor  # [B, G, N] candidate negative ids (see samplers.candidate_shape); [B, 0, 0] for softmax
    global_size: int  # pairs in the global batch, over all ranks
    world_size: int = 1
    shared: torch.Tensor | None = None  # loss=softmax: [N] negative ids shared by the local batch
    catalogue: bool = False  # loss=softmax: `shared` is every item in id order (exact full softmax)
    user_scale: torch.Tensor | None = None  # [B] 1 / the user's training pairs (Gramian term), None = 1
    # Weight of the whole-catalogue term's item update this step (train.gramian_every): 1 every
    # step, or (steps / updating steps) of the epoch on every k-th step and 0 on the others.
    gramian_item_weight: float = 1.0


class MatryoshkaMF(nn.Module):
    def __init__(self, tables: Tables, model_cfg: ModelConfig, train_cfg: TrainConfig, env: distributed.DistEnv):
        super().__init__()
        self.tables = tables
        self.env = env
        self.levels = tuple(model_cfg.levels)
        self.weights = model_cfg.weights
        self.loss_kind = train_cfg.loss
        self.sampler = train_cfg.sampler
        self.l2 = train_cfg.l2
        self.beta = train_cfg.ihn_beta
        self.gramian = train_cfg.gramian
        self.l2_user_exponent = train_cfg.l2_user_exponent  # frequency-aware user L2 below 1
        # Per-coordinate L2 weights: uniform, or matched to the level weights (losses.level_l2_weights).
        self.l2_weights = losses.level_l2_weights(self.levels, self.weights) if train_cfg.l2_per_level else None
        self.gram_mask = losses.gramian_mask(self.levels, self.weights)  # [D, D] level weights of the Gramian term

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = batch.users.shape[0]
        u = self.tables.users(batch.users)  # [B, D]
        per_level: list = []  # each level's unweighted loss, summed over the batch (for the logs)
        frequency = self.l2_user_exponent != 1  # users' L2 by their pair counts, items' per occurrence
        if self.loss_kind == "softmax":
            per_sample, regularised = self._softmax(u, batch, per_level)
            if frequency:
                reg = self.l2 * (losses.frequency_l2(u, batch.user_scale, self.l2_user_exponent, self.l2_weights)
                                 + losses.l2_penalty(*regularised[1:], weights=self.l2_weights))
            else:
                reg = self.l2 * losses.l2_penalty(*regularised, weights=self.l2_weights)
        else:
            negs = self.choose_negatives(u.detach(), batch.cands, batch.global_size)  # [B, J]
            # Positives and chosen negatives share one lookup: one all-to-all instead of two.
            rows = self.tables.items(torch.cat([batch.pos, negs.reshape(-1)]))
            # The loss and its L2 in one function with a hand-written backward (fused_pairwise):
            # equal to losses.pairwise_loss + l2_penalty, in a few passes instead of ~50.
            terms = fused_pairwise.terms_of(self.loss_kind, self.levels, self.weights, negs.shape[1])
            user_l2 = batch.user_scale.pow(1.0 - self.l2_user_exponent) if frequency else None
            per_sample, reg, soft = fused_pairwise.pairwise_with_l2(
                materialised(u), materialised(rows), negs.shape[1], terms, self.l2, self.l2_weights, user_l2)
            if self.loss_kind == "mrl":  # BPR has no per-level terms
                per_level.extend(soft.sum(dim=0))
        item_term = u.new_zeros(())
        if self.gramian > 0:
            gram, item_term = self._gramian(u, batch)
            per_sample = per_sample + self.gramian * gram
        # Gradients are averaged over ranks (DDP, and TorchRec's gradient division for sharded
        # tables), so each rank's share of the global-batch mean is scaled by the world size:
        # exactly the one-process gradient, even when local batches differ in size by one.
        loss = (per_sample.sum() + self.gramian * item_term + reg) * batch.world_size / batch.global_size
        stats = {"loss_sum": per_sample.detach().sum(), "pairs": torch.tensor(float(b))}
        if per_level:  # BPR has no per-level terms
            stats["level_loss_sum"] = torch.stack(per_level)
        return loss, stats

    def _gramian(self, u: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole-catalogue term (losses.gramian_user_term, _item_term) as (per-user values `[B]`, which
        carry the users' gradient, and a scalar that carries the items'), so that the costly
        half, a lookup and an update of every item row, runs only on the steps that
        `batch.gramian_item_weight` marks. Each user's term is scaled by 1 / its pair count so
        that it counts once per epoch (as in iALS), not once per pair: otherwise dense users
        would be pushed to 0 hardest."""
        num_items = self.tables.num_items
        item_weight = batch.gramian_item_weight
        gram = None
        if item_weight > 0 or not self._gram_from_shards():
            every_item = self.tables.items(torch.arange(num_items, device=u.device))
            gram = every_item.T @ every_item  # [D, D], every prefix's Gramian is its top-left block
        fixed = gram.detach() if gram is not None else self._shard_gram()
        mask = self.gram_mask.to(u.device)
        per_user = losses.gramian_user_term(u, fixed, mask, num_items)
        if batch.user_scale is not None:
            per_user = per_user * batch.user_scale
        if item_weight == 0:
            return per_user, u.new_zeros(())
        item_term = losses.gramian_item_term(u, batch.user_scale, gram, mask, num_items)
        return per_user, item_weight * item_term

    def _gram_from_shards(self) -> bool:
        """Whether V^T V can be summed from the ranks' row blocks: every block holds whole rows
        (a table split by columns needs the cross-block products). Decided once, by all ranks."""
        if not hasattr(self, "_whole_rows"):
            shards, _ = self.tables.local_items()
            whole = all(sh.first_col == 0 and sh.weight.shape[1] == self.levels[-1] for sh in shards)
            split = distributed.all_reduce_max(torch.tensor([0.0 if whole else 1.0], device=self.env.device), self.env)
            self._whole_rows = not split.item()
        return self._whole_rows

    @torch.no_grad()
    def _shard_gram(self) -> torch.Tensor:
        """V^T V from the rows this rank holds, summed over ranks: the item Gramian without a
        lookup (a replicated table is whole on every rank and needs no sum)."""
        shards, replicated = self.tables.local_items()
        dim = self.levels[-1]
        gram = torch.zeros(dim, dim, device=self.env.device)
        for sh in shards:
            w = sh.weight.to(gram.device, torch.float32)
            gram += w.T @ w
        return gram if replicated or self.env.world_size == 1 else distributed.all_reduce_sum(gram, self.env)

    def _softmax(self, u: torch.Tensor, batch: Batch, per_level: list) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Matryoshka softmax of each positive against the batch's shared negatives, at every
        level on that level's prefix (with IHN weights when train.ihn_beta > 0). A negative equal
        to the row's positive is left out, so with the whole catalogue as negatives this is the
        exact full softmax. L2 covers the users and positives (the rows the batch is about)."""
        b = u.shape[0]
        if batch.catalogue:  # every row once; the positives are among them
            negs = self.tables.items(batch.shared)
            per_sample = losses.matryoshka_softmax(u, None, negs, self.levels, self.weights, pos_index=batch.pos,
                                                   per_level=per_level)
            return per_sample, (u, negs[batch.pos])
        # Distinct ids only: positives and negatives overlap, and draws repeat.
        distinct, where = torch.unique(torch.cat([batch.pos, batch.shared]), return_inverse=True)
        rows = self.tables.items(distinct)
        pos, negs = rows[where[:b]], rows[where[b:]]
        if self.beta > 0:  # interest-aware hard negatives (IHN) weight the sampled negatives
            per_sample = losses.matryoshka_sampled_softmax(
                u.unsqueeze(1), pos, negs, self.levels, self.weights, beta=self.beta, pos_id=batch.pos, neg_ids=batch.shared,
                per_level=per_level,
            )
        else:
            hits = batch.shared[None, :] == batch.pos[:, None]  # [B, N]
            per_sample = losses.matryoshka_softmax(u, pos, negs, self.levels, self.weights, hits, per_level=per_level)
        return per_sample, (u, pos)

    def choose_negatives(self, u: torch.Tensor, cands: torch.Tensor, global_size: int) -> torch.Tensor:
        """Candidate ids `[B, G, N]` -> chosen negative ids `[B, J]` (J = 1, or L for MNS).

        Candidates are scored where their rows live (`samplers.candidate_scores`): the ranks
        exchange the batch's user vectors and candidate ids (a few hundred KB) and sum their
        partial scores, instead of moving every candidate's row (80 x 256 B per pair) through
        the sharded table's all-to-all. Picks equal `samplers.select_hardest` on the whole table.
        """
        b, groups, _ = cands.shape
        if self.sampler == "uniform":
            return cands[:, 0, :1]
        shards, replicated = self.tables.local_items()
        picks = samplers.scored_levels(self.sampler, self.levels, groups)
        if replicated or self.env.world_size == 1:
            scores = samplers.candidate_scores(u, cands, shards, picks)  # [J, B, N]
        else:
            rows = -(-global_size // self.env.world_size)  # the largest local batch
            # One collective for both: the int64 ids travel as pairs of float32 bit patterns.
            packed = torch.cat([u.float(), cands.reshape(b, -1).view(torch.float32)], dim=1)
            every = distributed.all_gather_padded(packed, self.env, rows)
            every_u = every[:, : u.shape[1]].to(u.dtype)
            every_cands = every[:, u.shape[1] :].contiguous().view(torch.int64).view(-1, *cands.shape[1:])
            scores = distributed.all_reduce_sum(samplers.candidate_scores(every_u, every_cands, shards, picks), self.env)
            scores = scores[:, self.env.rank * rows : self.env.rank * rows + b]
        pick = scores.argmax(dim=2).T  # [B, J] into N; ties: the first candidate, as select_hardest
        group = torch.tensor([g for _, g in picks], device=cands.device)
        return cands[torch.arange(b, device=cands.device)[:, None], group[None, :], pick]


def workload(cfg: Config, env: distributed.DistEnv, data_dir: Path | None) -> Workload:
    """The MF task on `cfg.data` (rank 0 writes the data's Parquet copy and report to `data_dir`)."""
    data = load_dataset(cfg.data, out_dir=data_dir, drop_cold_test_users=cfg.data.cold_test_users == "drop")
    return from_data(cfg, env, data)


def from_data(cfg: Config, env: distributed.DistEnv, data: InteractionData) -> Workload:
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

    draws = (HostDraws if not on_device(cfg, env) else DeviceDraws)(data, sampler, shape, pairs_per_user, env.device)

    def batches(epoch: int, start: int = 0) -> Iterator[Batch]:
        cand_stream = counters.stream(cfg.train.seed, counters.Stream.MF_CANDIDATES, epoch)
        shared_stream = counters.stream(cfg.train.seed, counters.Stream.MF_SHARED_NEGATIVES, epoch)
        n = len(data.train_users)
        # train.gramian_every = k: the items' whole-catalogue update on steps 0, k, 2k, ..., each
        # weighted steps / updating steps, so that an epoch's item updates sum to the every-step total.
        steps, every = num_batches(n, cfg.train.batch_size), cfg.train.gramian_every
        item_weight = steps / -(-steps // every)
        order = epoch_order(n, cfg.train.seed, epoch)
        draws.start_epoch(order)
        for step, idx, global_size, first in epoch_batches(n, cfg.train.batch_size, cfg.train.seed, epoch, env.rank,
                                                           env.world_size, start, order=order):
            users, pos = draws.pairs(idx, first)
            if softmax:
                shared, cands = draws.shared(shared_stream, first, len(idx), num_shared(len(idx))), draws.no_candidates(len(idx))
            else:
                cands, shared = draws.candidates(cand_stream, first, users), None
            yield Batch(
                users=users, pos=pos, cands=cands, global_size=global_size, world_size=env.world_size, shared=shared,
                catalogue=softmax and num_shared(len(idx)) >= data.num_items,  # shared_negatives gave every item
                user_scale=draws.user_scale(users) if cfg.train.gramian or frequency else None,
                gramian_item_weight=item_weight if step % every == 0 else 0.0,
            ).to(env.device)

    return Workload(
        summary=f"{data.num_users} users, {data.num_items} items, {len(data.train_users)} train / "
                f"{len(data.valid_users)} valid / {len(data.test_users)} test pairs",
        num_users=data.num_users, num_items=data.num_items, num_samples=len(data.train_users),
        build=build, batches=batches,
        eval_sets=_eval_sets(csr),
        encoder=lambda model, split: evaluate.user_encoder(inner(model).tables, env.device),
        user_raw=data.user_raw, item_raw=data.item_raw,
        refit=lambda: _refit_workload(cfg, env, data, csr),
        data_hash=functools.cache(lambda: digest(data.train_users, data.train_items)),
        interactions=data.split_columns,
    )


def on_device(cfg: Config, env: distributed.DistEnv) -> bool:
    """Whether this run draws its batches on the training device (train.draws)."""
    return cfg.train.draws == "device" or (cfg.train.draws == "auto" and env.device.type == "cuda")


class HostDraws:
    """A step's pairs and negatives drawn with numpy on the host, then copied to the device
    (with the Batch's `.to`): on CPU, numpy's draws are about twice as fast as torch's."""

    def __init__(self, data: InteractionData, sampler: CandidateSampler, shape: tuple[int, int],
                 pairs_per_user: np.ndarray, device: torch.device):
        # `device` is unused (the Batch's `.to` copies); DeviceDraws takes the same arguments.
        self.data, self.sampler, self.shape, self.pairs_per_user = data, sampler, shape, pairs_per_user

    def start_epoch(self, order: np.ndarray) -> None:
        pass

    def pairs(self, idx: np.ndarray, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(self.data.train_users[idx]), torch.as_tensor(self.data.train_items[idx])

    def candidates(self, stream: np.uint64, first: int, users: torch.Tensor) -> torch.Tensor:
        positions = np.arange(first, first + len(users))
        return torch.as_tensor(self.sampler.draw(stream, positions, users.numpy(), self.shape))

    def shared(self, stream: np.uint64, first: int, local: int, num: int) -> torch.Tensor:
        return torch.as_tensor(shared_negatives(stream, first, local, self.data.num_items, num))

    def no_candidates(self, local: int) -> torch.Tensor:
        return torch.zeros((local, 0, 0), dtype=torch.int64)

    def user_scale(self, users: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(1.0 / self.pairs_per_user[users.numpy()], dtype=torch.float32)


class DeviceDraws(HostDraws):
    """The same draws with torch ops on the training device: the pairs, the epoch's order and
    the sampler's keys are copied there once (per epoch for the order), so a step has no host
    work and no copy. Equal to HostDraws id for id (tests/unit/test_device_draws.py)."""

    def __init__(self, data: InteractionData, sampler: CandidateSampler, shape: tuple[int, int],
                 pairs_per_user: np.ndarray, device: torch.device):
        super().__init__(data, sampler, shape, pairs_per_user, device)
        self.device = device
        self.users = torch.as_tensor(data.train_users, dtype=torch.int64, device=device)
        self.items = torch.as_tensor(data.train_items, dtype=torch.int64, device=device)
        self.scale = torch.as_tensor(1.0 / pairs_per_user, dtype=torch.float32, device=device)
        self.device_sampler = samplers.DeviceCandidateSampler(sampler, device)
        self.order = None

    def start_epoch(self, order: np.ndarray) -> None:
        self.order = torch.as_tensor(order, dtype=torch.int64, device=self.device)

    def pairs(self, idx: np.ndarray, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.order[first : first + len(idx)]  # = idx (batches.epoch_batches)
        return self.users[rows], self.items[rows]

    def candidates(self, stream: np.uint64, first: int, users: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(first, first + len(users), device=self.device)
        return self.device_sampler.draw(stream, positions, users, self.shape)

    def shared(self, stream: np.uint64, first: int, local: int, num: int) -> torch.Tensor:
        return samplers.device_shared_negatives(stream, first, local, self.data.num_items, num, self.device)

    def no_candidates(self, local: int) -> torch.Tensor:
        return torch.zeros((local, 0, 0), dtype=torch.int64, device=self.device)

    def user_scale(self, users: torch.Tensor) -> torch.Tensor:
        return self.scale[users]


def _eval_sets(csr: dict) -> dict[str, evaluate.EvalSplit]:
    """Validation masks the training items; test masks training and validation items."""
    return {"valid": evaluate.EvalSplit(csr["valid"], (csr["train"],)),
            "test": evaluate.EvalSplit(csr["test"], (csr["train"], csr["valid"]))}


def _refit_workload(cfg: Config, env: distributed.DistEnv, data: InteractionData, csr: dict) -> Workload:
    merged = from_data(cfg, env, data.merge_valid_into_train())
    # Test on the original splits: train and validation items are both masked.
    merged.eval_sets = _eval_sets(csr)
    merged.interactions = data.split_columns  # the exports keep the original splits
    return merged
