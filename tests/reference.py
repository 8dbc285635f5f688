"""References the tests hold the package to, written without the code under test: the explicit
formulas of the losses the package computes another way, brute-force ranking metrics, and a
helper that gives a sharded model known weights and one that reads its blocks back whole. Nothing in distrec/ imports this module."""

from __future__ import annotations

import numpy as np
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor

from distrec.nn import losses


def gramian_penalty(u: torch.Tensor, items: torch.Tensor, levels: tuple[int, ...], weights: tuple[float, ...]) -> torch.Tensor:
    """Whole-catalogue term per user `[B]` as the formula reads: sum_l w_l * mean over ALL items
    i of <u[:d_l], v_i[:d_l]>^2, one d_l x d_l Gramian block per level (the package uses one
    masked d x d product, losses.gramian_mask)."""
    gram = items.T @ items  # [D, D]
    total = u.new_zeros(u.shape[0])
    for d, w in zip(levels, weights):
        total = total + w * ((u[:, :d] @ gram[:d, :d]) * u[:, :d]).sum(dim=1)
    return total / items.shape[0]


def sampled_softmax(user: torch.Tensor, pos: torch.Tensor, negs: torch.Tensor, beta: float = 0.0,
                    neg_log_q: torch.Tensor | None = None, pos_id: torch.Tensor | None = None,
                    neg_ids: torch.Tensor | None = None, pos_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """One level's per-sample sampled softmax (IHN when beta > 0) for `user [B, D]`, `pos [B, D]`
    and negatives `negs [N, D]` shared by the batch; accidental hits dropped when both ids are given."""
    hits = losses._hits(pos_id, neg_ids)  # the package's accidental-hit mask, as its losses use it
    return losses.sampled_softmax_from_scores((user * pos).sum(dim=-1), user @ negs.T, beta, neg_log_q, pos_log_q, hits)


def reference_rr_weight(lambda_ref: float = 100.0, batch_size: int = 128, dim: int = 64) -> float:
    """Weight on the batch mean of `losses.routing_regularization` that reproduces the REMI
    reference's `lambda_ref * sum_b ||diag(C_b / dim)||^2` at the reference's batch size."""
    return lambda_ref * batch_size / dim**2


@torch.no_grad()
def load_full_tables(model: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Write whole tables into a sharded model: `full` maps a table name ("user", "item") to its
    `[rows, D]` weights; each rank copies the block that its local shards cover."""
    found = set()
    for key, value in model.state_dict().items():
        table = key.rsplit(".", 2)[-2] if key.endswith(".weight") else None
        if table not in full:
            continue
        found.add(table)
        src = full[table]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(src[r0 : r0 + nr, c0 : c0 + nc])
        else:
            value.copy_(src)
    missing = set(full) - found
    if missing:
        raise KeyError(f"no table named {sorted(missing)} in the model")


def ranking_metrics(users: np.ndarray, items: np.ndarray, targets, exclude: list, levels: tuple[int, ...],
                    ks: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Mean Recall@K and NDCG@K over the rows with targets, per level, in float64 numpy from the
    whole score matrix: `users [U, D]`, `items [I, D]`, `targets` and each of `exclude` CSRs
    (indptr, items) over the U rows. A target's rank is 1 + the number of other eligible items
    scoring at least as high (ties count against it)."""
    indptr, cols = targets
    rows = np.flatnonzero(np.diff(indptr) > 0)
    out = {}
    for d in levels:
        scores = users[rows, :d].astype(np.float64) @ items[:, :d].astype(np.float64).T  # [R, I]
        banned = np.zeros(scores.shape, bool)
        for ex_ptr, ex_cols in exclude:
            for r, row in enumerate(rows):
                banned[r, ex_cols[ex_ptr[row]:ex_ptr[row + 1]]] = True
        sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
        for r, row in enumerate(rows):
            truth = cols[indptr[row]:indptr[row + 1]]
            eligible = ~banned[r]
            s = scores[r]
            rank = np.array([int(((s >= s[t]) & eligible).sum()) for t in truth])  # >= 1: the target itself
            for k in ks:
                hit = rank <= k
                sums[f"recall@{k}"] += hit.sum() / len(truth)
                dcg = (hit / np.log2(rank + 1)).sum()
                idcg = (1.0 / np.log2(np.arange(2, min(len(truth), k) + 2))).sum()
                sums[f"ndcg@{k}"] += dcg / idcg
        out[str(d)] = {name: value / len(rows) for name, value in sums.items()}
    return out


def whole(t: ShardedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """This rank's blocks of a ShardedTensor in a zero tensor of its whole size (sum the ranks'
    results for the table; in one process it is the table)."""
    full = torch.zeros(t.size(), dtype=dtype)
    for shard in t.local_shards():
        index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
        full[index] = shard.tensor.to(dtype)
    return full


def whole_tables(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Every sharded entry of the model's state dict (its tables), `whole`."""
    return {k: whole(v, dtype) for k, v in model.state_dict().items() if isinstance(v, ShardedTensor)}
