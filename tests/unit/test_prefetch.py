"""Batches built ahead in a background thread (run/prefetch.py): the same batches in the same
order, errors raised where the batch would have come, the thread stopped when the loop ends
early, and a prefetched epoch trains exactly the tables of the plain loop."""

from __future__ import annotations

import threading

import pytest
import torch

from distrec import config, distributed
from distrec.run.loop import train_epoch
from distrec.run.prefetch import prefetched
from distrec.tasks import build_workload
from tests import reference


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_the_same_items_in_the_same_order(depth):
    assert list(prefetched(iter(range(50)), depth)) == list(range(50))


def test_an_error_while_building_is_raised_after_the_batches_before_it():
    def batches():
        yield from range(3)
        raise ValueError("bad line 17")

    got = []
    with pytest.raises(ValueError, match="bad line 17"):
        for b in prefetched(batches(), 2):
            got.append(b)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_builder():
    built = []

    def batches():
        for i in range(10_000):
            built.append(i)
            yield i

    it = prefetched(batches(), 2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert not any(t.name == "distrec-prefetch" for t in threading.enumerate())
    assert len(built) <= 3 + 2 + 1  # those taken, the queue's depth, and one being built


def _tables(sampler: str, prefetch: int = 0, epochs: int = 2) -> dict[str, torch.Tensor]:
    """The whole tables after `epochs` epochs of the training loop (0: as initialised)."""
    cfg = config.load(None, ["data.synthetic.preset=tiny", "train.batch_size=64", f"train.sampler={sampler}",
                             f"train.prefetch={prefetch}", "progress=false"])
    env = distributed.init("cpu")
    try:
        work = build_workload(cfg, env, None)
        model, opts = work.build()
        model.module.tables.seed(cfg.train.seed)
        for epoch in range(1, epochs + 1):
            train_epoch(model, opts, work, cfg, env, epoch)
        return reference.whole_tables(model)
    finally:
        distributed.shutdown()


@pytest.mark.parametrize("sampler", ["mns", "uniform"])
def test_a_prefetched_loop_trains_exactly_the_plain_loops_tables(sampler):
    plain, ahead = _tables(sampler, prefetch=0), _tables(sampler, prefetch=2)
    assert plain.keys() == ahead.keys() and len(plain) == 2  # the user and the item table
    for key in plain:
        torch.testing.assert_close(ahead[key], plain[key], rtol=0, atol=1e-6)
    # and training did move them: equal tables are not two untouched initialisations
    first = next(iter(plain))
    assert not torch.equal(plain[first], _tables(sampler, epochs=0)[first])


def test_prefetch_must_not_be_negative():
    with pytest.raises(config.ConfigError, match="train.prefetch"):
        config.load(None, ["train.prefetch=-1"])


def test_a_loss_checked_every_few_steps_still_names_the_first_non_finite_step(monkeypatch):
    from distrec.run import loop

    assert loop._check_every(torch.device("cuda")) > 1 and loop._check_every(torch.device("cpu")) == 1
    monkeypatch.setattr(loop, "_check_every", lambda device: 10_000)  # as on a GPU: only the epoch's end checks
    cfg = config.load(None, ["data.synthetic.preset=tiny", "train.batch_size=64", "train.optimizer=sgd", "train.lr=1e30",
                             "progress=false"])
    env = distributed.init("cpu")
    try:
        work = build_workload(cfg, env, None)
        model, opts = work.build()
        model.module.tables.seed(cfg.train.seed)
        with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 1, step (\d+) on rank 0") as err:
            train_epoch(model, opts, work, cfg, env, 1)
    finally:
        distributed.shutdown()
    assert int(err.value.args[0].split("step ")[1].split()[0]) < 5  # the first bad step, not the last step
