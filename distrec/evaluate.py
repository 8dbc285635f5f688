"""Exact full-ranking evaluation at every matryoshka level, split over ranks and reduced.

Users with at least one target are cut into fixed blocks whose size depends only on the item
count and `chunk_mb`, never on the world size, and blocks are dealt to ranks round-robin.
Every block is scored against all items exactly as a single process would score it, so any
world size gives the one-process numbers (up to the order of a float64 sum).
Imports: numpy, torch, distrec.parallel, distrec.embeddings.
"""

from __future__ import annotations

import numpy as np
import torch

from distrec import parallel
from distrec.embeddings import Tables
from distrec.parallel import DistEnv

Csr = tuple[np.ndarray, np.ndarray]  # (indptr [U + 1], column ids)


def metric_names(ks: tuple[int, ...]) -> list[str]:
    return [f"{name}@{k}" for k in ks for name in ("recall", "ndcg")]


@torch.no_grad()
def gather_table(lookup, num_rows: int, env: DistEnv) -> torch.Tensor:
    """The whole table `[num_rows, D]` on every rank, looked up through the sharded module.

    Each rank looks up one contiguous slice of ids (a collective, so every rank takes part
    even with an empty slice), then the slices are all-gathered.
    """
    num_rows = int(num_rows)  # a numpy integer would break torch.arange
    per_rank = -(-num_rows // env.world_size)
    lo, hi = min(env.rank * per_rank, num_rows), min((env.rank + 1) * per_rank, num_rows)
    ids = torch.arange(lo, hi, device=env.device)
    rows = _lookup_padded(lookup, ids)
    return parallel.all_gather_rows(rows.float(), env, num_rows)


def _lookup_padded(lookup, ids: torch.Tensor) -> torch.Tensor:
    # A rank may own no ids; it still has to join the collective lookup, so it asks for row 0.
    if ids.numel() == 0:
        return lookup(torch.zeros(1, dtype=torch.long, device=ids.device))[:0]
    return lookup(ids)


def block_size(num_items: int, chunk_mb: float) -> int:
    """Users per block so that one block's float32 score matrix takes about `chunk_mb`."""
    return max(1, int(chunk_mb * (1 << 20)) // (4 * max(num_items, 1)))


@torch.no_grad()
def evaluate(
    tables: Tables,
    env: DistEnv,
    targets: Csr,
    exclude: list[Csr],
    levels: tuple[int, ...],
    ks: tuple[int, ...],
    chunk_mb: float = 256.0,
) -> dict[str, dict[str, float]]:
    """Recall@K and NDCG@K averaged over users with targets, per level: {"<d>": {"recall@20": x}}."""
    num_items = tables.num_items
    items = gather_table(tables.items, num_items, env)
    indptr = targets[0]
    eval_users = np.flatnonzero(np.diff(indptr) > 0)
    size = block_size(num_items, chunk_mb)
    blocks = [eval_users[i : i + size] for i in range(0, len(eval_users), size)]
    mine = blocks[env.rank :: env.world_size]
    my_users = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    user_rows = _lookup_padded(tables.users, torch.as_tensor(my_users, device=env.device)).float()
    sums = torch.zeros((len(levels), 2 * len(ks)), dtype=torch.float64)
    start = 0  # user_rows holds this rank's blocks back to back
    for users in mine:
        u = user_rows[start : start + len(users)]
        start += len(users)
        sums += score_block(u, items, users, targets, exclude, levels, ks)
    sums = parallel.all_reduce_sum(sums, env)
    means = (sums / max(len(eval_users), 1)).tolist()
    names = metric_names(ks)
    return {str(d): dict(zip(names, row)) for d, row in zip(levels, means)}


def _pairs(csr: Csr, users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within block, column) of the CSR entries of `users`, vectorised."""
    indptr, cols = csr
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return torch.as_tensor(rows), torch.as_tensor(cols[np.repeat(starts, counts) + offsets])


def score_block(
    u: torch.Tensor,
    items: torch.Tensor,
    users: np.ndarray,
    targets: Csr,
    exclude: list[Csr],
    levels: tuple[int, ...],
    ks: tuple[int, ...],
) -> torch.Tensor:
    """Metric sums `[L, 2 * len(ks)]` (float64) for one block: `u [C, D]`, `items [I, D]`."""
    c, num_items, dev = len(users), items.shape[0], u.device  # scored where the tables live (GPU or CPU)
    rel = torch.zeros((c, num_items), dtype=torch.bool, device=dev)
    rel[tuple(t.to(dev) for t in _pairs(targets, users))] = True
    num_targets = rel.sum(dim=1).double()
    masks = [tuple(t.to(dev) for t in _pairs(csr, users)) for csr in exclude]
    max_k = min(max(ks), num_items)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64, device=dev))
    ideal = torch.cumsum(discount, 0)  # ideal DCG with n relevant items is ideal[n - 1]
    out = torch.zeros((len(levels), 2 * len(ks)), dtype=torch.float64, device=dev)
    scores = torch.zeros((c, num_items), dtype=u.dtype, device=dev)
    prev = 0
    for li, d in enumerate(levels):
        # Prefix scores grow level by level: add only the new block of coordinates, so all
        # levels together cost one full-dimension product instead of one product per level.
        scores.addmm_(u[:, prev:d], items[:, prev:d].T)
        prev = d
        for rows, cols in masks if li == 0 else ():
            scores[rows, cols] = -torch.inf  # once: -inf stays -inf as later blocks are added
        top = scores.topk(max_k, dim=1).indices
        hit = rel.gather(1, top).double()  # [C, max_k]
        for ki, k in enumerate(ks):
            kk = min(k, max_k)
            recall = hit[:, :kk].sum(1) / num_targets
            dcg = (hit[:, :kk] * discount[:kk]).sum(1)
            idcg = ideal[(num_targets.clamp(max=kk) - 1).long()]
            out[li, 2 * ki] = recall.sum()
            out[li, 2 * ki + 1] = (dcg / idcg).sum()
    return out.cpu()
