"""Exact ranks of evaluation targets among all items, at every matryoshka level, counted over
one shard of the item table at a time.

With binary relevance, Recall@K, NDCG@K and HitRate@K need only each target's rank, not a
top-K list: rank(t) = 1 + the number of other unmasked items j with score(j) >= score(t).
Counts add up over disjoint item shards, so each rank of a job counts over its own rows of
the item table and one all-reduce of the counts gives the exact global ranks; no rank ever
holds the whole table.

Ties are counted against the target (an item scoring exactly as the target ranks above it),
so a degenerate model, e.g. all-zero embeddings, earns no hits rather than perfect ones.

Only ranks up to `cap` (the largest K) matter: once a target has `cap` items above it at
every level it can hit at no K, so it is dropped, and a user with no live target is no
longer scored. Most targets die within the first item blocks, so most of the score matrix
is never computed; the result is still exact.

Imports: torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

SYNC_EVERY = 16  # sharded: item blocks between two sums of the counts over ranks


def level_scores(u: torch.Tensor, e: torch.Tensor, levels: tuple[int, ...]) -> torch.Tensor:
    """Scores `[P, L]` of pairs (u [P, K, D] queries, e [P, D] items) at every level:
    max over the K interests of the prefix inner product, summed level block by level block as
    the blocked product does."""
    out, partial, prev = [], torch.zeros(u.shape[:2], dtype=u.dtype, device=u.device), 0
    for d in levels:
        partial = partial + (u[:, :, prev:d] * e[:, None, prev:d]).sum(-1)
        out.append(partial.amax(dim=1))
        prev = d
    return torch.stack(out, dim=1) if out else torch.zeros((u.shape[0], 0), dtype=u.dtype, device=u.device)


def count_above(
    u: torch.Tensor,
    items: torch.Tensor,
    pair_rows: torch.Tensor,
    target_scores: torch.Tensor,
    skip_pairs: torch.Tensor,
    skip_positions: torch.Tensor,
    levels: tuple[int, ...],
    cap: int,
    block_items: int,
    num_blocks: int | None = None,
    sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sync_every: int = SYNC_EVERY,
) -> torch.Tensor:
    """Per (pair, level), how many rows of `items` score at or above the pair's target, not
    counting the (pair, item) combinations listed in `skip_*`; counts stop mattering at `cap`.

    u: `[C, K, D]` queries of the block's rows; items: this shard's rows `[n, D]`, in any order
    (best: items likely to score high first, so that targets drop out early); pair_rows: `[P]`
    row of each (row, target) pair; target_scores: `[P, L]` (see `level_scores`);
    skip_pairs / skip_positions: `[S]` pairs and positions in `items` that must not count for
    them (the target itself, the row's masked items).
    Returns int64 `[P, L]`, exact where below `cap`, at least `cap` otherwise.

    Sharded (each rank counts over its own rows): `sync(counts)` sums the counts over ranks (a
    collective) and is called every `sync_every` blocks, so that a target beaten `cap` times on
    the other ranks is dropped here too; without it, each rank would keep scoring targets whose
    global rank is up to world_size x `cap`, and the rank holding the weaker items would do
    most of the work. `num_blocks` (the same on every rank) fixes the schedule of those calls.
    The sum over ranks of the returned counts stays exact below `cap`: counts only grow, and a
    pair is dropped only when the counts already known reach `cap`.
    """
    num_pairs, num_levels = target_scores.shape
    counts = torch.zeros((num_pairs, num_levels), dtype=torch.int64, device=u.device)
    if num_pairs == 0:  # the same on every rank: no rank skips the syncs below alone
        return counts
    k = u.shape[1]
    # Cauchy-Schwarz: an item scores at most |u[:d]| |e[:d]| (the best interest's norm for K > 1).
    # Once that bound, over every item not yet scanned, is below a target's score at a level,
    # nothing left can reach it: the level is final. Items come in decreasing norm, so bounds
    # fall fast: at the 50th-best score, a trained Books model is final after ~8% of the items.
    # The relative margin covers float32 rounding of the products (|error| << 1e-4 |bound|).
    prefix_norms = torch.stack([items[:, :d].norm(dim=1) for d in levels], dim=1)  # [n, L]
    remaining_max = torch.flip(torch.cummax(torch.flip(prefix_norms, [0]), dim=0).values, [0])  # max over j >= i
    query_norms = torch.stack([u[:, :, :d].norm(dim=2).amax(dim=1) for d in levels], dim=1)[pair_rows]  # [P, L]
    reach = (target_scores - 1e-6) / (1 + 1e-4)  # a level stays open while query_norm * remaining_max >= reach
    order = torch.argsort(skip_positions)  # by position, so each block's skips are one slice
    skip_pairs, skip_positions = skip_pairs[order], skip_positions[order]
    n = items.shape[0]
    others = torch.zeros_like(counts)  # the other ranks' counts at the last sync
    for bi in range(-(-n // block_items) if num_blocks is None else num_blocks):
        if sync is not None and bi and bi % sync_every == 0:
            others = sync(counts.clone()) - counts
        lo, hi = bi * block_items, min((bi + 1) * block_items, n)
        live = (counts + others < cap) if lo >= n else (counts + others < cap) & (query_norms * remaining_max[lo] >= reach)
        live = live.any(dim=1)
        if lo >= hi or not bool(live.any()):
            if sync is None:
                break
            continue  # keep taking part in the remaining syncs
        live_pairs = torch.nonzero(live).squeeze(1)
        rows, row_of_pair = torch.unique(pair_rows[live_pairs], return_inverse=True)
        # The skips of live pairs that fall in this block: (position among live pairs, column).
        s0, s1 = torch.searchsorted(skip_positions, torch.tensor([lo, hi], device=u.device)).tolist()
        pos_of_pair = torch.full((num_pairs,), -1, dtype=torch.int64, device=u.device)
        pos_of_pair[live_pairs] = torch.arange(len(live_pairs), device=u.device)
        sp, sc = pos_of_pair[skip_pairs[s0:s1]], skip_positions[s0:s1] - lo
        keep = sp >= 0
        sp, sc = sp[keep], sc[keep]
        ub, block = u[rows], items[lo:hi]
        # Most rows have one live target: its threshold is compared with the row's scores in
        # place. Only a row's further targets need a copy of its scores (an index_select was
        # a fifth of the evaluation's time when every pair took one).
        first = torch.ones(len(live_pairs), dtype=torch.bool, device=u.device)
        first[1:] = row_of_pair[1:] != row_of_pair[:-1]  # pairs come row by row
        first_pairs, extra = torch.nonzero(first).squeeze(1), torch.nonzero(~first).squeeze(1)
        partial = torch.zeros((len(rows) * k, hi - lo), dtype=u.dtype, device=u.device)
        compared = torch.empty((len(rows), hi - lo), dtype=u.dtype, device=u.device)
        gathered = torch.empty((len(extra), hi - lo), dtype=u.dtype, device=u.device)
        thresholds = target_scores[live_pairs]
        above = torch.empty(len(live_pairs), dtype=u.dtype, device=u.device)
        prev = 0
        for li, d in enumerate(levels):
            # Prefix scores grow level by level, so all levels together cost one full product.
            partial.addmm_(ub[:, :, prev:d].reshape(-1, d - prev), block[:, prev:d].T)
            prev = d
            scores = partial.view(len(rows), k, -1).amax(dim=1) if k > 1 else partial
            t = thresholds[:, li]
            # Compare into a float buffer and sum floats: summing a bool tensor converts it to
            # int64 first, which cost 6x the comparison itself (exact: counts < 2**24).
            torch.ge(scores, t[first_pairs][:, None], out=compared)
            above[first_pairs] = compared.sum(dim=1)
            if len(extra):
                torch.index_select(scores, 0, row_of_pair[extra], out=gathered)
                torch.ge(gathered, t[extra][:, None], out=gathered)
                above[extra] = gathered.sum(dim=1)
            skipped = scores[row_of_pair[sp], sc] >= t[sp]
            above.index_add_(0, sp, -skipped.to(above.dtype))
            counts[live_pairs, li] += above.to(counts.dtype)
    return counts
