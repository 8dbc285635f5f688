"""Synthetic interactions with hierarchical latent preferences: category > sub-category > item.

`generate(cfg)` returns exactly `num_interactions` unique (user, item) pairs in which every user id
0..num_users-1 has at least MIN_PER_USER items and every item id 0..num_items-1 appears. Items live
in leaves (category, sub-category) and are Zipf-popular within their leaf. Each user mixes a few
categories and, inside each, a few sub-categories (Dirichlet weights), plus some popularity-driven
noise; activity per user is log-normal, so heavy tailed. Everything is vectorised (searchsorted
over cumulative weights) and seeded by cfg.seed. Imports: numpy, config, ingest (DataError).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from distrec.config import SyntheticConfig
from distrec.data.ingest import DataError

# Sizes per preset; a SyntheticConfig field left at None takes the preset's value. Leaves are
# num_categories * num_subcategories (the latter is per category), chosen so that a leaf holds
# a few dozen (tiny, small) to several hundred (books) items, as a real shop's sub-category does.
PRESETS: dict[str, dict[str, int]] = {
    # Unit tests: 12 leaves of ~25 items, ~15 interactions per user; generates in milliseconds.
    "tiny": dict(num_users=400, num_items=300, num_interactions=6_000, num_categories=4, num_subcategories=3),
    # What a new user trains on by default: 60 leaves of ~67 items, ~20 interactions per user.
    "small": dict(num_users=6_000, num_items=4_000, num_interactions=120_000, num_categories=10, num_subcategories=6),
    # Exactly the Amazon-Books size of the MRL4Rec paper: 512 leaves of ~720 items.
    "books": dict(
        num_users=603_668, num_items=367_982, num_interactions=8_898_041, num_categories=32, num_subcategories=16
    ),
}

MIN_PER_USER = 3
CATEGORIES_PER_USER = 3  # drawn with replacement, so some users end up with one or two
SUBCATEGORIES_PER_CATEGORY = 2  # likewise
USER_CATEGORY_ALPHA = 0.5  # Dirichlet < 1: most users lean on one category
USER_SUBCATEGORY_ALPHA = 1.0
NOISE_SHARE = 0.1  # draws from global popularity: taste outside a user's niches
CATEGORY_EXPONENT = 0.7  # Zipf popularity of categories, and of sub-categories inside one
LEAF_SIZE_ALPHA = 4.0  # Dirichlet over leaf sizes: uneven, but no leaf is tiny
ACTIVITY_SIGMA = 1.0  # log-normal spread of interactions per user
UNIFORM_AFTER_ROUNDS = 12  # top-up rounds after which the few stragglers draw uniformly
MAX_ROUNDS = 60


@dataclasses.dataclass(frozen=True)
class Sizes:
    """A SyntheticConfig with the preset filled in and checked."""

    num_users: int
    num_items: int
    num_interactions: int
    num_categories: int
    num_subcategories: int
    popularity_exponent: float
    seed: int

    @property
    def max_per_user(self) -> int:
        # Half the catalogue: a user's top-up draws then succeed at least half the time.
        return self.num_items // 2


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """Items laid out by leaf: catalogue positions 0..I-1 are grouped leaf by leaf."""

    item_of_pos: np.ndarray  # int64 [I]: item id at each position (a random permutation)
    leaf_of_pos: np.ndarray  # int64 [I]
    leaf_start: np.ndarray  # int64 [L+1]: positions of leaf l are leaf_start[l]:leaf_start[l+1]
    leaf_cum: np.ndarray  # float64 [I]: leaf + cumulative Zipf share inside the leaf, in (leaf, leaf+1]
    global_cum: np.ndarray  # float64 [I]: cumulative global popularity, ends at 1
    category_weight: np.ndarray  # float64 [C]
    subcategory_weight: np.ndarray  # float64 [S]


def resolve(cfg: SyntheticConfig) -> Sizes:
    """Fill the preset in and check that the sizes can be met; DataError names the key otherwise."""
    preset = PRESETS[cfg.preset]
    values = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in preset.items()}
    sizes = Sizes(**values, popularity_exponent=cfg.popularity_exponent, seed=cfg.seed)
    num_leaves = sizes.num_categories * sizes.num_subcategories
    key = "data.synthetic.num_interactions"
    if sizes.num_items < num_leaves:
        raise DataError(
            f"data.synthetic.num_subcategories: {sizes.num_categories} categories x {sizes.num_subcategories} "
            f"sub-categories = {num_leaves} leaves need at least as many items; num_items is {sizes.num_items}"
        )
    if sizes.max_per_user < MIN_PER_USER:
        raise DataError(f"data.synthetic.num_items must be at least {2 * MIN_PER_USER}, got {sizes.num_items}")
    if sizes.num_interactions < max(MIN_PER_USER * sizes.num_users, sizes.num_items):
        raise DataError(
            f"{key}={sizes.num_interactions} is too small: every user needs {MIN_PER_USER} and every item 1, "
            f"so at least max({MIN_PER_USER} * {sizes.num_users}, {sizes.num_items})"
        )
    if sizes.num_interactions > sizes.num_users * sizes.max_per_user:
        raise DataError(
            f"{key}={sizes.num_interactions} is too large: at most num_users * num_items / 2 = "
            f"{sizes.num_users * sizes.max_per_user}"
        )
    if sizes.popularity_exponent < 0:
        raise DataError(f"data.synthetic.popularity_exponent must be >= 0, got {sizes.popularity_exponent}")
    return sizes


def generate(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(users, items): int64 [num_interactions] unique pairs, sorted by (user, item)."""
    sizes = resolve(cfg)
    cat = _catalogue(sizes, np.random.default_rng([sizes.seed, 0]))
    rng = np.random.default_rng([sizes.seed, 1])
    slot_leaf, slot_cum = _preferences(sizes, cat, rng)
    cover_user = _coverage(sizes, cat, slot_leaf, rng)
    target = _activity(sizes, np.bincount(cover_user, minlength=sizes.num_users), rng)
    keys = _draw(sizes, cat, slot_leaf, slot_cum, cover_user, target, rng)
    return keys // sizes.num_items, keys % sizes.num_items


def item_hierarchy(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(category, sub-category) of each item id: int64 [num_items] each; the generator's own layout."""
    sizes = resolve(cfg)
    cat = _catalogue(sizes, np.random.default_rng([sizes.seed, 0]))
    leaf = np.empty(sizes.num_items, np.int64)
    leaf[cat.item_of_pos] = cat.leaf_of_pos
    return leaf // sizes.num_subcategories, leaf % sizes.num_subcategories


def _zipf(n: int, exponent: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def _catalogue(s: Sizes, rng: np.random.Generator) -> Catalogue:
    num_leaves = s.num_categories * s.num_subcategories
    sizes = 1 + rng.multinomial(s.num_items - num_leaves, rng.dirichlet(np.full(num_leaves, LEAF_SIZE_ALPHA)))
    leaf_start = np.concatenate([[0], np.cumsum(sizes)])
    leaf_of_pos = np.repeat(np.arange(num_leaves), sizes)
    rank = np.arange(s.num_items) - leaf_start[leaf_of_pos]
    weight = (rank + 1.0) ** -s.popularity_exponent  # [I] Zipf inside each leaf
    cum = np.cumsum(weight)
    before = (cum - weight)[leaf_start[:-1]]  # [L] mass before each leaf
    total = cum[leaf_start[1:] - 1] - before  # [L] mass of each leaf
    within = (cum - before[leaf_of_pos]) / total[leaf_of_pos]
    within[leaf_start[1:] - 1] = 1.0  # exact ends keep searchsorted inside the leaf
    category_weight = _zipf(s.num_categories, CATEGORY_EXPONENT)
    subcategory_weight = _zipf(s.num_subcategories, CATEGORY_EXPONENT)
    leaf_weight = np.outer(category_weight, subcategory_weight).ravel()
    global_cum = np.cumsum(leaf_weight[leaf_of_pos] * weight / total[leaf_of_pos])
    return Catalogue(
        item_of_pos=rng.permutation(s.num_items),  # ids carry no hint of the hierarchy
        leaf_of_pos=leaf_of_pos,
        leaf_start=leaf_start,
        leaf_cum=leaf_of_pos + within,
        global_cum=global_cum / global_cum[-1],
        category_weight=category_weight,
        subcategory_weight=subcategory_weight,
    )


def _pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn from the distribution with cumulative weights `cum` (ending at 1) for uniforms `u`."""
    return np.minimum(np.searchsorted(cum, u, side="right"), cum.size - 1)


def _preferences(s: Sizes, cat: Catalogue, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each user's leaves and mixture: slot_leaf int64 [U, M], slot_cum float64 [U * M] = user + cumulative weight."""
    u, kc, ks = s.num_users, CATEGORIES_PER_USER, SUBCATEGORIES_PER_CATEGORY
    cats = _pick(np.cumsum(cat.category_weight), rng.random((u, kc)))
    subs = _pick(np.cumsum(cat.subcategory_weight), rng.random((u, kc, ks)))
    slot_leaf = (cats[:, :, None] * s.num_subcategories + subs).reshape(u, kc * ks)
    cat_w = rng.gamma(USER_CATEGORY_ALPHA, size=(u, kc)) + 1e-12  # Dirichlet via normalised gammas
    sub_w = rng.gamma(USER_SUBCATEGORY_ALPHA, size=(u, kc, ks)) + 1e-12
    weight = (cat_w[:, :, None] / cat_w.sum(1)[:, None, None] * sub_w / sub_w.sum(2, keepdims=True)).reshape(u, -1)
    slot_cum = np.cumsum(weight, axis=1)
    slot_cum /= slot_cum[:, -1:]
    slot_cum[:, -1] = 1.0
    # Offset by the user id, so all users' cumulative weights form one flat ascending array.
    return slot_leaf, (np.arange(u)[:, None] + slot_cum).ravel()


def _pick_slot(slot_cum: np.ndarray, num_slots: int, user: np.ndarray, r: np.ndarray) -> np.ndarray:
    """int64 [D]: flat slot index drawn for each user[d] with uniform r[d], from slot_cum [U * M]."""
    # Counting the user's cumulative weights below r: M short, cache-friendly passes instead of a
    # binary search over all U * M weights.
    base = user * num_slots
    slot = base.copy()
    target = user + r
    for j in range(num_slots - 1):
        slot += slot_cum[base + j] <= target
    return slot


def _coverage(s: Sizes, cat: Catalogue, slot_leaf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 [I]: for each catalogue position, a user who likes its leaf (any user if none does).

    Every item needs one interaction to exist in the data; giving it to a fan keeps the taste structure.
    """
    flat_leaf = slot_leaf.ravel()
    order = np.argsort(flat_leaf, kind="stable")
    fans = order // slot_leaf.shape[1]  # users, grouped by leaf
    num_leaves = cat.leaf_start.size - 1
    start = np.searchsorted(flat_leaf[order], np.arange(num_leaves + 1))
    leaf = cat.leaf_of_pos
    count = (start[1:] - start[:-1])[leaf]
    pick = start[leaf] + (rng.random(leaf.size) * count).astype(np.int64)
    anyone = rng.integers(s.num_users, size=leaf.size)
    cover_user = np.where(count > 0, fans[np.minimum(pick, fans.size - 1)], anyone)
    per_user = np.bincount(cover_user, minlength=s.num_users)
    if np.maximum(per_user, MIN_PER_USER).sum() > s.num_interactions or per_user.max() > s.max_per_user:
        # Sizes so tight that fans would hold too many items: deal items out evenly instead,
        # which always fits since num_interactions >= max(3 * num_users, num_items).
        cover_user = rng.permutation(s.num_users)[np.arange(leaf.size) % s.num_users]
    return cover_user


def _activity(s: Sizes, covered: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int64 [U]: interactions per user; >= MIN_PER_USER and the coverage pairs, <= max_per_user, summing to N."""
    target = np.maximum(covered, MIN_PER_USER)
    spare = s.num_interactions - int(target.sum())
    if spare < 0:
        raise DataError(f"data.synthetic.num_interactions={s.num_interactions} is too small for these sizes")
    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, s.num_users)
    target += rng.multinomial(spare, activity / activity.sum())
    while (over := target > s.max_per_user).any():  # give the excess to users with room, by activity
        excess = int((target[over] - s.max_per_user).sum())
        target[over] = s.max_per_user
        room = activity * (target < s.max_per_user)
        target += rng.multinomial(excess, room / room.sum())
    return target


def _draw(
    s: Sizes,
    cat: Catalogue,
    slot_leaf: np.ndarray,
    slot_cum: np.ndarray,
    cover_user: np.ndarray,
    target: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sorted unique keys user * I + item, target[u] of them per user (the coverage pairs included).

    Rounds oversample every user still short of its target, drop pairs already held or repeated,
    and keep each user's first new pairs in draw order: successive sampling without replacement.
    """
    num_items, num_slots = s.num_items, slot_leaf.shape[1]
    flat_leaf = slot_leaf.ravel()
    keys = np.sort(cover_user * num_items + cat.item_of_pos)
    have = np.bincount(cover_user, minlength=s.num_users)
    for round_no in range(MAX_ROUNDS):
        need = target - have
        short = np.flatnonzero(need > 0)
        if short.size == 0:
            return keys
        oversample = min(1.5 * 2.0**round_no, 64.0)
        user = np.repeat(short, np.ceil(need[short] * oversample).astype(np.int64) + 2)  # grouped, ascending
        if round_no < UNIFORM_AFTER_ROUNDS:
            leaf = flat_leaf[_pick_slot(slot_cum, num_slots, user, rng.random(user.size))]
            pos = np.clip(np.searchsorted(cat.leaf_cum, leaf + rng.random(user.size), side="right"),
                          cat.leaf_start[leaf], cat.leaf_start[leaf + 1] - 1)
            noise = rng.random(user.size) < NOISE_SHARE
            pos[noise] = _pick(cat.global_cum, rng.random(int(noise.sum())))
        else:
            pos = rng.integers(num_items, size=user.size)
        drawn = user * num_items + cat.item_of_pos[pos]
        at = np.minimum(np.searchsorted(keys, drawn), keys.size - 1)
        fresh = np.flatnonzero(keys[at] != drawn)
        new = drawn[fresh[_first_occurrences(drawn[fresh])]]  # still grouped by user, in draw order
        owner = new // num_items
        rank = np.arange(new.size) - np.searchsorted(owner, owner)
        new = new[rank < need[owner]]
        have += np.bincount(new // num_items, minlength=s.num_users)
        keys = np.sort(np.concatenate([keys, new]), kind="stable")  # two sorted runs: a linear merge
    raise RuntimeError(f"synthetic generator did not converge in {MAX_ROUNDS} rounds")  # pragma: no cover


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Ascending indices of the first occurrence of each distinct value of int64 [n] `keys` (>= 0)."""
    n = keys.size
    if n == 0:
        return np.zeros(0, np.int64)
    if int(keys.max()) < (2**62) // n:  # sort values key * n + index: far faster than a stable argsort
        packed = np.sort(keys * n + np.arange(n))
        key, index = np.divmod(packed, n)
    else:
        order = np.argsort(keys, kind="stable")
        key, index = keys[order], order
    return np.sort(index[np.concatenate([[True], key[1:] != key[:-1]])])
