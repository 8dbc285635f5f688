"""A large-batch step is the sum of its micro-batches where the optimizer is linear (SGD):
one step over a batch of 2B pairs moves the fused tables exactly by the mean of the moves of
two steps over its halves taken from the same weights. The loss is the global-batch mean
(per-pair terms and their L2), and the hard negatives are chosen at the same weights, so
this holds for MNS and the frequency-aware L2 as well as for uniform BPR."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distrec import config, distributed
from distrec.run import checkpoint
from distrec.tasks import build_workload
from tests import reference


def _half(batch, part: slice, size: int):
    """Rows `part` of a batch, as a batch of its own of `size` pairs."""
    cut = {f.name: getattr(batch, f.name)[part] for f in dataclasses.fields(batch)
           if isinstance(getattr(batch, f.name), torch.Tensor) and f.name != "shared"}
    return dataclasses.replace(batch, **cut, global_size=size)


@pytest.mark.parametrize("overrides", [["train.loss=bpr", "train.sampler=uniform"], [],
                                       ["train.l2_user_exponent=0.5", "train.l2=0.1"]])
def test_one_step_over_2b_pairs_is_the_mean_of_two_steps_over_b(overrides):
    b = 128
    cfg = config.load(None, ["data.synthetic.preset=tiny", f"train.batch_size={2 * b}", "train.optimizer=sgd",
                             "train.lr=0.5", *overrides])
    env = distributed.init("cpu")
    try:
        work = build_workload(cfg, env, None)
        model, _ = work.build()
        model.module.tables.seed(cfg.train.seed)
        start, before = checkpoint.snapshot(model), reference.whole_tables(model, torch.float64)
        big = next(iter(work.batches(1)))
        assert big.global_size == 2 * b
        moves = []
        for batch in (big, _half(big, slice(0, b), b), _half(big, slice(b, 2 * b), b)):
            checkpoint.restore(model, start)
            loss, _ = model(batch)
            loss.backward()  # the fused SGD steps in the backward pass
            moves.append({k: v - before[k] for k, v in reference.whole_tables(model, torch.float64).items()})
    finally:
        distributed.shutdown()
    whole, first, second = moves
    for key in whole:
        assert whole[key].abs().max() > 1e-4, key  # the step moved the table
        torch.testing.assert_close(whole[key], (first[key] + second[key]) / 2, rtol=0, atol=2e-6)
