"""EASE in scripts/peers.py: the closed form against a brute-force constrained ridge regression,
its scoring through distrec's evaluation, and a lam search that reads validation only.
Needs neither `implicit` nor `optuna` (peers.py imports them only where ALS / BPR need them)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distrec.data.dataset import InteractionData

PEERS_PY = Path(__file__).resolve().parents[2] / "scripts" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("distrec_scripts_peers", PEERS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_binary(users: int, items: int, density: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((users, items)) < density).astype(np.float64)


def brute_force_ease(X: np.ndarray, lam: float) -> np.ndarray:
    """Column by column: min ||X_:,j - X b||^2 + lam ||b||^2 with b_j = 0, i.e. a ridge
    regression of column j on the other columns, solved as its own (n-1) x (n-1) system."""
    n = X.shape[1]
    B = np.zeros((n, n))
    for j in range(n):
        others = np.delete(np.arange(n), j)
        Xo = X[:, others]
        B[others, j] = np.linalg.solve(Xo.T @ Xo + lam * np.eye(n - 1), Xo.T @ X[:, j])
    return B


@pytest.mark.parametrize("lam", [0.3, 2.0, 25.0])
def test_ease_weights_match_the_constrained_ridge_regression(peers, lam):
    X = random_binary(30, 12, 0.35, seed=7)
    B = peers.ease_weights(X, lam).numpy()
    expected = brute_force_ease(X, lam)
    assert B.dtype == np.float64 and B.shape == (12, 12)
    np.testing.assert_allclose(B, expected, rtol=1e-8, atol=1e-10)
    assert np.all(np.diag(B) == 0.0)
    np.testing.assert_allclose(X @ B, X @ expected, rtol=1e-8, atol=1e-10)  # the scores evaluation ranks by


def test_inputs_dense_and_torch_alike(peers):
    X = random_binary(30, 12, 0.35, seed=8)
    B = peers.ease_weights(X, 1.5)
    assert torch.equal(peers.ease_weights(torch.as_tensor(X), 1.5), B)
    assert torch.equal(peers.ease_weights(torch.as_tensor(X).to_sparse(), 1.5), B)
    # scipy input (what scripts/peers.py hands it beside implicit) goes through the same
    # indptr / indices path as Rows; scipy is not a distrec dependency, so it is not imported here.


def test_float32_weights_agree_with_float64(peers):
    X = random_binary(200, 40, 0.2, seed=3)
    b64 = peers.ease_weights(X, 10.0, torch.float64)
    b32 = peers.ease_weights(X, 10.0, torch.float32)
    assert b32.dtype == torch.float32
    np.testing.assert_allclose(b32.double().numpy(), b64.numpy(), atol=1e-5)


def tiny_data(users: int, items: int, seed: int) -> InteractionData:
    """A random InteractionData: each observed pair goes to train, valid or test."""
    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((users, items)) < 0.3)  # row-major: sorted by (user, item)
    split = rng.choice(3, size=len(u), p=[0.6, 0.15, 0.25])
    cols = {}
    for code, name in enumerate(("train", "valid", "test")):
        cols[f"{name}_users"], cols[f"{name}_items"] = u[split == code], i[split == code]
    return InteractionData(num_users=users, num_items=items, user_raw=np.arange(users), item_raw=np.arange(items),
                           report={}, **cols)


def brute_force_metrics(scores: np.ndarray, targets, exclude, ks) -> dict[str, float]:
    """Recall@K / NDCG@K from full score rows, ties counted against the target, masked items skipped."""
    sums, rows = {}, 0
    for user in range(scores.shape[0]):
        t = targets[1][targets[0][user]:targets[0][user + 1]]
        if len(t) == 0:
            continue
        rows += 1
        masked = np.zeros(scores.shape[1], dtype=bool)
        for indptr, cols in exclude:
            masked[cols[indptr[user]:indptr[user + 1]]] = True
        ranks = []
        for item in t:
            if masked[item]:
                ranks.append(math.inf)
                continue
            others = ~masked
            others[item] = False
            ranks.append(1 + int(np.sum(scores[user, others] >= scores[user, item])))
        for k in ks:
            hits = [r for r in ranks if r <= k]
            idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(t), k) + 1))
            sums[f"recall@{k}"] = sums.get(f"recall@{k}", 0.0) + len(hits) / len(t)
            sums[f"ndcg@{k}"] = sums.get(f"ndcg@{k}", 0.0) + sum(1 / math.log2(r + 1) for r in hits) / idcg
    return {name: value / rows for name, value in sums.items()}


def test_score_ease_ranks_by_x_times_b(peers):
    data = tiny_data(60, 40, seed=11)
    X = peers.Rows.binary(data, "train")
    lam = 3.0
    B = peers.ease_weights(X, lam)
    dense = X.dense(np.arange(data.num_users), torch.float64).numpy()
    scores = dense @ brute_force_ease(dense, lam)
    targets, exclude = data.csr("valid"), [data.csr("train")]
    got = peers.score_ease(B, X, targets, exclude, chunk_mb=0.01)  # several chunks
    expected = brute_force_metrics(scores, targets, exclude, peers.KS)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_lam_search_reads_validation_only(peers):
    data = tiny_data(120, 50, seed=5)
    # The same train and valid, test replaced by other random pairs: nothing in the search may change.
    rng = np.random.default_rng(99)
    keys = np.unique(rng.integers(0, data.num_users * data.num_items, size=400))
    corrupted = InteractionData(**{**{f: getattr(data, f) for f in data.__dataclass_fields__},
                                   "test_users": keys // data.num_items, "test_items": keys % data.num_items})
    grid = (0.1, 1.0, 10.0, 100.0)
    log, _ = peers.search_ease(data, torch.float64, grid)
    log_corrupted, _ = peers.search_ease(corrupted, torch.float64, grid)
    strip = lambda log: [{k: v for k, v in t.items() if not k.endswith("seconds")} for t in log]  # noqa: E731
    assert strip(log) == strip(log_corrupted)
    lams = [t["params"]["lam"] for t in log]
    assert lams[:4] == list(grid) and len(lams) == len(set(lams)) <= 4 + 1 + 2 * len(peers.EASE_REFINE)
    valid = [t[peers.SELECT] for t in log]
    assert len(set(valid)) > 1  # lam matters on this data, so the choice is not a tie
    # The chosen lam is the validation argmax, and validation is what the search scored.
    best = log[int(np.argmax(valid))]
    X = peers.Rows.binary(data, "train")
    again = peers.score_ease(peers.ease_weights(X, best["params"]["lam"]), X, data.csr("valid"), [data.csr("train")])
    assert again == best["valid"]


def test_results_merge_into_an_existing_json(peers, tmp_path):
    data = tiny_data(40, 20, seed=2)
    out = tmp_path / "set.json"
    als = {"params": {"factors": 64}, "valid": {"recall@20": 0.5}, "test": {"recall@20": 0.4}}
    described = {"config": "c.yaml", "overrides": [], "num_users": 40, "num_items": 20,
                 "pairs": {s: len(data.pairs(s)[0]) for s in ("train", "valid", "test")}}
    old = {"command": "als run", "versions": {"implicit": "0.7.3"}, "data": described, "peers": {"als": als, "bpr": als}}
    out.write_text(json.dumps(old))
    args = argparse.Namespace(config="c.yaml", overrides=[], seed=0)
    ease = {"params": {"lam": 10.0}}
    peers.write_record(out, args, data, {"ease": ease})
    record = json.loads(out.read_text())
    assert record["peers"]["als"] == als and record["peers"]["bpr"] == als
    assert record["peers"]["ease"]["params"] == {"lam": 10.0}
    assert record["command"] == "als run" and record["versions"]["implicit"] == "0.7.3"
    peers.write_record(out, args, data, {"ease": {"params": {"lam": 1.0}}})  # replaced, not duplicated
    assert list(json.loads(out.read_text())["peers"]) == ["als", "bpr", "ease"]
    assert json.loads(out.read_text())["peers"]["ease"]["params"] == {"lam": 1.0}
    with pytest.raises(SystemExit):  # other data: refuse to merge
        peers.write_record(out, args, tiny_data(41, 20, seed=2), {"ease": ease})
