"""Draws made with torch ops where the step runs equal the numpy (host) draws id for id: the
counter functions, the candidate sampler with its rejection rounds, the shared negatives, and
a task's whole batches (train.draws=device against train.draws=host)."""

import dataclasses

import numpy as np
import pytest
import torch

from distrec import config
from distrec.data import load_dataset
from distrec.distributed import ONE_PROCESS
from distrec.nn import counters, samplers
from distrec.tasks import mrl4rec

STREAM = counters.stream(2022, counters.Stream.MF_CANDIDATES, 3)


def test_torch_counters_equal_numpy_bit_for_bit():
    rng = np.random.default_rng(0)
    # small counters, counters near 2^63 (the int64 sign bit), and every stream's top bit
    counts = np.concatenate([np.arange(100_000), rng.integers(0, 2**63 - 1, 100_000, dtype=np.int64)])
    for stream in (STREAM, counters.key(1), np.uint64(2**64 - 1), np.uint64(0)):
        assert np.array_equal(counters.random(stream, counts), counters.torch_random(stream, torch.from_numpy(counts)).numpy())
        for high in (1, 7, 370_000, 2**40):
            a = counters.integers(stream, counts, high)
            b = counters.torch_integers(stream, torch.from_numpy(counts), high).numpy()
            assert np.array_equal(a, b)


def test_device_sampler_equals_host_sampler_with_rejections():
    rng = np.random.default_rng(1)
    # dense users (half of a 40-item catalogue each): most draws collide and are redrawn
    users = np.repeat(np.arange(300), 20)
    items = np.concatenate([rng.choice(40, 20, replace=False) for _ in range(300)])
    host = samplers.CandidateSampler(users, items, num_items=40)
    device = samplers.DeviceCandidateSampler(host, torch.device("cpu"))
    batch_users = rng.integers(0, 300, 2_000)
    for first, shape in ((0, (5, 16)), (123_456, (1, 4)), (10**12, (1, 1))):
        positions = np.arange(first, first + len(batch_users))
        a = host.draw(STREAM, positions, batch_users, shape)
        b = device.draw(STREAM, torch.from_numpy(positions), torch.from_numpy(batch_users), shape)
        assert b.dtype == torch.int64 and np.array_equal(a, b.numpy())
        train = set(zip(users.tolist(), items.tolist()))
        assert not any((int(u), int(c)) in train for u, row in zip(batch_users, a.reshape(len(a), -1)) for c in row)


def test_device_membership_equals_host():
    rng = np.random.default_rng(2)
    users, items = rng.integers(0, 1000, 20_000), rng.integers(0, 500, 20_000)
    keys = np.unique(users * 500 + items)
    host = samplers.CandidateSampler(keys // 500, keys % 500, num_items=500)
    device = samplers.DeviceCandidateSampler(host, torch.device("cpu"))
    qu, qi = rng.integers(0, 1000, 50_000), rng.integers(0, 500, 50_000)
    expect = np.isin(qu * 500 + qi, keys)
    assert np.array_equal(host.is_train(qu, qi), expect)
    assert np.array_equal(device.is_train(torch.from_numpy(qu), torch.from_numpy(qi)).numpy(), expect)


@pytest.mark.parametrize("num", [37, 5_000, 10**6])
def test_device_shared_negatives_equal_host(num):
    stream = counters.stream(7, counters.Stream.MF_SHARED_NEGATIVES, 1)
    a = samplers.shared_negatives(stream, 4_096, 512, 20_000, num)
    b = samplers.device_shared_negatives(stream, 4_096, 512, 20_000, num, torch.device("cpu"))
    assert np.array_equal(a, b.numpy())


@pytest.mark.parametrize("overrides", [[], ["train.loss=softmax", "train.num_sampled=300"],
                                       ["train.sampler=dns", "train.gramian=1.0"], ["train.mns_pool=shared", "train.l2_user_exponent=0.5"]])
def test_a_tasks_batches_are_the_same_drawn_on_the_device(overrides):
    base = ["data.synthetic.preset=tiny", "train.batch_size=512", *overrides]
    host_cfg, device_cfg = config.load(None, [*base, "train.draws=host"]), config.load(None, [*base, "train.draws=device"])
    data = load_dataset(host_cfg.data)
    host, device = mrl4rec.from_data(host_cfg, ONE_PROCESS, data), mrl4rec.from_data(device_cfg, ONE_PROCESS, data)
    steps = 0
    for epoch, start in ((1, 0), (2, 3)):  # a resumed epoch starts mid-way
        for a, b in zip(host.batches(epoch, start), device.batches(epoch, start), strict=True):
            for field in dataclasses.fields(a):
                x, y = getattr(a, field.name), getattr(b, field.name)
                if isinstance(x, torch.Tensor):
                    assert x.dtype == y.dtype and torch.equal(x, y), field.name
                else:
                    assert x == y, field.name
            steps += 1
    assert steps > 5


def test_auto_draws_on_the_device_only_on_cuda():
    cfg = config.load(None, ["data.synthetic.preset=tiny"])
    assert not mrl4rec.on_device(cfg, ONE_PROCESS)
    cuda = dataclasses.replace(ONE_PROCESS, device=torch.device("cuda"))
    assert mrl4rec.on_device(cfg, cuda)
    assert mrl4rec.on_device(config.load(None, ["data.synthetic.preset=tiny", "train.draws=device"]), ONE_PROCESS)
