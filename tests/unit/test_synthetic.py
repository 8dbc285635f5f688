"""The synthetic generator: exact sizes, determinism, heavy tails, and a real category hierarchy."""

from __future__ import annotations

import numpy as np
import pytest

from distrec.config import DataConfig, SyntheticConfig
from distrec.data import DataError, load_dataset
from distrec.data.synthetic import PRESETS, generate, item_hierarchy, resolve


def check_exact(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    users, items = generate(cfg)
    sizes = resolve(cfg)
    assert users.dtype == np.int64 and items.dtype == np.int64
    assert users.size == sizes.num_interactions
    keys = users * sizes.num_items + items
    assert np.all(np.diff(keys) > 0), "pairs must be unique (and come sorted)"
    per_user = np.bincount(users, minlength=sizes.num_users)
    assert per_user.size == sizes.num_users and per_user.min() >= 3
    assert np.bincount(items, minlength=sizes.num_items).min() >= 1 and items.max() < sizes.num_items
    return users, items


def test_tiny_is_exact():
    # How fast the generator is belongs to scripts/bench_scale.py (data seconds), not to a test.
    check_exact(SyntheticConfig(preset="tiny"))
    assert PRESETS["tiny"]["num_interactions"] == 6_000


@pytest.mark.parametrize("sizes", [
    dict(num_users=123, num_items=77, num_interactions=1_000, num_categories=3, num_subcategories=2),
    dict(num_users=50, num_items=40, num_interactions=1_000),  # at the cap: 50 users x 20 items
    dict(num_users=2, num_items=6, num_interactions=6, num_categories=1, num_subcategories=1),  # 3 each, all items
    dict(num_users=10, num_items=300, num_interactions=300),  # as few interactions as items
])
def test_custom_sizes_are_exact(sizes):
    check_exact(SyntheticConfig(preset="tiny", **sizes))


def test_books_preset_is_the_amazon_books_size():
    users, items = check_exact(SyntheticConfig(preset="books"))
    assert (np.bincount(users).size, np.bincount(items).size, users.size) == (603_668, 367_982, 8_898_041)


def test_deterministic_per_seed():
    a = generate(SyntheticConfig(preset="tiny", seed=3))
    b = generate(SyntheticConfig(preset="tiny", seed=3))
    c = generate(SyntheticConfig(preset="tiny", seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_popularity_and_activity_are_heavy_tailed():
    users, items = generate(SyntheticConfig(preset="small"))
    item_counts = np.sort(np.bincount(items))[::-1]
    assert item_counts[: item_counts.size // 10].sum() > 0.4 * items.size  # top 10% of items
    assert item_counts[0] > 20 * np.median(item_counts)
    user_counts = np.bincount(users)
    assert user_counts.max() > 8 * np.median(user_counts)
    flat = generate(SyntheticConfig(preset="small", popularity_exponent=0.0))[1]
    flat_counts = np.sort(np.bincount(flat))[::-1]
    assert flat_counts[: flat_counts.size // 10].sum() < item_counts[: item_counts.size // 10].sum()


def top_share(users: np.ndarray, groups: np.ndarray, num_groups: int, top: int) -> float:
    """Mean over users of the share of their interactions in their `top` most frequent groups."""
    counts = np.zeros((users.max() + 1, num_groups))
    np.add.at(counts, (users, groups), 1)
    best = np.sort(counts, axis=1)[:, ::-1][:, :top].sum(1)
    return float(np.mean(best / counts.sum(1)))


def test_hierarchy_is_real():
    cfg = SyntheticConfig(preset="small")
    sizes = resolve(cfg)
    users, items = generate(cfg)
    category, subcategory = item_hierarchy(cfg)
    leaf = category * sizes.num_subcategories + subcategory
    assert np.bincount(category).size == sizes.num_categories
    shuffled = np.random.default_rng(0).permutation(items)  # same popularity, no user structure
    real_cat = top_share(users, category[items], sizes.num_categories, 2)
    chance_cat = top_share(users, category[shuffled], sizes.num_categories, 2)
    real_leaf = top_share(users, leaf[items], sizes.num_categories * sizes.num_subcategories, 3)
    chance_leaf = top_share(users, leaf[shuffled], sizes.num_categories * sizes.num_subcategories, 3)
    assert real_cat > 0.8 and real_cat > chance_cat + 0.2, (real_cat, chance_cat)
    assert real_leaf > 0.6 and real_leaf > chance_leaf + 0.25, (real_leaf, chance_leaf)


def recall_at_20(data, scores: np.ndarray) -> float:
    """Mean recall@20 over test users; scores float [num_users, num_items], train items masked here."""
    scores = scores.copy()
    scores[data.train_users, data.train_items] = -np.inf
    top = np.argsort(-scores, axis=1)[:, :20]
    hits = np.zeros_like(scores, dtype=bool)
    np.put_along_axis(hits, top, True, axis=1)
    test_hits = np.bincount(data.test_users, weights=hits[data.test_users, data.test_items], minlength=data.num_users)
    test_count = np.bincount(data.test_users, minlength=data.num_users)
    users = test_count > 0
    return float(np.mean(test_hits[users] / np.minimum(test_count[users], 20)))


def test_personal_taste_beats_popularity():
    # The point of the generator: a model that learns user taste must beat popularity ranking.
    data = load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny"), valid_fraction=0.0))
    x = np.zeros((data.num_users, data.num_items))
    x[data.train_users, data.train_items] = 1.0
    popularity = np.tile(x.sum(0), (data.num_users, 1))
    norm = np.sqrt(x.sum(0)) + 1e-9
    item_knn = x @ ((x.T @ x) / norm[:, None] / norm[None, :])
    pop, knn = recall_at_20(data, popularity), recall_at_20(data, item_knn)
    assert knn > pop + 0.08, (knn, pop)


@pytest.mark.parametrize("sizes, key", [
    (dict(num_users=100, num_interactions=200), "data.synthetic.num_interactions"),
    (dict(num_users=10, num_items=10, num_interactions=60, num_categories=2, num_subcategories=2),
     "data.synthetic.num_interactions"),  # more than num_users * num_items / 2
    (dict(num_items=10, num_categories=4, num_subcategories=3), "data.synthetic.num_subcategories"),
    (dict(num_items=5, num_categories=1, num_subcategories=1), "data.synthetic.num_items"),
    (dict(popularity_exponent=-1.0), "data.synthetic.popularity_exponent"),
])
def test_impossible_sizes_name_the_key(sizes, key):
    with pytest.raises(DataError, match=key.replace(".", r"\.")):
        generate(SyntheticConfig(preset="tiny", **sizes))


def test_load_dataset_reports_the_resolved_sizes():
    data = load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny", num_users=200)))
    source = data.report["source"]
    assert source["format"] == "synthetic" and source["num_users"] == 200 and source["num_items"] == 300
    assert data.num_users == 200 and data.num_items == 300 and data.report["pairs_read"] == 6_000
    assert data.user_raw.tolist() == list(range(200))
