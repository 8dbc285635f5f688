"""Exact full-ranking evaluation at every matryoshka level, split over ranks and reduced.

Users with at least one target are cut into fixed blocks whose size depends only on the item
count and `chunk_mb`, never on the world size, and blocks are dealt to ranks round-robin.
Every block is scored against all items exactly as a single process would score it, so any
world size gives the one-process numbers (up to the order of a float64 sum).
Imports: numpy, torch, distrec.parallel, distrec.embeddings.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distrec import parallel
from distrec.embeddings import Tables, lookup_padded
from distrec.parallel import DistEnv

Csr = tuple[np.ndarray, np.ndarray]  # (indptr [U + 1], column ids)


def metric_names(ks: tuple[int, ...], hitrate: bool = False) -> list[str]:
    names = ("recall", "ndcg", "hitrate") if hitrate else ("recall", "ndcg")
    return [f"{name}@{k}" for k in ks for name in names]


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
    rows = lookup_padded(lookup, ids)
    return parallel.all_gather_rows(rows.float(), env, num_rows)


def block_size(num_items: int, chunk_mb: float, num_interests: int = 1) -> int:
    """Users per block so that one block's float32 score matrices take about `chunk_mb`."""
    return max(1, int(chunk_mb * (1 << 20)) // (4 * max(num_items, 1) * (num_interests + 1)))


@torch.no_grad()
def evaluate(
    encode: Callable[[np.ndarray], torch.Tensor],
    items: Callable[[torch.Tensor], torch.Tensor],
    num_items: int,
    env: DistEnv,
    targets: Csr,
    exclude: list[Csr],
    levels: tuple[int, ...],
    ks: tuple[int, ...],
    chunk_mb: float = 256.0,
    num_interests: int = 1,
    hitrate: bool = False,
) -> dict[str, dict[str, float]]:
    """Metrics averaged over the rows with targets, per level: {"<d>": {"recall@20": x, ...}}.

    Rows are users (MF: CSRs over user ids) or evaluation users (multi-interest: CSRs over
    their positions). `encode(rows)` gives `[n, D]` or `[n, K, D]` query vectors and is called
    exactly once per rank (it may look up sharded tables, a collective). `items(ids)` looks up
    item rows through the sharded table.
    """
    table = gather_table(items, num_items, env)
    eval_rows = np.flatnonzero(np.diff(targets[0]) > 0)
    size = block_size(num_items, chunk_mb, num_interests)
    blocks = [eval_rows[i : i + size] for i in range(0, len(eval_rows), size)]
    mine = blocks[env.rank :: env.world_size]
    my_rows = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
    queries = encode(my_rows).float()
    names = metric_names(ks, hitrate)
    sums = torch.zeros((len(levels), len(names)), dtype=torch.float64)
    start = 0  # queries holds this rank's blocks back to back
    for rows in mine:
        sums += score_block(queries[start : start + len(rows)], table, rows, targets, exclude, levels, ks, hitrate)
        start += len(rows)
    sums = parallel.all_reduce_sum(sums, env)
    means = (sums / max(len(eval_rows), 1)).tolist()
    return {str(d): dict(zip(names, row)) for d, row in zip(levels, means)}


def user_encoder(tables: Tables, device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """MF queries: each user's row of the sharded user table."""
    return lambda rows: lookup_padded(tables.users, torch.as_tensor(rows, device=device))


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
    hitrate: bool = False,
) -> torch.Tensor:
    """Metric sums `[L, len(metric_names)]` (float64) for one block of rows `users`.

    u: `[C, D]` (one query per row) or `[C, K, D]` (K interests: the score of an item is the
    best of the K at that level, f(u, i) = max_k <v_k[:d], e_i[:d]>); items: `[I, D]`.
    """
    if u.dim() == 2:
        u = u.unsqueeze(1)
    c, num_items, dev = len(users), items.shape[0], u.device  # scored where the tables live (GPU or CPU)
    rel = torch.zeros((c, num_items), dtype=torch.bool, device=dev)
    rel[tuple(t.to(dev) for t in _pairs(targets, users))] = True
    num_targets = rel.sum(dim=1).double()
    masks = [tuple(t.to(dev) for t in _pairs(csr, users)) for csr in exclude]
    max_k = min(max(ks), num_items)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64, device=dev))
    ideal = torch.cumsum(discount, 0)  # ideal DCG with n relevant items is ideal[n - 1]
    per_metric = 3 if hitrate else 2
    out = torch.zeros((len(levels), per_metric * len(ks)), dtype=torch.float64, device=dev)
    partial = torch.zeros((c, u.shape[1], num_items), dtype=u.dtype, device=dev)
    prev = 0
    for li, d in enumerate(levels):
        # Prefix scores grow level by level: add only the new block of coordinates, so all
        # levels together cost one full-dimension product instead of one product per level.
        partial.view(-1, num_items).addmm_(u[:, :, prev:d].reshape(-1, d - prev), items[:, prev:d].T)
        prev = d
        scores = partial.amax(dim=1) if u.shape[1] > 1 else partial[:, 0].clone()
        for rows, cols in masks:
            scores[rows, cols] = -torch.inf
        top = scores.topk(max_k, dim=1).indices
        hit = rel.gather(1, top).double()  # [C, max_k]
        for ki, k in enumerate(ks):
            kk = min(k, max_k)
            recall = hit[:, :kk].sum(1) / num_targets
            dcg = (hit[:, :kk] * discount[:kk]).sum(1)
            idcg = ideal[(num_targets.clamp(max=kk) - 1).long()]
            out[li, per_metric * ki] = recall.sum()
            out[li, per_metric * ki + 1] = (dcg / idcg).sum()
            if hitrate:
                out[li, per_metric * ki + 2] = (hit[:, :kk].sum(1) > 0).double().sum()
    return out.cpu()
