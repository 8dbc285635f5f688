import math

import numpy as np
import torch

from distrec import evaluate


def to_csr(lists):
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    cols = np.array([i for x in lists for i in sorted(x)], dtype=np.int64)
    return indptr, cols


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
    got = evaluate.score_block(torch.tensor(u), torch.tensor(items), users, to_csr(test), [to_csr(train), to_csr(valid)], levels, ks)
    want = brute_force(u, items, users, test, [train, valid], levels, ks)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_perfect_and_hopeless_rankings():
    # One user whose single target is the item with the top score (perfect) at dim 2.
    u = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    perfect = evaluate.score_block(u, items, np.array([0]), to_csr([[0]]), [], (2,), (1,))
    assert perfect.tolist() == [[1.0, 1.0]]
    # The top item is masked as a training item, so the target (item 2, lowest) is never in top 1.
    hopeless = evaluate.score_block(u, items, np.array([0]), to_csr([[2]]), [to_csr([[0]])], (2,), (1,))
    assert hopeless.tolist() == [[0.0, 0.0]]


def test_block_size_does_not_depend_on_world_size():
    assert evaluate.block_size(1000, 1) == (1 << 20) // (4000 * 2)  # scores + per-interest partial sums
    assert evaluate.block_size(1000, 1, num_interests=4) == (1 << 20) // (4000 * 5)
    assert evaluate.block_size(10**9, 1) == 1


def test_multi_interest_block_matches_brute_force_max_over_interests():
    rng = np.random.default_rng(5)
    rows, num_items, k_int, dim = 9, 30, 3, 8
    u = rng.normal(size=(rows, k_int, dim)).astype(np.float32)
    items = rng.normal(size=(num_items, dim)).astype(np.float32)
    history = [set(rng.choice(num_items, size=3, replace=False).tolist()) for _ in range(rows)]
    targets = [set(rng.choice([i for i in range(num_items) if i not in history[r]], size=rng.integers(1, 4), replace=False).tolist()) for r in range(rows)]
    levels, ks = (2, 4, 8), (5, 10)
    got = evaluate.score_block(torch.tensor(u), torch.tensor(items), np.arange(rows), to_csr(targets), [to_csr(history)], levels, ks, hitrate=True)
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
    assert evaluate.metric_names(ks, hitrate=True)[:3] == ["recall@5", "ndcg@5", "hitrate@5"]
