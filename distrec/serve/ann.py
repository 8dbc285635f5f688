"""Approximate top-K through faiss (the optional `ann` extra: `pip install distrec[ann]`).

faiss is the standard library for this: inverted files and HNSW graphs over inner products,
BLAS-backed, with CPU wheels on PyPI that need nothing beyond numpy; an index structure is
not code to re-write here. `search` returns the same `topk.TopK` as the exact path: the index
is built over the items' first `dim` dimensions, multi-interest queries search once per
interest and keep each item's best score, and excluded items are dropped after the search
(which asks for enough extra results to cover them). Imports: numpy, torch, faiss (lazily).
"""

from __future__ import annotations

import numpy as np
import torch

from distrec.serve.topk import Csr, NONE, TopK, merge_best

KINDS = ("ivf", "hnsw")


class AnnUnavailable(ImportError):
    pass


def _faiss():
    try:
        import faiss
    except ImportError:
        raise AnnUnavailable("--ann needs faiss: pip install 'distrec[ann]' (faiss-cpu)") from None
    return faiss


def build(items: torch.Tensor, dim: int, kind: str = "ivf", clusters: int | None = None, probes: int | None = None,
          seed: int = 0):
    """A faiss index over `items[:, :dim]` (inner product). ivf: `clusters` lists (default
    4 sqrt(n)), `probes` of them searched (default clusters / 8); hnsw: 32 links per node, `probes` as the search width
    (efSearch; default 2 x the results asked for, at least 64)."""
    faiss = _faiss()
    x = np.ascontiguousarray(items[:, :dim].detach().cpu().numpy(), dtype=np.float32)
    n = len(x)
    if kind == "ivf":
        c = max(1, min(n, clusters or int(4 * np.sqrt(n))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, c, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.add(x)
        index.nprobe = max(1, min(c, probes or max(1, c // 8)))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(x)
        # A fixed search width (efSearch) with `probes`; else `search` sets it per call.
        index.hnsw.efSearch = probes or 0
    else:
        raise ValueError(f"unknown --ann kind {kind!r}: {', '.join(KINDS)}")
    return index


def search(index, queries: torch.Tensor, dim: int, k: int, exclude: Csr | None = None,
           items: torch.Tensor | None = None) -> TopK:
    """Top-`k` per query row from a `build` index; queries `[B, D]` or `[B, K, D]`. With `items`
    (the table the index was built from), an item one interest found is scored by every
    interest (the max), as the exact search scores it; without, by the interests that found it."""
    q = queries[:, None, :] if queries.dim() == 2 else queries
    b, interests, _ = q.shape
    extra = int(np.diff(exclude[0]).max()) if exclude is not None and b else 0
    want = min(index.ntotal, k + extra)
    params = None
    if hasattr(index, "hnsw") and index.hnsw.efSearch == 0:  # no width given: well beyond the results asked for
        params = _faiss().SearchParametersHNSW(efSearch=max(64, 2 * want))
    x = np.ascontiguousarray(q[:, :, :dim].reshape(b * interests, dim).detach().cpu().numpy(), dtype=np.float32)
    scores, ids = index.search(x, want, params=params)
    scores = torch.as_tensor(scores).view(b, interests * want)
    ids = torch.as_tensor(ids).view(b, interests * want)
    if interests > 1 and items is not None:
        scores = _best_of_interests(q[:, :, :dim], items[:, :dim], ids, scores)
    scores = scores.masked_fill(ids < 0, -np.inf)
    if exclude is not None and len(exclude[1]):
        rows = np.repeat(np.arange(b), np.diff(exclude[0]))
        key = torch.as_tensor(rows * index.ntotal + exclude[1])
        drop = torch.isin(torch.arange(b)[:, None] * index.ntotal + ids, key)
        scores = scores.masked_fill(drop, -np.inf)
    ids = ids.masked_fill(~torch.isfinite(scores), NONE)
    return merge_best(ids, scores, k)


def _best_of_interests(q: torch.Tensor, items: torch.Tensor, ids: torch.Tensor, scores: torch.Tensor,
                       chunk_mb: float = 256.0) -> torch.Tensor:
    """Scores of the candidates `ids [B, M]` (-1: none) as the max over the interests of `q [B, K, d]`."""
    out = torch.empty_like(scores)
    step = max(1, int(chunk_mb * 2**20 / (4 * max(1, ids.shape[1]) * (q.shape[2] + q.shape[1]))))
    for lo in range(0, len(ids), step):
        rows = items[ids[lo : lo + step].clamp(min=0).to(items.device)].float()  # [b, M, d]
        best = torch.einsum("bkd,bmd->bkm", q[lo : lo + step].float(), rows).amax(dim=1)
        out[lo : lo + step] = best.cpu()
    return out
