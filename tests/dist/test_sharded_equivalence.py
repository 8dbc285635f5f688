"""Sharded tables on 2 gloo ranks against one process and against plain-torch references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distrec import config, distributed
from distrec.eval import evaluate
from distrec.nn import counters, losses, samplers
from distrec.nn.embeddings import TABLE_SHARDING_FIELDS, Tables, attach_fused_optimizer, dense_optimizers
from distrec.tasks.mrl4rec import Batch, MatryoshkaMF
from tests.dist.launch import run_ranks
from tests import reference

pytestmark = pytest.mark.dist

NUM_USERS, NUM_ITEMS, DIM = 37, 29, 16  # odd sizes: uneven shards and uneven eval blocks
LEVELS = (4, 8, 16)
KS = (1, 5, 10)
LR = 0.5
BATCH = 24


def make_problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    weights = {"user": torch.randn(NUM_USERS, DIM, generator=g) * 0.3, "item": torch.randn(NUM_ITEMS, DIM, generator=g) * 0.3}
    lists = {s: [[] for _ in range(NUM_USERS)] for s in ("train", "valid", "test")}
    for u in range(NUM_USERS):
        perm = rng.permutation(NUM_ITEMS)
        n_train, n_valid, n_test = rng.integers(1, 5), rng.integers(0, 2), rng.integers(0, 4)
        lists["train"][u] = sorted(perm[:n_train].tolist())
        lists["valid"][u] = sorted(perm[n_train : n_train + n_valid].tolist())
        lists["test"][u] = sorted(perm[n_train + n_valid : n_train + n_valid + n_test].tolist())
    csr = {}
    for split, ls in lists.items():
        indptr = np.zeros(NUM_USERS + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(x) for x in ls])
        csr[split] = (indptr, np.array([i for x in ls for i in x], dtype=np.int64))
    users = rng.integers(0, NUM_USERS, size=BATCH)
    pos = np.array([rng.choice(lists["train"][u]) for u in users])
    sampler = samplers.CandidateSampler(
        np.repeat(np.arange(NUM_USERS), np.diff(csr["train"][0])), csr["train"][1], NUM_ITEMS
    )
    cands = sampler.draw(counters.key(0), np.arange(BATCH), users, (len(LEVELS), 4))
    return weights, csr, (users, pos, cands)


def build(overrides: list[str], env):
    cfg = config.load(None, [f"model.dim={DIM}", f"model.levels={list(LEVELS)}", "train.loss=mrl", "train.sampler=mns", f"train.lr={LR}", "train.l2=1e-4", *overrides])
    tables = Tables(NUM_USERS, NUM_ITEMS, cfg.model)
    attach_fused_optimizer(tables, cfg.train, cfg.model)
    model = distributed.shard(MatryoshkaMF(tables, cfg.model, cfg.train, env), env, cfg.model, TABLE_SHARDING_FIELDS)
    return cfg, model, dense_optimizers(model, cfg.train)


def rank_body(overrides: list[str], weights, csr, batch_arrays):
    """Evaluate given weights, take one step on a fixed global batch, return metrics and tables."""
    env = distributed.init("cpu")
    try:
        cfg, model, dense_opt = build(overrides, env)
        reference.load_full_tables(model, weights)
        tables = model.module.tables
        spec = evaluate.EvalSpec(levels=LEVELS, ks=KS, chunk_mb=0.0005)  # a few users per block
        encode = evaluate.user_encoder(tables, env.device)
        test_split = evaluate.EvalSplit(csr["test"], (csr["train"], csr["valid"]))
        valid = evaluate.evaluate(encode, tables.items, NUM_ITEMS, env, evaluate.EvalSplit(csr["valid"], (csr["train"],)), spec)
        test = evaluate.evaluate(encode, tables.items, NUM_ITEMS, env, test_split, spec)
        # One-item blocks, counts summed over ranks every 2 blocks and K = 1 in ks: targets drop
        # out mid-scan on counts partly from the other rank; the metrics must not change.
        synced = evaluate.evaluate(encode, tables.items, NUM_ITEMS, env, test_split,
                                   dataclasses.replace(spec, block_items=1, sync_every=2))
        assert_metrics_equal(synced, test)  # other chunks (block size sets them): equal up to the sum's order
        users, pos, cands = batch_arrays
        mine = np.array_split(np.arange(len(users)), env.world_size)[env.rank]
        batch = Batch(torch.as_tensor(users[mine]), torch.as_tensor(pos[mine]), torch.as_tensor(cands[mine]), len(users), env.world_size)
        if cfg.train.gramian:  # each pair's whole-catalogue term scaled per user (1 / pair count in training)
            batch.user_scale = torch.as_tensor(user_scale(users[mine]))
            # train.gramian_every > 1: a step inside the window, which updates only the users
            # (the item Gramian summed from the ranks' shards, or looked up when split by columns).
            batch.gramian_item_weight = 1.0 if cfg.train.gramian_every == 1 else 0.0
        if cfg.train.loss == "softmax":  # every item is a negative: the exact full softmax
            batch = Batch(batch.users, batch.pos, batch.cands[:, :0, :0], len(users), env.world_size,
                          shared=torch.arange(NUM_ITEMS), catalogue=True)
        loss, _ = model(batch)
        loss.backward()
        for opt in dense_opt:
            opt.step()
        after = {
            "user": evaluate.gather_table(tables.users, NUM_USERS, env),
            "item": evaluate.gather_table(tables.items, NUM_ITEMS, env),
        }
        return {"valid": valid, "test": test, "tables": after, "plan": str(model.plan)}
    finally:
        distributed.shutdown()


def user_scale(users: np.ndarray) -> np.ndarray:
    return (1.0 / (1 + users % 3)).astype(np.float32)


def reference_sgd_step(weights, batch_arrays, loss_kind="mrl", gramian=0.0, users_only=False):
    """Plain torch: MNS selection and MRL loss (or the full softmax over all items), the Gramian
    term over all items (its gradient for the users only when `users_only`), per-level L2,
    averaged over the batch, one SGD step."""
    users, pos, cands = (torch.as_tensor(x) for x in batch_arrays)
    wu = weights["user"].clone().requires_grad_(True)
    wi = weights["item"].clone().requires_grad_(True)
    u = wu[users]
    w = tuple(1.0 / len(LEVELS) for _ in LEVELS)
    l2_weights = losses.level_l2_weights(LEVELS, w)
    if loss_kind == "softmax":
        p = wi[pos]
        per_sample = sum(wl * torch.nn.functional.cross_entropy(u[:, :d] @ wi[:, :d].T, pos, reduction="none")
                         for d, wl in zip(LEVELS, w))
        reg = losses.l2_penalty(u, p, weights=l2_weights)
    else:
        pick = samplers.select_hardest(u.detach(), wi.detach(), cands, LEVELS, "mns")  # rows = the whole table
        neg_ids = cands[torch.arange(len(users))[:, None], torch.arange(len(LEVELS))[None, :], pick]
        p, n = wi[pos], wi[neg_ids]
        per_sample = losses.pairwise_loss(u, p, n, LEVELS, w, "mrl")
        reg = losses.l2_penalty(u, p, n, weights=l2_weights)
    scale = torch.as_tensor(user_scale(users.numpy()))
    per_sample = per_sample + gramian * scale * reference.gramian_penalty(u, wi.detach() if users_only else wi, LEVELS, w)
    loss = (per_sample.sum() + 1e-4 * reg) / len(users)
    loss.backward()
    return {"user": (wu - LR * wu.grad).detach(), "item": (wi - LR * wi.grad).detach()}


def brute_metrics(weights, csr, split, exclude):
    """The metrics from the whole score matrix in float64 numpy (tests/reference.py), without
    any of distrec's evaluation code."""
    return reference.ranking_metrics(weights["user"].detach().numpy(), weights["item"].detach().numpy(), csr[split],
                                     [csr[s] for s in exclude], LEVELS, KS)


def assert_metrics_equal(a, b):
    assert a.keys() == b.keys()
    for d in a:
        for m in a[d]:
            assert a[d][m] == pytest.approx(b[d][m], abs=1e-9), (d, m)


SHARDINGS = [
    ["model.collection=bag", "model.user_sharding=table_wise", "model.item_sharding=table_wise"],
    ["model.collection=sequence", "model.user_sharding=row_wise", "model.item_sharding=row_wise"],
    ["model.collection=bag", "model.user_sharding=column_wise", "model.item_sharding=data_parallel"],
    # Items by columns: MNS scores each level's prefix from partial sums over the ranks' columns.
    ["model.collection=bag", "model.user_sharding=table_wise", "model.item_sharding=column_wise"],
]


# (sharding, loss, Gramian weight): every sharding with the MRL loss and the whole-catalogue term;
# the full softmax on one sharding (its lookups are the same as the Gramian's).
# gramian_every 2: a users-only step, its item Gramian summed over row-wise shards, or (items
# split by columns) looked up.
CASES = [(SHARDINGS[0], "mrl", 0.5, 1), (SHARDINGS[1], "mrl", 0.5, 1), (SHARDINGS[2], "mrl", 0.0, 1),
         (SHARDINGS[3], "mrl", 0.0, 1), (SHARDINGS[0], "softmax", 0.0, 1), (SHARDINGS[1], "mrl", 0.5, 2),
         (SHARDINGS[3], "mrl", 0.5, 2)]


@pytest.mark.parametrize("sharding,loss_kind,gramian,gramian_every", CASES,
                         ids=["table_wise", "row_wise", "column_wise+data_parallel", "item_column_wise", "softmax",
                              "row_wise_gramian_users_only", "item_column_wise_gramian_users_only"])
def test_two_ranks_equal_one_process_and_plain_torch(sharding, loss_kind, gramian, gramian_every, tmp_path):
    weights, csr, batch = make_problem()
    overrides = [*sharding, "train.optimizer=sgd", f"train.loss={loss_kind}", f"train.gramian={gramian}",
                 f"train.gramian_every={gramian_every}"]
    one = run_ranks(rank_body, 1, tmp_path, overrides, weights, csr, batch)[0]
    two = run_ranks(rank_body, 2, tmp_path, overrides, weights, csr, batch)
    # Both ranks agree, and agree with one process and with a brute-force evaluation.
    for result in two:
        assert_metrics_equal(result["valid"], one["valid"])
        assert_metrics_equal(result["test"], one["test"])
    assert_metrics_equal(one["valid"], brute_metrics(weights, csr, "valid", ["train"]))
    assert_metrics_equal(one["test"], brute_metrics(weights, csr, "test", ["train", "valid"]))
    # One SGD step on the same global batch: same tables on 1 and 2 ranks, equal to plain torch.
    ref = reference_sgd_step(weights, batch, loss_kind, gramian, users_only=gramian_every > 1)
    for name in ("user", "item"):
        assert not torch.allclose(ref[name], weights[name])  # the step really moved something
        torch.testing.assert_close(one["tables"][name], ref[name], atol=1e-6, rtol=1e-5)
        for result in two:
            torch.testing.assert_close(result["tables"][name], ref[name], atol=1e-6, rtol=1e-5)
    plan = two[0]["plan"]
    for kind in ("table_wise", "row_wise", "column_wise", "data_parallel"):
        if any(kind in o for o in sharding):
            assert kind in plan


def test_row_wise_adagrad_two_ranks_equal_one_process(tmp_path):
    weights, csr, batch = make_problem(seed=1)
    overrides = [*SHARDINGS[1], "train.optimizer=row_wise_adagrad"]
    one = run_ranks(rank_body, 1, tmp_path, overrides, weights, csr, batch)[0]
    two = run_ranks(rank_body, 2, tmp_path, overrides, weights, csr, batch)
    for name in ("user", "item"):
        assert not torch.allclose(one["tables"][name], weights[name])
        for result in two:
            torch.testing.assert_close(result["tables"][name], one["tables"][name], atol=1e-6, rtol=1e-5)
