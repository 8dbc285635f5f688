"""Exact full-ranking evaluation at every matryoshka level, sharded over ranks and reduced.

No rank holds the whole item table: each rank looks up one contiguous slice of item rows
through the sharded module and counts, for every (user, target) pair, how many of its items
score at or above the target (`distrec.eval.ranking`). One all-reduce of the counts gives every
target's exact global rank, from which Recall, NDCG and HitRate follow (binary relevance needs
no top-K list). Users are taken in chunks whose size depends only on the data and `chunk_mb`,
never on the world size; each rank encodes its share of a chunk and the queries are
all-gathered, so every world size gives the one-process numbers.
Imports: numpy, torch, distrec.distributed, distrec.nn.embeddings, distrec.eval.ranking, distrec.data.sequences (ranges).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from distrec import distributed
from distrec.config import METRICS, Config
from distrec.data.csr import Csr, ranges
from distrec.distributed import DistEnv
from distrec.eval.ranking import SYNC_EVERY, count_above, level_scores
from distrec.nn.embeddings import Tables, lookup_padded

BLOCK_ITEMS = 1024  # items scored at once: 512-1024 measured fastest on a Books model (docs/benchmarks.md)


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What an evaluation computes: every metric of `metrics` (names of METRIC_VALUES) at every
    cut-off of `ks`, at every matryoshka level; and how: `chunk_mb` of score matrix per chunk of
    rows, `block_items` items scored at once, counts summed over ranks every `sync_every` blocks."""

    levels: tuple[int, ...]
    ks: tuple[int, ...]
    metrics: tuple[str, ...] = ("recall", "ndcg")
    chunk_mb: float = 256.0
    block_items: int = BLOCK_ITEMS
    sync_every: int = SYNC_EVERY

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRIC_VALUES]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}: known are {', '.join(METRIC_VALUES)}")

    @classmethod
    def of(cls, cfg: Config) -> EvalSpec:
        """The run's evaluation: its levels and cut-offs, its task's metrics (config.METRICS)."""
        return cls(levels=tuple(cfg.model.levels), ks=tuple(cfg.eval.ks), metrics=METRICS[cfg.model.task],
                   chunk_mb=cfg.eval.chunk_mb)

    @property
    def names(self) -> list[str]:
        """`recall@20`, ...: each cut-off's metrics in the order of `metrics`."""
        return [f"{m}@{k}" for k in self.ks for m in self.metrics]


@dataclasses.dataclass(frozen=True)
class EvalSplit:
    """One split to evaluate: each row's targets, and the items masked for it (its training
    items, and validation items for test)."""

    targets: Csr
    exclude: tuple[Csr, ...] = ()


def _slice(num_rows: int, env: DistEnv) -> tuple[int, int]:
    per_rank = -(-int(num_rows) // env.world_size)
    return min(env.rank * per_rank, num_rows), min((env.rank + 1) * per_rank, num_rows)


@torch.no_grad()
def local_rows(lookup, num_rows: int, env: DistEnv) -> tuple[int, torch.Tensor]:
    """This rank's contiguous slice of a sharded table: (first id, rows `[n, D]`).

    The lookup is a collective, so every rank takes part even with an empty slice."""
    lo, hi = _slice(int(num_rows), env)
    return lo, lookup_padded(lookup, torch.arange(lo, hi, device=env.device)).float()


@torch.no_grad()
def gather_table(lookup, num_rows: int, env: DistEnv) -> torch.Tensor:
    """The whole table `[num_rows, D]` on every rank (for exporting embeddings, not for scoring)."""
    _, rows = local_rows(lookup, num_rows, env)
    return distributed.all_gather_rows(rows, env, int(num_rows))


def chunks(rows: np.ndarray, targets: Csr, num_interests: int, chunk_mb: float, block_items: int = BLOCK_ITEMS) -> list[np.ndarray]:
    """Cut evaluation rows into chunks whose scoring memory is about `chunk_mb`: per row, a
    block of K interest scores and one of the max, plus one gathered block per target."""
    per_row = num_interests + 1 + np.diff(targets[0])[rows]
    budget = max(1, int(chunk_mb * (1 << 20)) // (4 * block_items))
    ends = np.searchsorted(np.cumsum(per_row), np.arange(budget, int(per_row.sum()) + budget, budget), side="right")
    ends = np.unique(np.clip(ends, 1, len(rows)))
    return [rows[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends) if b > a]


def rows_with_targets(targets: Csr) -> np.ndarray:
    return np.flatnonzero(np.diff(targets[0]) > 0)


def sample_rows(targets: Csr, n: int | None, seed: int) -> np.ndarray:
    """Rows with targets; a fixed seeded sample of `n` of them (sorted) when `n` is smaller."""
    rows = rows_with_targets(targets)
    if n is None or n >= len(rows):
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))


@torch.no_grad()
def evaluate(
    encode: Callable[[np.ndarray], torch.Tensor],
    items: Callable[[torch.Tensor], torch.Tensor],
    num_items: int,
    env: DistEnv,
    split: EvalSplit,
    spec: EvalSpec,
    *,
    num_interests: int = 1,
    rows: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics averaged over the evaluated rows, per level: {"<d>": {"recall@20": x, ...}}.

    Rows are users (MF: CSRs over user ids) or evaluation users (multi-interest: CSRs over
    their positions); `rows` (default: every row with a target) picks a subset, e.g. a sample
    (`sample_rows`), in which case each metric's standard error over rows is added as
    "<name>_se". `encode(rows)` gives `[n, D]` or `[n, K, D]` query vectors (it may look up
    sharded tables, a collective: every rank calls it once per chunk). `items(ids)` looks up
    item rows through the sharded table.
    """
    first_id, table = local_rows(items, num_items, env)
    shard = ItemShard.of(first_id, table, max_rows=-(-int(num_items) // env.world_size))
    sampled = rows is not None
    rows = rows_with_targets(split.targets) if rows is None else np.asarray(rows, dtype=np.int64)
    names = spec.names
    sums = torch.zeros((2, len(spec.levels), len(names)), dtype=torch.float64)  # sum and sum of squares over rows
    for chunk in chunks(rows, split.targets, num_interests, spec.chunk_mb, spec.block_items):
        lo, hi = _slice(len(chunk), env)
        queries = encode(chunk[lo:hi]).float()
        queries = distributed.all_gather_rows(queries if queries.dim() == 3 else queries[:, None], env, len(chunk))
        per_row = score_chunk(queries, shard, chunk, split, spec, env)
        sums += torch.stack([per_row.sum(0), per_row.pow(2).sum(0)])
    n = max(len(rows), 1)
    means = sums[0] / n
    out = {str(d): dict(zip(names, row)) for d, row in zip(spec.levels, means.tolist())}
    if sampled:
        var = (sums[1] / n - means.pow(2)).clamp(min=0) * n / max(n - 1, 1)
        for d, row in zip(spec.levels, (var / n).sqrt().tolist()):
            out[str(d)].update({f"{name}_se": se for name, se in zip(names, row)})
    return out


def user_encoder(tables: Tables, device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """MF queries: each user's row of the sharded user table."""
    return lambda rows: lookup_padded(tables.users, torch.as_tensor(rows, device=device))


def _pairs(csr: Csr, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row within block, column) of the CSR entries of `users`, vectorised."""
    indptr, cols = csr
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users), dtype=np.int64), counts)
    return rows, cols[np.repeat(starts, counts) + ranges(counts)]


@dataclasses.dataclass(frozen=True)
class ItemShard:
    """One rank's contiguous slice of the item table (global ids `first_id ..`), its rows put
    in order of decreasing norm: high-norm items tend to outscore targets, so scanning them
    first lets targets drop out sooner (+35% users/s on a Books model). `position[j]` is where
    the slice's j-th item went."""

    first_id: int
    rows: torch.Tensor  # [n, D], sorted
    position: torch.Tensor  # [n] int64
    max_rows: int  # the largest slice over ranks (all ranks scan that many blocks)

    @classmethod
    def of(cls, first_id: int, table: torch.Tensor, max_rows: int | None = None) -> "ItemShard":
        order = torch.argsort(table.norm(dim=1), descending=True, stable=True)
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order), device=order.device)
        return cls(first_id, table[order], position, len(order) if max_rows is None else max_rows)

    def local(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask of the global `ids` held here, their positions in `rows`)."""
        held = (ids >= self.first_id) & (ids < self.first_id + len(self.position))
        return held, self.position[ids[held] - self.first_id]


def score_chunk(
    queries: torch.Tensor,
    shard: ItemShard,
    rows: np.ndarray,
    split: EvalSplit,
    spec: EvalSpec,
    env: DistEnv | None = None,
) -> torch.Tensor:
    """Per-row metric values `[C, L, len(spec.names)]` (float64, on the CPU) of the rows
    `rows`, whose queries `[C, K, D]` are given, against this rank's `shard` of the items.
    With `env`, target scores and counts are summed over ranks (each holds one slice)."""
    dev = shard.rows.device
    levels, block_items = spec.levels, spec.block_items
    pair_rows, pair_items = _unique_pairs(*_pairs(split.targets, rows))  # one pair per distinct (row, target)
    num_pairs = len(pair_rows)
    # Items that must not count for a pair: the target itself and the row's masked items.
    skip_pairs, skip_items = [np.arange(num_pairs)], [pair_items]
    masked_target = np.zeros(num_pairs, dtype=bool)  # a masked target can never be hit
    for csr in split.exclude:
        p, i = _join(pair_rows, *_pairs(csr, rows))
        masked_target[p[i == pair_items[p]]] = True
        skip_pairs.append(p)
        skip_items.append(i)
    skip_pairs, skip_items = _unique_pairs(np.concatenate(skip_pairs), np.concatenate(skip_items))

    prow_t = torch.as_tensor(pair_rows, device=dev)
    owned, owned_pos = shard.local(torch.as_tensor(pair_items, device=dev))
    target_scores = torch.zeros((num_pairs, len(levels)), dtype=torch.float32, device=dev)
    target_scores[owned] = level_scores(queries[prow_t[owned]], shard.rows[owned_pos], levels)
    cap = max(spec.ks)
    if env is not None:
        target_scores = distributed.all_reduce_sum(target_scores, env)  # exactly one rank owns each target
    skip_held, skip_pos = shard.local(torch.as_tensor(skip_items, device=dev))
    sharded = env is not None and env.world_size > 1
    counts = count_above(queries, shard.rows, prow_t, target_scores, torch.as_tensor(skip_pairs, device=dev)[skip_held],
                         skip_pos, levels, cap, block_items, num_blocks=-(-shard.max_rows // block_items),
                         sync=(lambda c: distributed.all_reduce_sum(c, env)) if sharded else None, sync_every=spec.sync_every)
    if env is not None:
        counts = distributed.all_reduce_sum(counts, env)
    ranks = counts.cpu() + 1
    ranks[torch.as_tensor(masked_target)] = cap + 1
    return metric_values(ranks, torch.as_tensor(pair_rows), len(rows), spec)


def metric_values(ranks: torch.Tensor, pair_rows: torch.Tensor, num_rows: int, spec: EvalSpec) -> torch.Tensor:
    """Per-row values `[R, L, len(spec.names)]` of `spec`'s metrics from the 1-based ranks `[P, L]`
    of each row's distinct targets (binary relevance), each metric computed by its name."""
    num_levels = ranks.shape[1]
    num_targets = torch.bincount(pair_rows, minlength=num_rows).double()
    ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, max(spec.ks) + 2, dtype=torch.float64)), 0)
    gain = 1.0 / torch.log2(ranks.double() + 1)
    columns = []
    for k in spec.ks:
        hit = (ranks <= k).double()  # [P, L]
        hits = torch.zeros((num_rows, num_levels), dtype=torch.float64).index_add_(0, pair_rows, hit)
        dcg = torch.zeros((num_rows, num_levels), dtype=torch.float64).index_add_(0, pair_rows, hit * gain)
        idcg = ideal[(num_targets.clamp(max=k) - 1).clamp(min=0).long()]
        counts = RowCounts(hits=hits, dcg=dcg, idcg=idcg[:, None], targets=num_targets.clamp(min=1)[:, None])
        columns += [METRIC_VALUES[m](counts) for m in spec.metrics]
    return torch.stack(columns, dim=-1)


@dataclasses.dataclass(frozen=True)
class RowCounts:
    """What every metric at one cut-off K is made of, per row and level `[R, L]`."""

    hits: torch.Tensor  # targets ranked within K
    dcg: torch.Tensor  # sum of 1 / log2(rank + 1) over them
    idcg: torch.Tensor  # [R, 1]: the best DCG the row's targets allow at K
    targets: torch.Tensor  # [R, 1]: the row's distinct targets (at least 1)


# Each metric by name, from a cut-off's counts; config.METRICS says which a task computes.
METRIC_VALUES: dict[str, Callable[[RowCounts], torch.Tensor]] = {
    "recall": lambda c: c.hits / c.targets,
    "ndcg": lambda c: c.dcg / c.idcg,
    "hitrate": lambda c: (c.hits > 0).double(),
}


def _join(pair_rows: np.ndarray, ex_rows: np.ndarray, ex_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (pair, excluded item) combination of the same row, vectorised.

    pair_rows must be sorted (pairs come row by row)."""
    start = np.searchsorted(pair_rows, ex_rows, side="left")
    count = np.searchsorted(pair_rows, ex_rows, side="right") - start
    return np.repeat(start, count) + ranges(count), np.repeat(ex_items, count)


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) pairs of non-negative ints below 2**32, sorted by a, then b."""
    key = np.unique(a * np.int64(1 << 32) + b)
    return key >> 32, key & ((1 << 32) - 1)


def score_block(u: torch.Tensor, items: torch.Tensor, users: np.ndarray, split: EvalSplit, spec: EvalSpec) -> torch.Tensor:
    """Metric sums `[L, len(spec.names)]` (float64) of rows `users` against the whole item
    table `items [I, D]`, in one process: the reference the sharded evaluation must equal.

    u: `[C, D]` (one query per row) or `[C, K, D]` (K interests: the score of an item is the
    best of the K at that level, f(u, i) = max_k <v_k[:d], e_i[:d]>).
    """
    queries = (u if u.dim() == 3 else u[:, None]).float()
    return score_chunk(queries, ItemShard.of(0, items.float()), np.asarray(users), split, spec).sum(0)
