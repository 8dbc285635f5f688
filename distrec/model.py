"""The MRL4Rec training task: matrix factorisation over sharded tables, hard negatives, MRL loss.

`MatryoshkaMF.forward(batch)` is the whole training step's forward, `(loss, stats)`, so it
runs through DistributedModelParallel's forward (and its DDP wrapper for any dense table).
Imports: torch, distrec.embeddings / losses / samplers / config.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from distrec import losses, samplers
from distrec.config import ModelConfig, TrainConfig
from distrec.embeddings import Tables


@dataclasses.dataclass
class Batch:
    """One rank's share of a global batch of (user, positive) pairs."""

    users: torch.Tensor  # [B] user ids
    pos: torch.Tensor  # [B] positive item ids
    cands: torch.Tensor  # [B, G, N] candidate negative ids (see samplers.candidate_shape)
    global_size: int  # pairs in the global batch, over all ranks
    world_size: int = 1

    def to(self, device: torch.device) -> "Batch":
        return dataclasses.replace(self, users=self.users.to(device), pos=self.pos.to(device), cands=self.cands.to(device))


class MatryoshkaMF(nn.Module):
    def __init__(self, tables: Tables, model_cfg: ModelConfig, train_cfg: TrainConfig):
        super().__init__()
        self.tables = tables
        self.levels = tuple(model_cfg.levels)
        self.weights = model_cfg.weights
        self.loss_kind = train_cfg.loss
        self.sampler = train_cfg.sampler
        self.l2 = train_cfg.l2

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, groups, n = batch.cands.shape
        u = self.tables.users(batch.users)  # [B, D]
        negs = self.choose_negatives(u.detach(), batch.cands)  # [B, J]
        # Positives and chosen negatives share one lookup: one all-to-all instead of two.
        rows = self.tables.items(torch.cat([batch.pos, negs.reshape(-1)]))
        pos, neg = rows[:b], rows[b:].view(b, negs.shape[1], -1)
        per_sample = losses.pairwise_loss(u, pos, neg, self.levels, self.weights, self.loss_kind)
        reg = self.l2 * losses.l2_penalty(u, pos, neg)
        # Gradients are averaged over ranks (DDP, and TorchRec's gradient division for sharded
        # tables), so each rank's share of the global-batch mean is scaled by the world size:
        # exactly the one-process gradient, even when local batches differ in size by one.
        loss = (per_sample.sum() + reg) * batch.world_size / batch.global_size
        return loss, {"loss_sum": per_sample.detach().sum(), "pairs": torch.tensor(float(b))}

    def choose_negatives(self, u: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
        """Candidate ids `[B, G, N]` -> chosen negative ids `[B, J]` (J = 1, or L for MNS)."""
        b, groups, n = cands.shape
        if self.sampler == "uniform":
            return cands[:, 0, :1]
        with torch.no_grad():  # scoring candidates needs no gradient: only the chosen ones train
            # Candidates repeat (B * G * N draws over the catalogue): look each id up once.
            distinct, where = torch.unique(cands, return_inverse=True)
            rows = self.tables.items(distinct)
        pick = samplers.select_hardest(u, rows, where, self.levels, self.sampler)  # [B, J] into N
        group = torch.arange(pick.shape[1], device=cands.device) if groups > 1 else torch.zeros(
            pick.shape[1], dtype=torch.long, device=cands.device
        )
        return cands[torch.arange(b, device=cands.device)[:, None], group[None, :], pick]
