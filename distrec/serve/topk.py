"""Top-K items per query at any matryoshka prefix: exact, or through a funnel.

A query is `[K, D]` (K interests; 1 for a user vector) and an item's score at prefix d is the
max over interests of the inner product of the first d dimensions, as in evaluation
(`ranking.level_scores`). `exclude` removes items per query (e.g. those already seen).

- `exact`: chunked over queries so the score matrix stays within `chunk_mb`; works on
  whatever device the tensors are on.
- `funnel`: shortlist N candidates at a coarse prefix, re-rank them at the full dimension. On
  a CPU the cost of scoring every item is writing the score matrix, not the arithmetic (a
  d = 4 product costs 0.73 of a d = 64 one over 368k items), so the funnel never scores the
  whole table: an inverted file (`CoarseIndex`) clusters the items by k-means; a query scores
  the centroids, and only the items of its `probes` best clusters are scored at the coarse
  prefix; the best N of those are re-ranked. With `probes` equal to the number of clusters the
  shortlist is the exact coarse top-N; with N at least the number of items the funnel is the
  exact search.

Imports: numpy, torch.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from distrec.data.csr import Csr

NONE = -1  # id of an empty slot (a query with fewer than k eligible items)


@dataclasses.dataclass
class TopK:
    ids: torch.Tensor  # [B, k] int64 item rows, best first; NONE where no item was left
    scores: torch.Tensor  # [B, k] float32, -inf where ids is NONE


def _as_queries(queries: torch.Tensor) -> torch.Tensor:
    return queries[:, None, :] if queries.dim() == 2 else queries


def score_all(queries: torch.Tensor, items: torch.Tensor, dim: int) -> torch.Tensor:
    """Scores `[B, n]` of every query against every item at prefix `dim` (max over interests)."""
    q = _as_queries(queries)
    b, k, _ = q.shape
    s = q[:, :, :dim].reshape(b * k, dim) @ items[:, :dim].T
    return s.view(b, k, -1).amax(dim=1) if k > 1 else s


def _mask(scores: torch.Tensor, exclude: Csr | None, lo: int, hi: int, columns: int) -> None:
    """-inf at the excluded items of rows lo..hi (scores is rows lo..hi over all `columns` items)."""
    if exclude is None:
        return
    indptr, items = exclude
    a, b = int(indptr[lo]), int(indptr[hi])
    if a == b:
        return
    rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo : hi + 1]))
    cols = items[a:b]
    keep = (cols >= 0) & (cols < columns)
    scores[torch.as_tensor(rows[keep], device=scores.device), torch.as_tensor(cols[keep], device=scores.device)] = -math.inf


def _topk(scores: torch.Tensor, k: int, ids: torch.Tensor | None = None) -> TopK:
    """The k best columns of each row (ids: the item of each column; default the column)."""
    kk = min(k, scores.shape[1])
    values, cols = torch.topk(scores, kk, dim=1)
    found = cols if ids is None else ids.gather(1, cols)
    found = torch.where(torch.isfinite(values), found, torch.full_like(found, NONE))
    if kk < k:  # fewer items than k: pad
        pad = k - kk
        values = torch.cat([values, values.new_full((len(values), pad), -math.inf)], dim=1)
        found = torch.cat([found, found.new_full((len(found), pad), NONE)], dim=1)
    return TopK(found, values)


def _rows_per_chunk(columns: int, interests: int, chunk_mb: float) -> int:
    return max(1, int(chunk_mb * 2**20 / (4 * max(columns, 1) * (interests + 1))))


def exact(queries: torch.Tensor, items: torch.Tensor, dim: int, k: int, exclude: Csr | None = None,
          chunk_mb: float = 256.0) -> TopK:
    """The exact top-`k` items of every query at prefix `dim`."""
    q = _as_queries(queries)
    step = _rows_per_chunk(items.shape[0], q.shape[1], chunk_mb)
    parts = []
    for lo in range(0, len(q), step):
        hi = min(lo + step, len(q))
        s = score_all(q[lo:hi], items, dim)
        _mask(s, exclude, lo, hi, items.shape[0])
        parts.append(_topk(s, k))
    return _concat(parts, k, q.device)


def _concat(parts: list[TopK], k: int, device) -> TopK:
    if not parts:
        return TopK(torch.zeros((0, k), dtype=torch.int64, device=device), torch.zeros((0, k), device=device))
    return TopK(torch.cat([p.ids for p in parts]), torch.cat([p.scores for p in parts]))


@dataclasses.dataclass
class CoarseIndex:
    """An inverted file: items clustered by k-means, with their first `dim` dimensions (the
    coarse prefix) stored cluster by cluster.

    Cluster c holds `order[offsets[c]:offsets[c+1]]`; `coarse` is the items' prefixes in that
    order, so each cluster's rows are contiguous and are scored by one small product."""

    dim: int
    centroids: torch.Tensor  # [C, D] at full dimension; probes are chosen by their prefix at the searched dim
    order: torch.Tensor  # [n] item rows, cluster by cluster
    offsets: torch.Tensor  # [C+1]
    coarse: torch.Tensor  # [n, dim] = items[order, :dim]

    @property
    def num_clusters(self) -> int:
        return len(self.centroids)

    @classmethod
    def build(cls, items: torch.Tensor, dim: int, clusters: int | None = None, *, iters: int = 10, seed: int = 0,
              train_points: int = 32) -> "CoarseIndex":
        """k-means (Lloyd, `iters` rounds) on at most `train_points` x clusters sampled items,
        then every item goes to its nearest centroid. Default clusters: 2 sqrt(n)."""
        n = items.shape[0]
        # Clustered on the full vectors, not the coarse prefix: a query then probes the clusters
        # whose items score best at the full dimension, where the result is ranked. On Phones
        # this kept 0.987 of exact recall@20 probing a sixteenth of the clusters, against 0.959
        # with clusters of the 16-dim prefix (docs/serving.md).
        x = items.float().contiguous()
        c = max(1, min(n, clusters or int(2 * math.sqrt(n))))
        g = torch.Generator().manual_seed(seed)
        sample = x[torch.randperm(n, generator=g)[: min(n, train_points * c)].to(x.device)]
        centroids = sample[torch.randperm(len(sample), generator=g)[:c].to(x.device)].clone()
        for _ in range(iters):
            assign = _nearest(sample, centroids)
            counts = torch.bincount(assign, minlength=c)
            sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
            empty = counts == 0  # an empty cluster keeps its centroid
            centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        assign = _nearest(x, centroids)
        used = torch.bincount(assign, minlength=c) > 0  # drop empty clusters: every list has items
        if not bool(used.all()):
            centroids = centroids[used]
            assign = (torch.cumsum(used.long(), 0) - 1)[assign]
            c = len(centroids)
        order = torch.argsort(assign, stable=True)
        offsets = torch.zeros(c + 1, dtype=torch.int64, device=x.device)
        offsets[1:] = torch.cumsum(torch.bincount(assign, minlength=c), 0)
        return cls(dim, centroids, order, offsets, items[order, :dim].float().contiguous())

    def lists(self) -> dict[str, torch.Tensor]:
        """What the clustering found, for any coarse dimension: save it, `with_lists` it back."""
        return {"centroids": self.centroids.cpu(), "order": self.order.cpu(), "offsets": self.offsets.cpu()}

    @classmethod
    def with_lists(cls, lists: dict[str, torch.Tensor], items: torch.Tensor, dim: int) -> "CoarseIndex":
        """The index of `items` over saved `lists`, at coarse dimension `dim` (the clusters do
        not depend on it: they are of the full vectors)."""
        device = items.device
        order, offsets = lists["order"].to(device), lists["offsets"].to(device)
        if order.shape != (items.shape[0],) or int(offsets[-1]) != items.shape[0] \
                or lists["centroids"].shape[1] != items.shape[1]:
            raise ValueError(f"saved lists for {order.shape[0]} items of dim {lists['centroids'].shape[1]}, "
                             f"not this table's {tuple(items.shape)}")
        return cls(dim, lists["centroids"].to(device), order, offsets, items[order, :dim].float().contiguous())


def _nearest(x: torch.Tensor, centroids: torch.Tensor, rows: int = 65536) -> torch.Tensor:
    out = []
    norms = (centroids * centroids).sum(1)
    for lo in range(0, len(x), rows):
        out.append((norms - 2 * x[lo : lo + rows] @ centroids.T).argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64, device=x.device)


def funnel(queries: torch.Tensor, items: torch.Tensor, index: CoarseIndex, shortlist: int, dim: int, k: int,
           exclude: Csr | None = None, probes: int | None = None, chunk_mb: float = 256.0) -> TopK:
    """Top-`k` at prefix `dim` among the `shortlist` best items at the index's coarse prefix,
    found in the `probes` clusters whose centroids score best (at `dim`, max over interests)."""
    q = _as_queries(queries)
    n = items.shape[0]
    if shortlist >= n:  # the shortlist is every item: the exact search
        return exact(q, items, dim, k, exclude, chunk_mb)
    c = index.num_clusters
    p = c if probes is None else max(1, min(probes, c))
    sizes = index.offsets[1:] - index.offsets[:-1]
    # A query's coarse scores are its probed clusters' items end to end: at most the p largest.
    longest = int(torch.topk(sizes, p).values.sum())
    per_row = longest + shortlist * (items.shape[1] + q.shape[1])  # coarse buffer, re-ranked rows
    step = max(1, int(chunk_mb * 2**20 / (4 * per_row)))
    position = torch.empty(n, dtype=torch.int64, device=items.device)  # item row -> place in index.coarse
    position[index.order] = torch.arange(n, device=items.device)
    cluster_of = torch.repeat_interleave(torch.arange(c, device=items.device), sizes)  # by place
    # One coarse buffer for every chunk: a fresh one per chunk costs its page faults each time.
    buf = torch.empty((min(step, len(q)), longest), device=q.device)
    parts = []
    for lo in range(0, len(q), step):
        hi = min(lo + step, len(q))
        parts.append(_funnel_chunk(q[lo:hi], items, index, shortlist, dim, k, p, position, cluster_of,
                                   _chunk_exclude(exclude, lo, hi), buf[: hi - lo]))
    return _concat(parts, k, q.device)


def _chunk_exclude(exclude: Csr | None, lo: int, hi: int) -> Csr | None:
    if exclude is None:
        return None
    indptr, items = exclude
    return indptr[lo : hi + 1] - indptr[lo], items[indptr[lo] : indptr[hi]]


def _funnel_chunk(q, items, index: CoarseIndex, shortlist, dim, k, p, position, cluster_of, exclude, buf) -> TopK:
    b, interests, _ = q.shape
    dc, device = index.dim, q.device
    qv = q[:, :, :dc]
    # The probes: clusters whose centroids score best for the query (max over its interests).
    centroid_scores = (q[:, :, :dim].reshape(b * interests, dim) @ index.centroids[:, :dim].T).view(b, interests, -1).amax(dim=1)
    probe = torch.topk(centroid_scores, p, dim=1).indices  # [b, p]
    # Row r of the coarse buffer holds the scores of its probed clusters' items end to end:
    # probe slot j from column start[r, j] (no padding to the largest cluster). (Query, slot)
    # pairs are grouped by cluster, so each cluster's items are read once per chunk and scored
    # by one product with all the queries that probe it.
    sizes = (index.offsets[1:] - index.offsets[:-1])[probe]
    start = torch.cumsum(sizes, dim=1) - sizes
    width = int((start[:, -1] + sizes[:, -1]).max())
    flat_buf = buf.view(-1)[: b * width]  # contiguous [b, width], so rows start at r * width
    scores = flat_buf.view(b, width)
    scores.fill_(-math.inf)
    flat = probe.reshape(-1)
    by_cluster = torch.argsort(flat, stable=True)
    who = by_cluster // p
    dest = who * width + start.reshape(-1)[by_cluster]  # where each pair's scores start in flat_buf
    queries_of = qv[who].reshape(-1, dc)  # pairs' queries, cluster by cluster: slices below, no gathers
    bounds = torch.searchsorted(flat[by_cluster], torch.arange(index.num_clusters + 1, device=device)).tolist()
    offsets = index.offsets.tolist()
    along = torch.arange(int((index.offsets[1:] - index.offsets[:-1]).max()), device=device)
    for cl in range(index.num_clusters):
        a, z = bounds[cl], bounds[cl + 1]
        if a == z:
            continue
        size = offsets[cl + 1] - offsets[cl]
        s = queries_of[a * interests : z * interests] @ index.coarse[offsets[cl] : offsets[cl + 1]].T
        if interests > 1:
            s = s.view(z - a, interests, size).amax(dim=1)
        flat_buf.index_put_(((dest[a:z, None] + along[:size]).view(-1),), s.view(-1))
    if exclude is not None and len(exclude[1]):
        rows = torch.as_tensor(np.repeat(np.arange(b), np.diff(exclude[0])), device=device)
        places = position[torch.as_tensor(exclude[1], device=device)]
        clusters = cluster_of[places]
        hit = probe[rows] == clusters[:, None]  # [E, p]: the slot that probed the item's cluster
        found = hit.any(dim=1)
        rows, places, clusters = rows[found], places[found], clusters[found]
        slots = hit[found].int().argmax(dim=1)
        scores[rows, start[rows, slots] + places - index.offsets[clusters]] = -math.inf
    coarse_values, column = torch.topk(scores, min(shortlist, width), dim=1)
    slot = torch.searchsorted(start, column, right=True) - 1  # clusters are never empty: starts increase
    place = index.offsets[probe.gather(1, slot)] + column - start.gather(1, slot)
    valid = torch.isfinite(coarse_values)
    candidates = torch.where(valid, index.order[place.clamp(max=len(index.order) - 1)], torch.zeros_like(place))
    # Re-rank the shortlist at the full prefix.
    rows = items[candidates][:, :, :dim]  # [b, N, dim]
    full = torch.einsum("bkd,bnd->bkn", q[:, :, :dim], rows).amax(dim=1)
    full = full.masked_fill(~valid, -math.inf)
    return _topk(full, k, candidates)


def merge_best(ids: torch.Tensor, scores: torch.Tensor, k: int) -> TopK:
    """Top-`k` of per-row candidate lists that may name an item more than once (one list per
    interest): each item counts once, with its best score."""
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    ids, scores = ids.gather(1, by_score), scores.gather(1, by_score)
    by_id = torch.argsort(ids, dim=1, stable=True)  # within an id, the best score comes first
    sorted_ids = ids.gather(1, by_id)
    repeat = torch.zeros_like(sorted_ids, dtype=torch.bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    first = torch.empty_like(repeat).scatter_(1, by_id, ~repeat)
    return _topk(scores.masked_fill(~first, -math.inf), k, ids)
