import numpy as np
import pytest
import torch

from distrec.nn import counters, samplers

STREAM = counters.key(2022, 1, 1)


def _draw(s, users, shape, stream=STREAM, first=0):
    return s.draw(stream, np.arange(first, first + len(users)), users, shape)


def test_candidates_never_hit_training_items():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 8)
    items = rng.integers(0, 20, size=len(users))
    s = samplers.CandidateSampler(users, items, num_items=20)
    train = {(int(u), int(i)) for u, i in zip(users, items)}
    batch_users = rng.integers(0, 50, size=300)
    cands = _draw(s, batch_users, (3, 7))
    assert cands.shape == (300, 3, 7)
    assert cands.min() >= 0 and cands.max() < 20
    for b, u in enumerate(batch_users):
        assert not any((int(u), int(c)) in train for c in cands[b].ravel())


def test_candidates_are_roughly_uniform_over_allowed_items():
    s = samplers.CandidateSampler(np.array([0, 0]), np.array([0, 1]), num_items=10)
    c = _draw(s, np.zeros(20000, dtype=np.int64), (1,))
    counts = np.bincount(c.ravel(), minlength=10)
    assert counts[:2].sum() == 0
    assert counts[2:].min() > 0.8 * 20000 / 8


def test_a_user_with_every_item_is_refused():
    with pytest.raises(ValueError, match="every item"):
        samplers.CandidateSampler(np.array([0, 0, 0]), np.array([0, 1, 2]), num_items=3)


def test_same_key_same_draw_and_another_key_another():
    s = samplers.CandidateSampler(np.array([0]), np.array([0]), num_items=100)
    zeros = np.zeros(10, dtype=np.int64)
    a, b = _draw(s, zeros, (4,)), _draw(s, zeros, (4,))
    c = _draw(s, zeros, (4,), stream=counters.key(2022, 2, 1))
    assert (a == b).all() and (a != c).any()


def test_a_samples_candidates_do_not_depend_on_how_the_batch_is_split():
    # What makes training independent of the world size and of the batch a run resumes at:
    # the sample at global position p gets the same candidates whichever slice it is in.
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(40), 6)
    s = samplers.CandidateSampler(users, rng.integers(0, 30, size=len(users)), num_items=30)
    batch = rng.integers(0, 40, size=101)
    whole = _draw(s, batch, (2, 5), first=500)
    parts = [_draw(s, batch[lo:hi], (2, 5), first=500 + lo) for lo, hi in ((0, 51), (51, 101))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_no_two_purposes_share_a_stream():
    # Every purpose's streams over seeds, epochs (or tables) and dropout's (step, rank): all distinct.
    # The layout before streams were named keyed tables by (seed, 4, table) and MF candidates by
    # (seed, epoch, 1): the item table's initial rows came from epoch 4's candidate stream.
    keys = {}
    for seed in (0, 1, 2022):
        for purpose in counters.Stream:
            parts = [(e, s, r) for e in range(6) for s in range(3) for r in range(2)] if purpose is counters.Stream.DROPOUT \
                else [(e,) for e in range(64)]
            for p in parts:
                k = int(counters.stream(seed, purpose, *p))
                assert k not in keys, f"{purpose.name}{p} shares a stream with {keys[k]}"
                keys[k] = (seed, purpose.name, p)
    assert counters.stream(2022, counters.Stream.TABLE_INIT, 1) != counters.stream(2022, counters.Stream.MF_CANDIDATES, 4)


def test_counter_draws_are_uniform_and_independent_of_the_counter_order():
    u = counters.random(counters.key(1), np.arange(200_000))
    assert 0.0 <= u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert abs(counts - 10_000).max() < 5 * 100  # 5 standard deviations of a binomial count
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # consecutive counters are unrelated
    perm = np.random.default_rng(0).permutation(1000)
    np.testing.assert_array_equal(counters.random(counters.key(1), perm), u[perm])
    ids = counters.integers(counters.key(2), np.arange(100_000), 7)
    assert ids.min() == 0 and ids.max() == 6 and np.bincount(ids).min() > 13_500


def test_shared_negatives_of_the_ranks_together_are_those_of_one_process():
    stream = counters.key(2022, 3, 2)
    whole = samplers.shared_negatives(stream, 64, 32, 1000, 320)  # 10 x the batch of 32
    halves = [samplers.shared_negatives(stream, 64 + lo, 16, 1000, 160) for lo in (0, 16)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)


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
    from distrec.nn.embeddings import LocalShard

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
