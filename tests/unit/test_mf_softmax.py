"""The MF softmax loss and the per-level L2, against brute force."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distrec.nn import counters, losses
from distrec.nn.samplers import shared_negatives
from tests import reference

LEVELS, WEIGHTS = (2, 4, 8), (0.2, 0.3, 0.5)


def _brute_softmax(u, pos, negs, hits, levels, weights):
    """sum_l w_l * -log(e^{s+} / (e^{s+} + sum over kept j of e^{s_j})), one sample at a time."""
    out = []
    for b in range(u.shape[0]):
        total = 0.0
        for d, w in zip(levels, weights):
            s_pos = float(u[b, :d] @ pos[b, :d])
            s_neg = [float(u[b, :d] @ negs[j, :d]) for j in range(negs.shape[0]) if not hits[b, j]]
            total += w * -(s_pos - math.log(math.exp(s_pos) + sum(math.exp(s) for s in s_neg)))
        out.append(total)
    return torch.tensor(out)


def test_matryoshka_softmax_against_brute_force():
    g = torch.Generator().manual_seed(0)
    u, pos, negs = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g), torch.randn(7, 8, generator=g)
    hits = torch.zeros(5, 7, dtype=torch.bool)
    hits[1, 3] = hits[4, 0] = True
    got = losses.matryoshka_softmax(u, pos, negs, LEVELS, WEIGHTS, hits)
    torch.testing.assert_close(got, _brute_softmax(u, pos, negs, hits, LEVELS, WEIGHTS), rtol=1e-5, atol=1e-5)
    # The slower general path (IHN with beta = 0, one interest) gives the same values.
    pos_id, neg_ids = torch.tensor([9, 3, 9, 9, 0]), torch.tensor([10, 11, 12, 3, 13, 14, 15])
    neg_ids[0] = 0  # row 4's positive is negative 0; row 1's is negative 3, as in `hits`
    general = losses.matryoshka_sampled_softmax(u.unsqueeze(1), pos, negs, LEVELS, WEIGHTS, 0.0, pos_id=pos_id, neg_ids=neg_ids)
    torch.testing.assert_close(got, general, rtol=1e-5, atol=1e-5)


def test_whole_catalogue_is_the_exact_full_softmax():
    g = torch.Generator().manual_seed(1)
    u, items = torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g)
    pos_id = torch.tensor([0, 5, 5, 19, 7, 2])
    ids = torch.as_tensor(shared_negatives(counters.key(0), 0, 6, 20, 10**6))
    assert torch.equal(ids, torch.arange(20))  # asking for more than the catalogue gives every item once
    got = losses.matryoshka_softmax(u, items[pos_id], items[ids], LEVELS, WEIGHTS, ids[None, :] == pos_id[:, None])
    torch.testing.assert_close(got, losses.matryoshka_softmax(u, None, items, LEVELS, WEIGHTS, pos_index=pos_id), rtol=1e-5, atol=1e-5)
    want = sum(w * F.cross_entropy(u[:, :d] @ items[:, :d].T, pos_id, reduction="none") for d, w in zip(LEVELS, WEIGHTS))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_shared_negatives_are_uniform_draws_below_the_catalogue_size():
    ids = shared_negatives(counters.key(0), 0, 7, 50, 49)
    assert ids.shape == (49,) and ids.min() >= 0 and ids.max() < 50
    assert len(np.unique(ids)) < 49  # drawn with replacement, so (almost surely) with repeats


def test_level_l2_weights_match_the_levels_that_use_each_coordinate():
    w = losses.level_l2_weights(LEVELS, WEIGHTS)
    # coordinates 0-1 are in all three levels, 2-3 in the last two, 4-7 in the last one
    assert w.tolist() == pytest.approx([1.0, 1.0, 0.8, 0.8, 0.5, 0.5, 0.5, 0.5])
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(3, 8, generator=g), torch.randn(4, 8, generator=g)
    brute = sum(wl * (x[:, :d].pow(2).sum() + y[:, :d].pow(2).sum()) for d, wl in zip(LEVELS, WEIGHTS)) / 2 / sum(WEIGHTS)
    assert losses.l2_penalty(x, y, weights=w).item() == pytest.approx(brute.item(), rel=1e-6)
    assert losses.l2_penalty(x, y).item() == pytest.approx((x.pow(2).sum() + y.pow(2).sum()).item() / 2, rel=1e-6)


def test_gramian_term_is_the_explicit_sum_over_all_items_at_every_level():
    g = torch.Generator().manual_seed(3)
    u, items = torch.randn(4, 8, generator=g), torch.randn(30, 8, generator=g)
    got = reference.gramian_penalty(u, items, LEVELS, WEIGHTS)
    brute = torch.tensor([
        sum(w * sum(float(u[b, :d] @ items[i, :d]) ** 2 for i in range(30)) / 30 for d, w in zip(LEVELS, WEIGHTS))
        for b in range(4)
    ])
    torch.testing.assert_close(got, brute, rtol=1e-5, atol=1e-5)
