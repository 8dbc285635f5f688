import numpy as np
import pytest
import torch

from distrec import samplers


def test_candidates_never_hit_training_items():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 8)
    items = rng.integers(0, 20, size=len(users))
    s = samplers.CandidateSampler(users, items, num_items=20)
    train = {(int(u), int(i)) for u, i in zip(users, items)}
    batch_users = rng.integers(0, 50, size=300)
    cands = s.draw(rng, batch_users, (3, 7))
    assert cands.shape == (300, 3, 7)
    assert cands.min() >= 0 and cands.max() < 20
    for b, u in enumerate(batch_users):
        assert not any((int(u), int(c)) in train for c in cands[b].ravel())


def test_candidates_are_roughly_uniform_over_allowed_items():
    s = samplers.CandidateSampler(np.array([0, 0]), np.array([0, 1]), num_items=10)
    c = s.draw(np.random.default_rng(1), np.zeros(20000, dtype=np.int64), (1,))
    counts = np.bincount(c.ravel(), minlength=10)
    assert counts[:2].sum() == 0
    assert counts[2:].min() > 0.8 * 20000 / 8


def test_a_user_with_every_item_is_refused():
    with pytest.raises(ValueError, match="every item"):
        samplers.CandidateSampler(np.array([0, 0, 0]), np.array([0, 1, 2]), num_items=3)


def test_same_seed_same_draw():
    s = samplers.CandidateSampler(np.array([0]), np.array([0]), num_items=100)
    a = s.draw(np.random.default_rng([1, 2, 0]), np.zeros(10, dtype=np.int64), (4,))
    b = s.draw(np.random.default_rng([1, 2, 0]), np.zeros(10, dtype=np.int64), (4,))
    c = s.draw(np.random.default_rng([1, 2, 1]), np.zeros(10, dtype=np.int64), (4,))
    assert (a == b).all() and (a != c).any()


@pytest.mark.parametrize("groups", [1, 3])
def test_mns_picks_the_per_level_argmax_like_brute_force(groups):
    g = torch.Generator().manual_seed(3)
    levels = (2, 4, 8)
    u = torch.randn(6, 8, generator=g)
    cands = torch.randn(6, groups, 5, 8, generator=g)
    rows, idx = cands.reshape(-1, 8), torch.arange(6 * groups * 5).view(6, groups, 5)
    got = samplers.select_hardest(u, rows, idx, levels, "mns")
    assert got.shape == (6, 3)
    for b in range(6):
        for l, d in enumerate(levels):
            block = cands[b, l if groups > 1 else 0]
            scores = [float(u[b, :d] @ block[n, :d]) for n in range(5)]
            assert got[b, l].item() == int(np.argmax(scores))


def test_mns_levels_really_differ_from_dns():
    # Candidate 0 wins on the first 2 dims, candidate 1 on the full vector.
    u = torch.ones(1, 4)
    rows = torch.tensor([[5.0, 5.0, -9.0, -9.0], [1.0, 1.0, 4.0, 4.0]])
    idx = torch.tensor([[[0, 1]]])
    assert samplers.select_hardest(u, rows, idx, (2, 4), "mns").tolist() == [[0, 1]]
    assert samplers.select_hardest(u, rows, idx, (2, 4), "dns").tolist() == [[1]]
    assert samplers.select_hardest(u, rows, idx, (2, 4), "uniform").tolist() == [[0]]


def test_candidate_shapes():
    assert samplers.candidate_shape("uniform", 16, 5, "per_level") == (1, 1)
    assert samplers.candidate_shape("dns", 16, 5, "per_level") == (1, 16)
    assert samplers.candidate_shape("mns", 16, 5, "per_level") == (5, 16)
    assert samplers.candidate_shape("mns", 16, 5, "shared") == (1, 16)


def test_membership_filter_agrees_with_the_exact_set():
    # Members pass the filter and are settled by the exact search; most non-members stop at
    # the filter, a few (its false positives) reach the search too: every path is taken.
    rng = np.random.default_rng(5)
    users, items = rng.integers(0, 300, 3000), rng.integers(0, 1000, 3000)
    keys = np.unique(users * 1000 + items)
    s = samplers.CandidateSampler(keys // 1000, keys % 1000, num_items=1000)
    q_users, q_items = rng.integers(0, 300, 50000), rng.integers(0, 1000, 50000)
    q_users[: len(keys)], q_items[: len(keys)] = keys // 1000, keys % 1000  # every training pair is a member
    expect = np.isin(q_users * 1000 + q_items, keys)
    assert expect.sum() >= len(keys) and (~expect).sum() > 40000
    assert (s.is_train(q_users, q_items) == expect).all()


def _blocks(table: torch.Tensor, row_cuts: list[int], col_cuts: list[int]) -> list[list]:
    """The table cut into a grid of LocalShard blocks, one list per 'rank' (one block each)."""
    from distrec.embeddings import LocalShard

    rows, cols = [0, *row_cuts, table.shape[0]], [0, *col_cuts, table.shape[1]]
    return [[LocalShard(r0, c0, table[r0:r1, c0:c1])] for r0, r1 in zip(rows, rows[1:]) for c0, c1 in zip(cols, cols[1:])]


@pytest.mark.parametrize("sampler,groups", [("mns", 3), ("mns", 1), ("dns", 1)])
@pytest.mark.parametrize("row_cuts,col_cuts", [([], []), ([7], []), ([], [4]), ([5, 13], [2, 6])], ids=["whole", "rows", "columns", "grid"])
def test_partial_candidate_scores_sum_to_the_whole_table_picks(sampler, groups, row_cuts, col_cuts):
    """Scores summed over any split of the table by rows and columns (as ranks hold it) pick
    what select_hardest picks over the whole table."""
    g = torch.Generator().manual_seed(7)
    levels, table = (2, 4, 8), torch.randn(20, 8, generator=g)
    u, cands = torch.randn(9, 8, generator=g), torch.randint(0, 20, (9, groups, 6), generator=g)
    picks = samplers.scored_levels(sampler, levels, groups)
    total = sum(samplers.candidate_scores(u, cands, shards, picks) for shards in _blocks(table, row_cuts, col_cuts))
    for j, (d, grp) in enumerate(picks):  # the scores themselves: <u[:d], item[:d]>
        torch.testing.assert_close(total[j], torch.einsum("bd,bnd->bn", u[:, :d], table[cands[:, grp], :d]))
    assert (total.argmax(dim=2).T == samplers.select_hardest(u, table, cands, levels, sampler)).all()
