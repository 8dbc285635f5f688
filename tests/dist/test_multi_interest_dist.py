"""REMI over sharded item tables on 2 gloo ranks against one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrec import config, distributed
from distrec.data.sequences import history_windows
from distrec.tasks import multi_interest
from distrec.tasks.multi_interest import SeqBatch
from tests.dist.launch import run_ranks
from tests import reference

pytestmark = pytest.mark.dist

DIM, LEVELS = 16, (4, 8, 16)


def write_log(path, seed=0, num_users=40, num_items=30):
    rng = np.random.default_rng(seed)
    lines = [f"{u} {i}" for u in range(num_users) for i in rng.integers(0, num_items, size=rng.integers(3, 12))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def overrides(log: str, sharding: str) -> list[str]:
    return [f"data.train={log}", "data.format=log", "data.delimiter=space", "model.task=multi_interest", "train.loss=softmax",
            f"model.dim={DIM}", f"model.levels={list(LEVELS)}", "model.num_interests=3", f"model.item_sharding={sharding}",
            "train.optimizer=sgd", "train.lr=0.5", "train.dense_optimizer=sgd", "train.dense_lr=0.5",
            "train.ihn_beta=2.0", "train.rr_lambda=0.5", "eval.ks=[5,10]", "eval.select_metric=recall@10",
            "data.sequence.max_len=6", "eval.chunk_mb=0.0005"]


def rank_body(args: list[str], item_weights, router_state, batch_parts):
    env = distributed.init("cpu")
    try:
        cfg = config.load(None, args)
        work = multi_interest.workload(cfg, env)
        model, opts = work.build()
        reference.load_full_tables(model, {"item": item_weights})
        model.module.router.load_state_dict(router_state)
        metrics = {split: work.evaluate(model, split, cfg, env) for split in ("valid", "test")}
        hist, mask, pos, negs = batch_parts
        mine = np.array_split(np.arange(len(pos)), env.world_size)[env.rank]
        batch = SeqBatch(torch.as_tensor(hist[mine]), torch.as_tensor(mask[mine]), torch.as_tensor(pos[mine]),
                         torch.as_tensor(negs), None, len(pos), env.world_size)
        loss, _ = model(batch)
        loss.backward()
        for opt in opts:
            opt.step()
        from distrec.eval.evaluate import gather_table

        items = gather_table(model.module.tables.items, work.num_items, env)
        router = {k: v.detach().clone() for k, v in model.module.router.state_dict().items()}
        return {"metrics": metrics, "items": items, "router": router, "diag": work.diagnostics(model)}
    finally:
        distributed.shutdown()


def fixed_inputs(log: str):
    """Given weights and one fixed global batch, computed once in the parent process."""
    from distrec.data.sequences import load_sequences

    cfg = config.load(None, overrides(log, "table_wise"))
    data = load_sequences(cfg.data)
    g = torch.Generator().manual_seed(0)
    items = torch.randn(data.num_items, DIM, generator=g) * 0.3
    from distrec.nn.towers import SelfAttentiveRouter

    torch.manual_seed(1)
    router = SelfAttentiveRouter(DIM, 3, 4, 6, True).state_dict()
    users, positions = data.train_samples()
    pick = np.random.default_rng(2).choice(len(users), size=12, replace=False)
    hist, mask = history_windows(data, users[pick], positions[pick], 6)
    pos = data.items_at(users[pick], positions[pick])
    negs = np.random.default_rng(3).integers(0, data.num_items, size=40)
    return items, router, (hist, mask, pos, negs)


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise"])
def test_remi_two_ranks_equal_one_process(sharding, tmp_path):
    log = write_log(tmp_path / "log.txt")
    items, router, batch = fixed_inputs(log)
    args = overrides(log, sharding) + (["model.collection=sequence"] if sharding == "row_wise" else [])
    one = run_ranks(rank_body, 1, tmp_path, args, items, router, batch)[0]
    two = run_ranks(rank_body, 2, tmp_path, args, items, router, batch)
    for result in two:
        for split in ("valid", "test"):
            for d, row in one["metrics"][split].items():
                for m, value in row.items():
                    assert result["metrics"][split][d][m] == pytest.approx(value, abs=1e-9), (split, d, m)
        assert not torch.allclose(one["items"], items)  # the step moved the table
        torch.testing.assert_close(result["items"], one["items"], atol=1e-6, rtol=1e-5)
        for k, v in one["router"].items():
            assert not torch.allclose(v, router[k]) or k == "pos_emb"  # the router learned
            torch.testing.assert_close(result["router"][k], v, atol=1e-6, rtol=1e-5)
    assert set(one["metrics"]["test"]["16"]) == {"recall@5", "ndcg@5", "hitrate@5", "recall@10", "ndcg@10", "hitrate@10"}
    assert 0.0 < one["diag"]["routing"]["max_weight"] <= 1.0


def first_batch_negatives(args: list[str]):
    env = distributed.init("cpu")
    try:
        cfg = config.load(None, args)
        batch = next(iter(multi_interest.workload(cfg, env).batches(1)))
        return batch.negs
    finally:
        distributed.shutdown()


def test_gathered_negatives_are_every_ranks_own_draws(tmp_path):
    log = write_log(tmp_path / "log.txt", num_items=100)  # more items than the 40 negatives: sampled, not the catalogue
    args = overrides(log, "table_wise") + ["train.batch_size=8"]
    own = run_ranks(first_batch_negatives, 2, tmp_path, args)
    shared = run_ranks(first_batch_negatives, 2, tmp_path, args + ["train.gather_negatives=true"])
    assert len(own[0]) == 40 and not torch.equal(own[0], own[1])  # 10 x local batch 4, drawn per rank
    for negs in shared:
        torch.testing.assert_close(negs, torch.cat(own))


def test_asking_for_the_catalogue_gives_every_item_once(tmp_path):
    log = write_log(tmp_path / "log.txt")
    negs = run_ranks(first_batch_negatives, 1, tmp_path, overrides(log, "table_wise") + ["train.num_sampled=1000"])[0]
    assert torch.equal(negs, torch.arange(len(negs))) and len(negs) <= 30


def catalogue_losses(args: list[str]):
    import dataclasses

    env = distributed.init("cpu")
    try:
        cfg = config.load(None, args)
        work = multi_interest.workload(cfg, env)
        model, _ = work.build()
        model.eval()  # no dropout: both forwards must see the same network
        batch = next(iter(work.batches(1)))
        return [model(dataclasses.replace(batch, catalogue=flag))[0].item() for flag in (True, False)]
    finally:
        distributed.shutdown()


def test_the_catalogue_fast_path_equals_the_general_softmax(tmp_path):
    # SASRec and REMI without IHN, with the whole catalogue, take a fused cross-entropy; the general sampled softmax
    # with every item as a negative and the positive dropped as a hit must give the same loss.
    log = write_log(tmp_path / "log.txt")
    args = overrides(log, "table_wise") + ["model.router=sasrec", "model.num_interests=1", "train.ihn_beta=0",
                                           "train.rr_lambda=0", "train.num_sampled=1000", "model.num_heads=2"]
    remi = overrides(log, "table_wise") + ["train.ihn_beta=0", "train.num_sampled=1000"]  # K = 3 interests, RR on
    for run in (args, remi):
        fast, general = run_ranks(catalogue_losses, 1, tmp_path, run)[0]
        assert fast == pytest.approx(general, rel=1e-5) and fast > 0
