"""Negative samplers: uniform candidates excluding training items, DNS and MNS selection.

Candidates are counter-based draws (distrec.nn.counters) keyed by (seed, purpose, epoch) and the
sample's global position in the epoch, so they do not depend on the rank or the world size; hard
samplers score them with the current embeddings and keep the
highest-scoring one, at full dimension (DNS) or per matryoshka level on that level's prefix
(MNS). Imports: numpy, torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distrec.nn import counters

_FIB = np.uint64(0x9E3779B97F4A7C15)


class CandidateSampler:
    """Uniform item ids that are not among the user's training items.

    `train_keys` are the sorted keys user * num_items + item of all training pairs: a
    membership test is one `searchsorted`, and colliding draws are redrawn, all vectorised.
    A one-hash bit filter over the keys (16 bits per key, ~3-5% false positives) answers most
    tests first: a binary search over 9M keys costs ~23 cache misses per draw, the filter one,
    which halves the sampler's share of a Books training step.
    """

    def __init__(self, train_users: np.ndarray, train_items: np.ndarray, num_items: int, max_rounds: int = 100):
        self.num_items = num_items
        # np.sort, not np.unique: the pairs are already duplicate-free, and np.unique is
        # two orders of magnitude slower at Amazon-Books scale.
        self.keys = np.sort(train_users.astype(np.int64) * num_items + train_items)
        self.max_rounds = max_rounds
        counts = np.bincount(train_users, minlength=int(train_users.max()) + 1 if len(train_users) else 0)
        full = np.flatnonzero(counts >= num_items)
        if len(full):
            raise ValueError(f"user {full[0]} has interacted with every item: no negative exists")
        self.log_bits = max(10, int(np.ceil(np.log2(max(len(self.keys), 1) * 16))))
        slots = self._slots(self.keys)
        self.bits = np.zeros(1 << (self.log_bits - 3), dtype=np.uint8)
        np.bitwise_or.at(self.bits, slots >> 3, np.left_shift(np.uint8(1), (slots & 7).astype(np.uint8)))

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        # Fibonacci hashing: the top bits of key * 2^64 / phi (wrapping uint64 product).
        return ((np.asarray(keys, dtype=np.int64).view(np.uint64) * _FIB) >> np.uint64(64 - self.log_bits)).view(np.int64)

    def is_train(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.num_items + items
        slots = self._slots(keys)
        maybe = np.flatnonzero(self.bits[slots >> 3] & np.left_shift(np.uint8(1), (slots & 7).astype(np.uint8)))
        out = np.zeros(keys.shape, dtype=bool)
        if len(maybe) and len(self.keys):
            sub = keys[maybe]
            out[maybe] = self.keys[np.minimum(np.searchsorted(self.keys, sub), len(self.keys) - 1)] == sub
        return out

    def draw(self, stream: np.uint64, positions: np.ndarray, users: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """`users [B]` at global `positions [B]` -> candidate ids `[B, *shape]`, none a training
        item of its user. Candidate j of the sample at position p is draw p * C + j of `stream`
        (C candidates per sample); a rejected one is redrawn from the round's own stream."""
        users = users.astype(np.int64)
        per = int(np.prod(shape))
        slots = (np.asarray(positions, np.int64)[:, None] * per + np.arange(per)).reshape(len(users), *shape)
        out = counters.integers(stream, slots, self.num_items)
        owner = np.broadcast_to(users.reshape(-1, *([1] * len(shape))), out.shape)
        flat_out, flat_owner, flat_slots = out.reshape(-1), owner.reshape(-1), slots.reshape(-1)
        bad = np.flatnonzero(self.is_train(flat_owner, flat_out))
        for round_ in range(1, self.max_rounds + 1):
            if len(bad) == 0:
                return out
            flat_out[bad] = counters.integers(counters.key(stream, round_), flat_slots[bad], self.num_items)
            bad = bad[self.is_train(flat_owner[bad], flat_out[bad])]
        raise RuntimeError(f"could not draw negatives for {len(bad)} candidates in {self.max_rounds} rounds")


class DeviceCandidateSampler:
    """`CandidateSampler.draw` with torch ops on the training device: the same keys, bit filter
    and counter-based draws, so its candidates equal the numpy sampler's id for id, without a
    host step or a host-to-device copy per batch (tests/unit/test_device_draws.py)."""

    def __init__(self, host: CandidateSampler, device: torch.device):
        self.num_items, self.max_rounds, self.log_bits = host.num_items, host.max_rounds, host.log_bits
        self.keys = torch.from_numpy(host.keys).to(device)
        self.bits = torch.from_numpy(host.bits).to(device)
        self.device = device

    def _slots(self, keys: torch.Tensor) -> torch.Tensor:
        shift = 64 - self.log_bits
        return ((keys * counters.as_int64(int(_FIB))) >> shift) & ((1 << self.log_bits) - 1)

    def is_train(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        keys = users * self.num_items + items
        slots = self._slots(keys)
        maybe = ((self.bits[slots >> 3].to(torch.int64) >> (slots & 7)) & 1).bool()
        out = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
        where = maybe.nonzero().squeeze(1)
        if where.numel() and self.keys.numel():
            sub = keys[where]
            found = self.keys[torch.searchsorted(self.keys, sub).clamp_(max=self.keys.numel() - 1)] == sub
            out[where] = found
        return out

    def draw(self, stream: np.uint64, positions: torch.Tensor, users: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """As `CandidateSampler.draw`, for tensors on this sampler's device."""
        users = users.to(torch.int64)
        per = int(np.prod(shape))
        slots = (positions.to(torch.int64)[:, None] * per + torch.arange(per, device=users.device)).reshape(len(users), *shape)
        out = counters.torch_integers(stream, slots, self.num_items)
        owner = users.reshape(-1, *([1] * len(shape))).expand(out.shape)
        flat_out, flat_owner, flat_slots = out.view(-1), owner.reshape(-1), slots.reshape(-1)
        bad = self.is_train(flat_owner, flat_out).nonzero().squeeze(1)
        for round_ in range(1, self.max_rounds + 1):
            if bad.numel() == 0:
                return out
            flat_out[bad] = counters.torch_integers(counters.key(stream, round_), flat_slots[bad], self.num_items)
            bad = bad[self.is_train(flat_owner[bad], flat_out[bad])]
        raise RuntimeError(f"could not draw negatives for {bad.numel()} candidates in {self.max_rounds} rounds")


def shared_negatives(stream: np.uint64, first: int, local: int, num_items: int, num: int) -> np.ndarray:
    """Negative ids `[N]` shared by a rank's slice of a batch: `num` uniform draws with
    replacement, or every item (in id order) when `num` reaches the catalogue size, which
    makes the softmax exact. The slice of `local` samples starting at global position
    `first` draws counters [first * s, first * s + num), s = ceil(num / local): with the
    default num = 10 x local batch, the ranks' draws together are the same whatever the
    world size."""
    if num >= num_items:
        return np.arange(num_items, dtype=np.int64)
    per = -(-num // max(local, 1))
    return counters.integers(stream, np.arange(first * per, first * per + num), num_items)


def device_shared_negatives(stream: np.uint64, first: int, local: int, num_items: int, num: int,
                            device: torch.device) -> torch.Tensor:
    """`shared_negatives` drawn on `device`: the same ids."""
    if num >= num_items:
        return torch.arange(num_items, dtype=torch.int64, device=device)
    per = -(-num // max(local, 1))
    return counters.torch_integers(stream, torch.arange(first * per, first * per + num, device=device), num_items)


def candidate_shape(sampler: str, num_negs: int, num_levels: int, mns_pool: str) -> tuple[int, int]:
    """(groups, per group) of candidates per sample; MNS 'per_level' draws one block per level."""
    if sampler == "uniform":
        return (1, 1)
    if sampler == "mns" and mns_pool == "per_level":
        return (num_levels, num_negs)
    return (1, num_negs)


@torch.no_grad()
def select_hardest(
    u: torch.Tensor, rows: torch.Tensor, cand_idx: torch.Tensor, levels: tuple[int, ...], sampler: str
) -> torch.Tensor:
    """Index of the chosen candidate per sample (and level), into the N candidates of a group.

    u: [B, D] users; rows: [R, D] embeddings of the distinct candidate ids; cand_idx: [B, G, N]
    row of each candidate in `rows`. Returns [B, J]:
    uniform: the single candidate (J = 1). dns: argmax of the full-dimension score (J = 1).
    mns: for level l, argmax of <u[:d_l], c[:d_l]> over group l (or the only group when the
    pool is shared), so J = L negatives that are hard at each level's granularity. Only the
    first d_l columns are gathered for level l.
    """
    b, groups, n = cand_idx.shape
    if sampler == "uniform":
        return torch.zeros((b, 1), dtype=torch.long, device=u.device)
    if sampler == "dns":
        return torch.einsum("bd,bnd->bn", u, rows[cand_idx[:, 0]]).argmax(dim=1, keepdim=True)
    picks = []
    for l, d in enumerate(levels):
        block = rows[:, :d][cand_idx[:, l if groups > 1 else 0]]  # [B, N, d]
        picks.append(torch.einsum("bd,bnd->bn", u[:, :d], block).argmax(dim=1))
    return torch.stack(picks, dim=1)


def scored_levels(sampler: str, levels: tuple[int, ...], groups: int) -> list[tuple[int, int]]:
    """(prefix width, candidate group) of every hard negative a step picks: MNS one per level
    (from that level's group, or the shared one), DNS one at full dimension."""
    if sampler == "mns":
        return [(d, l if groups > 1 else 0) for l, d in enumerate(levels)]
    return [(levels[-1], 0)]


@torch.no_grad()
def candidate_scores(u: torch.Tensor, cands: torch.Tensor, shards: list, picks: list[tuple[int, int]]) -> torch.Tensor:
    """This rank's share of every candidate's score, `[J, B, N]` for `picks` = scored_levels(...).

    u: `[B, D]` queries; cands: `[B, G, N]` item ids; shards: the item table's blocks held here
    (`embeddings.LocalShard`: rows from `first_row`, columns from `first_col`, a live view of
    the weights). Entry `[j, b, n]` is the part of <u[b, :d_j], item[:d_j]> that this rank's
    blocks hold, 0 elsewhere, so the sum over ranks is the score (every row is held once per
    column). The rows are read where they live, in place and only up to the prefix a level
    needs (a d = 4 prefix is one cache line of a 64-float row), instead of looking up every
    candidate's full row through the sharded table: ~6x less time per step on a Books table.
    """
    b, _, n = cands.shape
    out = u.new_zeros((len(picks), b, n))
    for shard in shards:
        num_rows, num_cols = shard.weight.shape
        c0 = shard.first_col
        for g in sorted({g for _, g in picks}):
            width = min(max(d for d, gg in picks if gg == g), c0 + num_cols) - c0  # columns of this block used
            if width <= 0:
                continue
            ids = cands[:, g].reshape(-1) - shard.first_row
            held = (ids >= 0) & (ids < num_rows)
            every = bool(held.all())
            where = None if every else held.nonzero().squeeze(1)
            rows = F.embedding(ids if every else ids[where], shard.weight[:, :width])  # [B*N or M, width]
            for j, (d, gg) in enumerate(picks):
                cols = min(d, c0 + num_cols) - c0
                if gg != g or cols <= 0:
                    continue
                if every:
                    out[j] += torch.bmm(rows.view(b, n, width)[..., :cols], u[:, c0 : c0 + cols, None]).view(b, n)
                else:
                    part = (rows[:, :cols] * u[where // n, c0 : c0 + cols]).sum(1)
                    out[j].view(-1).index_add_(0, where, part)
    return out
