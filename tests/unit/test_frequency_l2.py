"""Frequency-aware L2 (train.l2_scaling=frequency) against its explicit per-epoch formula.

Summed over an epoch's batches, a user must carry l2 * (n_u + gramian) * sum_l w_l ||u[:d_l]||^2 / 2
/ sum(w) and an item l2 * (n_i + gramian * users / items) * the same, at every level: the formula
of iALS++ (Rendle et al. 2022), written out here row by row with plain loops.
"""

import numpy as np
import pytest
import torch

from distrec import config, losses
from distrec.data import load_dataset
from distrec.parallel import ONE_PROCESS
from distrec.workload import mrl4rec_workload

LEVELS, WEIGHTS = (2, 4, 8), (0.2, 0.3, 0.5)


def _explicit(users, items, user_pairs, item_pairs, alpha, item_alpha):
    """sum over rows of (pairs + alpha) * sum_l w_l ||x[:d_l]||^2 / 2 / sum(w), one row at a time."""
    def level_norm(x):
        return sum(w * float(x[:d] @ x[:d]) for d, w in zip(LEVELS, WEIGHTS)) / sum(WEIGHTS)

    total = sum((user_pairs[r] + alpha) * level_norm(users[r]) for r in range(len(users)))
    total += sum((item_pairs[r] + item_alpha) * level_norm(items[r]) for r in range(len(items)))
    return total / 2


@pytest.mark.parametrize("alpha", [0.0, 5.0])
def test_an_epoch_of_batches_sums_to_the_ials_formula_at_every_level(alpha):
    g = torch.Generator().manual_seed(0)
    num_users, num_items = 6, 9
    user_table, item_table = torch.randn(num_users, 8, generator=g), torch.randn(num_items, 8, generator=g)
    rng = np.random.default_rng(1)
    pair_users, pair_items = rng.integers(0, num_users, 40), rng.integers(0, num_items, 40)
    user_pairs = np.bincount(pair_users, minlength=num_users)
    item_pairs = np.bincount(pair_items, minlength=num_items)
    item_alpha = alpha * num_users / num_items
    w = losses.level_l2_weights(LEVELS, WEIGHTS)
    got = 0.0
    for batch in np.array_split(rng.permutation(40), 7):  # batches of any size, each pair once
        u, i = pair_users[batch], pair_items[batch]
        got += losses.frequency_l2(
            user_table[u], item_table[i],
            torch.as_tensor(1.0 / user_pairs[u], dtype=torch.float32), torch.as_tensor(1.0 / item_pairs[i], dtype=torch.float32),
            alpha, item_alpha, weights=w).item()
    # Rows with no pairs are never in a batch: only the rows that are count.
    seen_u, seen_i = user_pairs > 0, item_pairs > 0
    expected = _explicit(user_table[seen_u], item_table[seen_i], user_pairs[seen_u], item_pairs[seen_i], alpha, item_alpha)
    assert got == pytest.approx(expected, rel=1e-5)


def test_uniform_coordinate_weights_give_the_plain_squared_norm():
    g = torch.Generator().manual_seed(2)
    u, i = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    su, si = torch.tensor([1.0, 0.5, 0.25]), torch.tensor([1.0, 1.0, 0.1])
    got = losses.frequency_l2(u, i, su, si, 2.0, 3.0)
    expected = (((1 + 2.0 * su) * u.pow(2).sum(1)).sum() + ((1 + 3.0 * si) * i.pow(2).sum(1)).sum()) / 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_batches_carry_each_rows_inverse_pair_count():
    cfg = config.load(None, ["data.synthetic.preset=tiny", "train.l2_scaling=frequency", "train.gramian=2",
                             "train.batch_size=64"])
    data = load_dataset(cfg.data)
    work = mrl4rec_workload(cfg, ONE_PROCESS, data)
    user_pairs = np.bincount(data.train_users, minlength=data.num_users)
    item_pairs = np.bincount(data.train_items, minlength=data.num_items)
    seen = 0
    for batch in work.batches(1, 0):
        np.testing.assert_allclose(batch.user_scale.numpy(), 1.0 / user_pairs[batch.users.numpy()], rtol=1e-6)
        np.testing.assert_allclose(batch.item_scale.numpy(), 1.0 / item_pairs[batch.pos.numpy()], rtol=1e-6)
        seen += len(batch.users)
    assert seen > 0
    occurrence = mrl4rec_workload(config.load(None, ["data.synthetic.preset=tiny"]), ONE_PROCESS, data)
    assert next(iter(occurrence.batches(1, 0))).item_scale is None  # the default mode builds nothing extra


@pytest.mark.parametrize("negatives", [True, False])
def test_the_models_loss_carries_the_frequency_l2_and_the_chosen_negatives(negatives):
    """MatryoshkaMF's loss with l2 minus its loss without: exactly the formula, written out per row."""
    from distrec.embeddings import Tables
    from distrec.model import Batch, MatryoshkaMF

    overrides = ["model.dim=8", "model.levels=[2,4,8]", "train.sampler=uniform", "train.l2_scaling=frequency",
                 "train.gramian=3", f"train.l2_negatives={str(negatives).lower()}"]
    cfg = config.load(None, overrides)
    tables = Tables(5, 7, cfg.model, device=torch.device("cpu"))
    tables.seed(1)
    users, pos, negs = torch.tensor([0, 1, 1, 4]), torch.tensor([2, 2, 5, 6]), torch.tensor([3, 0, 6, 1])
    user_pairs, item_pairs = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([4.0, 4.0, 1.0, 2.0])
    batch = Batch(users=users, pos=pos, cands=negs.view(4, 1, 1), global_size=4,
                  user_scale=1 / user_pairs, item_scale=1 / item_pairs)
    with_l2 = MatryoshkaMF(tables, cfg.model, config.load(None, [*overrides, "train.l2=0.1"]).train, ONE_PROCESS)
    without = MatryoshkaMF(tables, cfg.model, config.load(None, [*overrides, "train.l2=0"]).train, ONE_PROCESS)
    got = (with_l2(batch)[0] - without(batch)[0]).item() * 4  # the loss is a mean over the global batch

    weights = cfg.model.weights
    def level_norm(x):
        return sum(w * float(x[:d] @ x[:d]) for d, w in zip(cfg.model.levels, weights)) / sum(weights)

    u, p, n = tables.users(users).detach(), tables.items(pos).detach(), tables.items(negs).detach()
    item_alpha = 3 * 5 / 7
    expected = sum((1 + 3 / user_pairs[b]) * level_norm(u[b]) + (1 + item_alpha / item_pairs[b]) * level_norm(p[b])
                   + (level_norm(n[b]) if negatives else 0.0) for b in range(4)) * 0.1 / 2
    assert got == pytest.approx(float(expected), rel=1e-4)
