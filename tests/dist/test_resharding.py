"""A run does not depend on its world size, and a checkpoint resumes on another one.

Training draws are counter-based (distrec.nn.counters) and the tables are initialised per global
(row, column), so 1 process and 2 ranks at the same global batch train the same model up to
float summation order (where no choice depends on the scores: see ARGS). A checkpoint written on W ranks resumes on W' ranks or with another
sharding type: DCP reshards the tables and the optimizer state; row-wise Adagrad's
per-(row, column block) state is regrouped (`checkpoint._regroup_row_state`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distrec import config, distributed
from distrec.run import checkpoint
from distrec.tasks import build_workload
from tests import reference
from tests.dist.launch import run_ranks

ROOT = Path(__file__).resolve().parents[2]
# Uniform negatives: MNS and DNS pick the argmax of the current scores, and a near-tie that the
# summation order decides flips one pick, after which the runs part (measured on an AMD EPYC,
# MNS, 2 epochs: tables equal to 1.3e-6 after epoch 1, 0.13 apart after epoch 2; uniform: 4e-7
# after epoch 2). Their draws are world-size independent all the same (test_sharded_equivalence).
ARGS = ["data.synthetic.preset=tiny", "train.batch_size=32", "eval.patience=100", "train.checkpoint_every=1", "progress=false",
        "train.sampler=uniform"]


def _train(world_size: int, run: Path, *extra: str) -> None:
    launch = [sys.executable, "-m", "distrec.train"] if world_size == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world_size), "-m", "distrec.train"]
    out = subprocess.run([*launch, *ARGS, *extra, f"run_dir={run}"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]


def _tables(run: Path) -> list[np.ndarray]:
    return [np.load(run / "embeddings" / f"{n}_embeddings.npy") for n in ("user", "item")]


def _test_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["test"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two_ranks") / "run"
    _train(2, run, "train.epochs=2")
    return run


def test_one_process_and_two_ranks_train_the_same_model(two_ranks, tmp_path):
    _train(1, tmp_path / "one", "train.epochs=2")
    for a, b in zip(_tables(two_ranks), _tables(tmp_path / "one")):
        # Same draws, same initial rows; only the order of float sums differs (measured 8e-6).
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    for dim, row in _test_metrics(two_ranks).items():
        for metric, value in row.items():
            assert _test_metrics(tmp_path / "one")[dim][metric] == pytest.approx(value, abs=2e-3), (dim, metric)


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_on_another_world_size_and_follows_the_same_run(two_ranks, tmp_path, first, then):
    run = tmp_path / "resharded"
    _train(first, run, "train.epochs=1")
    (run / "checkpoint" / "finished").unlink()  # as if the job had stopped after epoch 1
    _train(then, run, "train.epochs=2")
    assert json.loads((run / "resumes.jsonl").read_text())["world_size"] == then
    for a, b in zip(_tables(two_ranks), _tables(run)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
    assert _test_metrics(run)["64"]["recall@20"] == pytest.approx(_test_metrics(two_ranks)["64"]["recall@20"], abs=2e-3)


def _save_then_load(tmp: str, saved_as: str, loaded_as: str) -> dict:
    """Train one step sharded `saved_as`, save, load into a model sharded `loaded_as`; returns
    both models' whole tables and row-wise Adagrad accumulators (gathered to full tensors)."""
    env = distributed.init("cpu")
    out = {}
    try:
        for phase, sharding in (("saved", saved_as), ("loaded", loaded_as)):
            cfg = config.load(None, [*ARGS[:2], f"model.user_sharding={sharding}", f"model.item_sharding={sharding}"])
            work = build_workload(cfg, env, None)
            model, opts = work.build()
            model.module.tables.seed(cfg.train.seed)
            if phase == "saved":
                loss, _ = model(next(iter(work.batches(1))))
                loss.backward()  # fills the accumulators (the fused kernel updates in backward)
                checkpoint.save(Path(tmp) / "ckpt", model, opts, env, {})
            else:
                checkpoint.load(Path(tmp) / "ckpt", model, opts)
            state = {**model.state_dict(), **{f"{p}.{n}": t for p, e in model.fused_optimizer.state_dict()["state"].items()
                                              for n, t in e.items()}}
            out[phase] = {k: reference.whole(v) for k, v in state.items() if hasattr(v, "local_shards")}  # tables, accumulators
    finally:
        distributed.shutdown()
    return out


@pytest.mark.parametrize("saved_as, loaded_as", [("table_wise", "column_wise"), ("column_wise", "table_wise")])
def test_a_change_of_sharding_type_keeps_the_tables_and_regroups_row_wise_adagrad(tmp_path, saved_as, loaded_as):
    ranks = run_ranks(_save_then_load, 2, tmp_path, str(tmp_path), saved_as, loaded_as)
    # Every rank's blocks together (a table-wise rank lists only the tables it holds).
    full = {phase: {k: sum(r[phase][k] for r in ranks if k in r[phase]) for k in set().union(*(r[phase] for r in ranks))}
            for phase in ("saved", "loaded")}
    for key, before in full["saved"].items():
        after = full["loaded"][key]
        if key.endswith(".weight"):
            torch.testing.assert_close(after, before, rtol=0, atol=0)  # tables: exactly
            continue
        assert before.abs().sum() > 0  # the step really filled them
        blocks_before, blocks_after = before.numel(), after.numel()
        n = min(blocks_before, blocks_after)
        mean_before = before.view(-1, n).mean(0) if blocks_before > n else before
        mean_after = after.view(-1, n).mean(0) if blocks_after > n else after
        # Column-wise -> table-wise: the blocks' mean, exactly the whole-row accumulator;
        # table-wise -> column-wise: every block starts from the row's value.
        torch.testing.assert_close(mean_after, mean_before, rtol=1e-6, atol=0)
        if blocks_after > n:
            torch.testing.assert_close(after.view(-1, n), before.expand(blocks_after // n, n), rtol=0, atol=0)
