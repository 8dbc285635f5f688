"""Frequency-aware user L2 (train.l2_user_exponent) against its explicit per-epoch formula.

Summed over an epoch's batches, a user with n_u pairs must carry l2 * n_u^nu * sum_l w_l
||u[:d_l]||^2 / 2 / sum(w), at every level: the frequency scaling of iALS++ (Rendle et al.
2022), written out here row by row with plain loops.
"""

import numpy as np
import pytest
import torch

from distrec import config
from distrec.data import load_dataset
from distrec.distributed import ONE_PROCESS
from distrec.nn import losses
from distrec.tasks import mrl4rec

LEVELS, WEIGHTS = (2, 4, 8), (0.2, 0.3, 0.5)


def _level_norm(x, levels=LEVELS, weights=WEIGHTS):
    return sum(w * float(x[:d] @ x[:d]) for d, w in zip(levels, weights)) / sum(weights)


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0])
def test_an_epoch_of_batches_sums_to_n_to_the_exponent_at_every_level(exponent):
    g = torch.Generator().manual_seed(0)
    num_rows = 6
    table = torch.randn(num_rows, 8, generator=g)
    rng = np.random.default_rng(1)
    occurrences = rng.integers(0, num_rows, 40)  # a row sits in the loss once per pair it has
    pairs = np.bincount(occurrences, minlength=num_rows)
    w = losses.level_l2_weights(LEVELS, WEIGHTS)
    got = 0.0
    for batch in np.array_split(rng.permutation(40), 7):  # batches of any size, each pair once
        rows = occurrences[batch]
        got += losses.frequency_l2(table[rows], torch.as_tensor(1.0 / pairs[rows], dtype=torch.float32), exponent,
                                   weights=w).item()
    expected = sum(float(pairs[r]) ** exponent * _level_norm(table[r]) for r in range(num_rows) if pairs[r]) / 2
    assert got == pytest.approx(expected, rel=1e-5)
    if exponent == 1.0:  # the plain per-occurrence L2
        plain = losses.l2_penalty(table[occurrences], weights=w).item()
        assert got == pytest.approx(plain, rel=1e-5)


def test_batches_carry_the_users_inverse_pair_counts():
    cfg = config.load(None, ["data.synthetic.preset=tiny", "train.l2_user_exponent=0.5", "train.batch_size=64"])
    data = load_dataset(cfg.data)
    work = mrl4rec.from_data(cfg, ONE_PROCESS, data)
    user_pairs = np.bincount(data.train_users, minlength=data.num_users)
    seen = 0
    for batch in work.batches(1, 0):
        np.testing.assert_allclose(batch.user_scale.numpy(), 1.0 / user_pairs[batch.users.numpy()], rtol=1e-6)
        seen += len(batch.users)
    assert seen > 0
    plain = mrl4rec.from_data(config.load(None, ["data.synthetic.preset=tiny"]), ONE_PROCESS, data)
    assert next(iter(plain.batches(1, 0))).user_scale is None  # exponent 1 (and no Gramian) builds nothing extra


@pytest.mark.parametrize("exponent", [0.5, 1.0])
def test_the_models_loss_carries_each_users_frequency_l2(exponent):
    """MatryoshkaMF's loss with l2 minus its loss without: exactly the formula, written out per row:
    users by their pair counts, the positives and the chosen negatives per occurrence."""
    from distrec.nn.embeddings import Tables
    from distrec.tasks.mrl4rec import Batch, MatryoshkaMF

    overrides = ["model.dim=8", "model.levels=[2,4,8]", "train.sampler=uniform", "train.gramian=3",
                 f"train.l2_user_exponent={exponent}"]
    cfg = config.load(None, overrides)
    tables = Tables(5, 7, cfg.model, device=torch.device("cpu"))
    tables.seed(1)
    users, pos, negs = torch.tensor([0, 1, 1, 4]), torch.tensor([2, 2, 5, 6]), torch.tensor([3, 0, 6, 1])
    user_pairs = torch.tensor([1.0, 2.0, 2.0, 3.0])  # of the batch's users
    batch = Batch(users=users, pos=pos, cands=negs.view(4, 1, 1), global_size=4, user_scale=1 / user_pairs)
    with_l2 = MatryoshkaMF(tables, cfg.model, config.load(None, [*overrides, "train.l2=0.1"]).train, ONE_PROCESS)
    without = MatryoshkaMF(tables, cfg.model, config.load(None, [*overrides, "train.l2=0"]).train, ONE_PROCESS)
    got = (with_l2(batch)[0] - without(batch)[0]).item() * 4  # the loss is a mean over the global batch

    levels, weights = cfg.model.levels, cfg.model.weights
    u, p, n = tables.users(users).detach(), tables.items(pos).detach(), tables.items(negs).detach()
    nu = exponent - 1
    expected = 0.1 / 2 * sum(float(user_pairs[b]) ** nu * _level_norm(u[b], levels, weights)
                             + _level_norm(p[b], levels, weights) + _level_norm(n[b], levels, weights) for b in range(4))
    assert got == pytest.approx(expected, rel=1e-4)
