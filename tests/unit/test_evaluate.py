import math

import numpy as np
import torch

from distrec.eval import evaluate


def to_csr(lists):
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    cols = np.array([i for x in lists for i in sorted(x)], dtype=np.int64)
    return indptr, cols


def split(targets, *excludes):
    return evaluate.EvalSplit(to_csr(targets), tuple(to_csr(e) for e in excludes))


def spec(levels, ks, hitrate=False, **how):
    return evaluate.EvalSpec(levels=levels, ks=ks, metrics=("recall", "ndcg", "hitrate") if hitrate else ("recall", "ndcg"), **how)


def brute_force(u, items, users, targets, excludes, levels, ks):
    out = np.zeros((len(levels), 2 * len(ks)))
    for li, d in enumerate(levels):
        for row, user in enumerate(users):
            scores = (items[:, :d] @ u[row, :d]).astype(np.float64)
            banned = set().union(*[set(e[user]) for e in excludes])
            ranked = [i for i in np.argsort(-scores, kind="stable") if i not in banned]
            truth = set(targets[user])
            for ki, k in enumerate(ks):
                top = ranked[:k]
                hits = [1.0 if i in truth else 0.0 for i in top]
                out[li, 2 * ki] += sum(hits) / len(truth)
                dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
                idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
                out[li, 2 * ki + 1] += dcg / idcg
    return out


def test_score_block_matches_brute_force():
    rng = np.random.default_rng(0)
    num_users, num_items, dim = 12, 40, 8
    train = [set(rng.choice(num_items, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(num_users)]
    valid = [set(rng.choice([i for i in range(num_items) if i not in train[u]], size=2, replace=False).tolist()) for u in range(num_users)]
    test = [set(rng.choice([i for i in range(num_items) if i not in train[u] | valid[u]], size=rng.integers(1, 5), replace=False).tolist()) for u in range(num_users)]
    u = rng.normal(size=(num_users, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    users = np.arange(num_users)
    levels, ks = (2, 4, 8), (1, 5, 10)
    got = evaluate.score_block(torch.tensor(u), torch.tensor(items), users, split(test, train, valid), spec(levels, ks))
    want = brute_force(u, items, users, test, [train, valid], levels, ks)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_perfect_and_hopeless_rankings():
    # One user whose single target is the item with the top score (perfect) at dim 2.
    u = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    perfect = evaluate.score_block(u, items, np.array([0]), split([[0]]), spec((2,), (1,)))
    assert perfect.tolist() == [[1.0, 1.0]]
    # The top item is masked as a training item, so the target (item 2, lowest) is never in top 1.
    hopeless = evaluate.score_block(u, items, np.array([0]), split([[2]], [[0]]), spec((2,), (1,)))
    assert hopeless.tolist() == [[0.0, 0.0]]


def test_chunks_cover_rows_in_order_within_budget():
    rng = np.random.default_rng(3)
    lists = [list(range(int(n))) for n in rng.integers(0, 6, size=200)]
    targets = to_csr(lists)
    rows = np.flatnonzero(np.diff(targets[0]) > 0)
    for k in (1, 4):
        parts = evaluate.chunks(rows, targets, k, chunk_mb=0.05, block_items=1024)
        np.testing.assert_array_equal(np.concatenate(parts), rows)
        budget = int(0.05 * (1 << 20)) // (4 * 1024)
        assert len(parts) > 1
        # a chunk may exceed the budget by one row at most (a row is never split)
        for part in parts:
            weight = k + 1 + np.diff(targets[0])[part]
            assert weight[:-1].sum() <= budget


def _ranked_metrics(scores, banned, truth, ks):
    """Brute force with ties against the target: an item scoring the same ranks above it."""
    out = []
    for k in ks:
        ranks = [1 + sum(1 for j, s in enumerate(scores) if j != t and j not in banned and s >= scores[t]) for t in truth]
        hits = [r for r, t in zip(ranks, truth) if r <= k and t not in banned]
        dcg = sum(1 / math.log2(r + 1) for r in hits)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(truth), k)))
        out += [len(hits) / len(truth), dcg / idcg, 1.0 if hits else 0.0]
    return out


def test_ties_count_against_the_target_and_early_exit_is_exact():
    # Integer embeddings make many exact ties; tiny item blocks and a small cap exercise the
    # early exit (targets dropped once `cap` items beat them) across many blocks.
    rng = np.random.default_rng(11)
    rows, num_items, k_int, dim = 15, 60, 2, 4
    u = rng.integers(-1, 2, size=(rows, k_int, dim)).astype(np.float32)
    items = rng.integers(-1, 2, size=(num_items, dim)).astype(np.float32)
    history = [set(rng.choice(num_items, size=5, replace=False).tolist()) for _ in range(rows)]
    targets = [set(rng.choice(num_items, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(rows)]
    targets[0] |= {next(iter(history[0]))}  # a masked target is never a hit, but still counts in recall's denominator
    levels, ks = (2, 4), (3, 7)
    want = np.zeros((len(levels), 3 * len(ks)))
    for li, d in enumerate(levels):
        for r in range(rows):
            scores = (u[r, :, :d] @ items[:, :d].T).max(axis=0)
            want[li] += _ranked_metrics(scores.tolist(), history[r], sorted(targets[r]), ks)
    queries = torch.tensor(u)
    for block in (1, 7, 4096):
        got = evaluate.score_chunk(queries, evaluate.ItemShard.of(0, torch.tensor(items)), np.arange(rows), split(targets, history),
                                   spec(levels, ks, hitrate=True, block_items=block)).sum(0)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # All-zero embeddings tie everything: no hits, rather than perfect ones.
    zero = evaluate.score_block(torch.zeros(rows, dim), torch.zeros(num_items, dim), np.arange(rows), split(targets), spec(levels, ks))
    assert zero.abs().sum() == 0


def test_sharded_counts_add_up_to_the_whole_table():
    from distrec.eval.ranking import count_above, level_scores
    rng = np.random.default_rng(4)
    u = torch.tensor(rng.normal(size=(6, 3, 8)), dtype=torch.float32)
    items = torch.tensor(rng.normal(size=(50, 8)), dtype=torch.float32)
    pair_rows = torch.tensor([0, 0, 1, 2, 3, 4, 5, 5])
    pair_items = torch.tensor([3, 40, 7, 49, 0, 22, 10, 33])
    ts = level_scores(u[pair_rows], items[pair_items], (4, 8))
    skip_p, skip_i = torch.arange(8), pair_items
    whole = count_above(u, items, pair_rows, ts, skip_p, skip_i, (4, 8), cap=100, block_items=9)

    def shard(lo, hi, perm):  # rows lo..hi-1 in the order `perm`, skips mapped to their positions
        held = (skip_i >= lo) & (skip_i < hi)
        position = torch.empty_like(perm)
        position[perm] = torch.arange(len(perm))
        return count_above(u, items[lo:hi][perm], pair_rows, ts, skip_p[held], position[skip_i[held] - lo], (4, 8),
                           cap=100, block_items=5)

    g = torch.Generator().manual_seed(0)
    parts = sum(shard(lo, hi, torch.randperm(hi - lo, generator=g)) for lo, hi in ((0, 17), (17, 34), (34, 50)))
    torch.testing.assert_close(parts, whole)  # any split, any order within a shard
    scores = torch.stack([(u[:, :, :d] @ items[:, :d].T).amax(1) for d in (4, 8)], -1)  # [6, 50, L]
    other = torch.ones(8, 50, 1, dtype=torch.bool)
    other[torch.arange(8), pair_items] = False  # the target itself never counts
    brute = ((scores[pair_rows] >= ts[:, None, :]) & other).sum(1)
    torch.testing.assert_close(whole, brute)


def test_sampled_rows_are_seeded_and_carry_a_standard_error():
    targets = to_csr([[i % 7] for i in range(100)])
    a, b = evaluate.sample_rows(targets, 30, seed=5), evaluate.sample_rows(targets, 30, seed=5)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 30 and not np.array_equal(a, evaluate.sample_rows(targets, 30, seed=6))
    assert len(evaluate.sample_rows(targets, 1000, seed=5)) == 100


def test_multi_interest_block_matches_brute_force_max_over_interests():
    rng = np.random.default_rng(5)
    rows, num_items, k_int, dim = 9, 30, 3, 8
    u = rng.normal(size=(rows, k_int, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    history = [set(rng.choice(num_items, size=3, replace=False).tolist()) for _ in range(rows)]
    targets = [set(rng.choice([i for i in range(num_items) if i not in history[r]], size=rng.integers(1, 4), replace=False).tolist()) for r in range(rows)]
    levels, ks = (2, 4, 8), (5, 10)
    got = evaluate.score_block(torch.tensor(u), torch.tensor(items), np.arange(rows), split(targets, history), spec(levels, ks, hitrate=True))
    want = np.zeros((len(levels), 3 * len(ks)))
    for li, d in enumerate(levels):
        for r in range(rows):
            scores = (u[r, :, :d].astype(np.float64) @ items[:, :d].T.astype(np.float64)).max(axis=0)  # f(u,i) = max_k
            ranked = [i for i in np.argsort(-scores, kind="stable") if i not in history[r]]
            for ki, k in enumerate(ks):
                hits = [1.0 if i in targets[r] else 0.0 for i in ranked[:k]]
                want[li, 3 * ki] += sum(hits) / len(targets[r])
                want[li, 3 * ki + 1] += sum(h / math.log2(p + 2) for p, h in enumerate(hits)) / sum(
                    1 / math.log2(p + 2) for p in range(min(len(targets[r]), k)))
                want[li, 3 * ki + 2] += 1.0 if sum(hits) > 0 else 0.0
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    assert spec(levels, ks, hitrate=True).names[:3] == ["recall@5", "ndcg@5", "hitrate@5"]


def test_norm_bound_exit_is_exact_and_skips_blocks(monkeypatch):
    """Items in decreasing norm, most of them tiny: the Cauchy-Schwarz bound closes levels
    early (fewer block products) and the counts still equal brute force, negative scores too."""
    from distrec.eval.ranking import count_above, level_scores
    rng = np.random.default_rng(9)
    levels, num_items = (2, 4, 8), 400
    u = torch.tensor(rng.normal(size=(7, 2, 8)), dtype=torch.float32)
    scale = np.sort(np.exp(-rng.uniform(0, 6, size=num_items)))[::-1].copy()  # norms from ~1 down to ~0.002
    items = torch.tensor(rng.normal(size=(num_items, 8)) * scale[:, None], dtype=torch.float32)
    pair_rows = torch.tensor([0, 1, 1, 2, 3, 4, 5, 6, 6])
    pair_items = torch.tensor([0, 3, 250, 5, 390, 1, 2, 8, 120])  # strong, middling and weak targets
    ts = level_scores(u[pair_rows], items[pair_items], levels)
    got = count_above(u, items, pair_rows, ts, torch.arange(9), pair_items, levels, cap=num_items + 1, block_items=10)
    scores = torch.stack([(u[:, :, :d] @ items[:, :d].T).amax(1) for d in levels], -1)  # [7, I, L]
    other = torch.ones(9, num_items, 1, dtype=torch.bool)
    other[torch.arange(9), pair_items] = False
    torch.testing.assert_close(got, ((scores[pair_rows] >= ts[:, None, :]) & other).sum(1))
    assert (ts < 0).any()  # some targets score below zero: their levels stay open to the end
    # Without the count cap, only the bound can stop a scan: for strong targets (high-norm items,
    # scoring above zero at every level) it must stop well before the end.
    positive = torch.nonzero((ts > 0.05).all(dim=1) & (pair_items < 10)).squeeze(1)
    assert len(positive) >= 2
    products = []
    real_addmm = torch.Tensor.addmm_
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda self, *a, **k: products.append(1) or real_addmm(self, *a, **k))
    part = count_above(u, items, pair_rows[positive], ts[positive], torch.arange(len(positive)), pair_items[positive], levels,
                       cap=num_items + 1, block_items=10)
    torch.testing.assert_close(part, got[positive])
    assert len(products) < 0.75 * len(levels) * num_items // 10  # 40 blocks x 3 levels without the bound
