"""Per-user behaviour sequences for multi-interest retrieval (REMI / ComiRec protocol, METHODS.md §3, §5).

load_sequences reads `data.train` with the reader of data.format (a log, a Parquet data set or
RecBole .inter files: ingest.READERS), orders each user's interactions in time (file order, or
a stable sort on the timestamp column: see data.sequence.time_ordered), optionally filters by
data.min_rating and applies a k-core filter, drops users too short to give a (history, target)
pair, maps ids to contiguous ones and splits USERS 8:1:1 with a fixed seed. The sequences are
one CSR array pair (seq_indptr, seq_items). Raw ids are int64, or str where the input has string
ids (`user_raw` / `item_raw` then hold unicode strings).

- Training: every position p >= min_train_position of a training user's sequence is a sample
  (history = the items before p, target = the item at p): `SequenceData.train_samples`.
- Validation / test users (ComiRec): the first int(history_fraction * len) items are the history,
  the rest are the targets: `SequenceData.eval_split`.
- `history_windows` builds padded [B, max_len] id / mask matrices for any (user, end) batch.

Every interaction dropped on the way is counted in `report`. Everything is vectorised: no per-user
or per-sample Python loop. Imports: numpy, config, ingest, dataset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from distrec.config import ConfigError, DataConfig
from distrec.data import csr, ingest
from distrec.data.csr import ranges
from distrec.data.dataset import MIN_TEST_USERS, raw_ids, require_pairs, unique
from distrec.data.ingest import DataError

CONFIG_KEY = "data.sequence"  # prefix of the sequence keys in messages
EVAL_SPLITS = ("valid", "test")
ALIGNS = ("left", "right")
MIN_LENGTH = 2  # one history item and one target


@dataclasses.dataclass(frozen=True)
class SequenceData:
    """Time-ordered sequences of every kept user, and the user split. Arrays are int64 and read-only."""

    num_users: int
    num_items: int
    seq_indptr: np.ndarray  # [num_users+1]: user u's items are seq_items[seq_indptr[u]:seq_indptr[u+1]]
    seq_items: np.ndarray  # [N] contiguous item ids 0..num_items-1, each user's run in time order
    train_users: np.ndarray  # [U_train] ascending; the three splits are disjoint and cover all users
    valid_users: np.ndarray  # [U_valid]
    test_users: np.ndarray  # [U_test]
    user_raw: np.ndarray  # [num_users] raw id (int64, or str) of each contiguous user id (ascending)
    item_raw: np.ndarray  # [num_items]
    report: dict  # JSON-ready counts: lines read, filters, split sizes, samples
    min_train_position: int = 1
    history_fraction: float = 0.8

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                # Our own copy, so freezing it hurts no caller; raw ids may be strings.
                array = raw_ids(value) if field.name.endswith("_raw") else np.array(value, dtype=np.int64, copy=True)
                array.flags.writeable = False
                object.__setattr__(self, field.name, array)
        if self.seq_indptr.shape != (self.num_users + 1,) or self.seq_indptr[0] != 0 \
                or self.seq_indptr[-1] != self.seq_items.size or np.any(np.diff(self.seq_indptr) < 0):
            raise ValueError("seq_indptr must be a non-decreasing [num_users+1] offset array from 0 to len(seq_items)")
        if self.user_raw.shape != (self.num_users,) or self.item_raw.shape != (self.num_items,):
            raise ValueError("user_raw / item_raw must hold num_users / num_items raw ids")
        if self.seq_items.size and (self.seq_items.min() < 0 or self.seq_items.max() >= self.num_items):
            raise ValueError("seq_items must be contiguous item ids in [0, num_items)")
        members = np.concatenate([self.train_users, self.valid_users, self.test_users])
        if (members.size and (members.min() < 0 or members.max() >= self.num_users)) or \
                not np.all(np.bincount(members, minlength=self.num_users) == 1):
            raise ValueError("train_users, valid_users and test_users must be disjoint and cover 0..num_users-1")

    @property
    def lengths(self) -> np.ndarray:
        """int64 [num_users]: sequence length of each user."""
        return np.diff(self.seq_indptr)

    def items_at(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """int64 [B]: the item at `positions[b]` of user `users[b]`'s sequence (e.g. training targets)."""
        return self.seq_items[self.seq_indptr[users] + positions]

    def train_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """(user int64 [S], target position int64 [S]): every position >= min_train_position of every training user.

        A sample's history is the items before its position: history_windows(data, user, position, n).
        Users ordered as train_users, positions ascending within a user.
        """
        users = self.train_users
        count = np.maximum(self.lengths[users] - self.min_train_position, 0)
        return np.repeat(users, count), ranges(count) + self.min_train_position

    def history_ends(self, users: np.ndarray) -> np.ndarray:
        """int64 [U]: where the targets of evaluation users start: max(1, int(history_fraction * len)).

        At least one history item: a user of length 2..4 would otherwise get an empty history with
        history_fraction < 0.5 (and length 1 cannot occur: such users are dropped at load). At
        least one target too, since int(f * len) < len for f < 1.
        """
        lengths = self.lengths[users]
        return np.maximum(np.floor(self.history_fraction * lengths).astype(np.int64), 1)

    def eval_split(self, split: str) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """(users [U], history_end [U], targets (indptr [U+1], items [T])) of "valid" or "test".

        User users[j]'s history is its sequence before history_end[j] (windowed by history_windows),
        its targets are items[indptr[j]:indptr[j+1]], the rest of its sequence in time order.
        """
        if split not in EVAL_SPLITS:
            raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
        users = getattr(self, f"{split}_users")
        ends = self.history_ends(users)
        return users, ends, self.segments(users, ends, self.lengths[users])

    def segments(self, users: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR over rows j of seq[starts[j]:ends[j]] of user users[j]: (indptr [U+1], items), vectorised."""
        return csr.gather(self.seq_items, self.seq_indptr[users] + starts, ends - starts)


def history_windows(
    data: SequenceData, users: np.ndarray, ends: np.ndarray, max_len: int, *, align: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [B, max_len], mask bool [B, max_len]): the last <= max_len items before `ends[b]` of `users[b]`.

    Row b holds seq[max(0, e - max_len) : e] of user u = users[b], e = ends[b], in time order.
    align="left" (default, as the REMI / ComiRec reference): the window fills columns 0..k-1 and
    padding follows, so column 0 is the oldest item shown. align="right": padding first, the most
    recent item always in the last column. Padding has id 0 (a valid row of the item table, so a
    lookup needs no special case) and mask False: consumers must use the mask, since 0 is also a
    real item. ends must lie in [1, len(u)]: an empty history has nothing to attend to.
    """
    if align not in ALIGNS:
        raise ValueError(f"align must be one of {', '.join(ALIGNS)}, got {align!r}")
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    users = np.asarray(users, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if users.ndim != 1 or users.shape != ends.shape:
        raise ValueError(f"users and ends must be 1-D of equal length, got shapes {users.shape} and {ends.shape}")
    bad = np.flatnonzero((users < 0) | (users >= data.num_users))
    if bad.size:
        raise ValueError(f"users[{bad[0]}] = {users[bad[0]]} is not a user id in [0, {data.num_users})")
    lengths = data.lengths[users]
    bad = np.flatnonzero((ends < 1) | (ends > lengths))
    if bad.size:
        b = bad[0]
        raise ValueError(f"ends[{b}] = {ends[b]} is outside [1, {lengths[b]}], the sequence of user {users[b]}")
    return csr_windows(data.seq_indptr, data.seq_items, users, ends, max_len, align)


def csr_windows(indptr: np.ndarray, items: np.ndarray, rows: np.ndarray, ends: np.ndarray, max_len: int,
                align: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """`history_windows` over any CSR of sequences (row r: items[indptr[r]:indptr[r+1]]), unchecked:
    the last <= max_len items before `ends[b]` of row `rows[b]`. Serving windows its histories
    through this too, so a served user sees exactly what evaluation shows the model."""
    count = np.minimum(ends, max_len)  # [B] real items per row
    column = np.arange(max_len)
    if align == "left":
        index = (indptr[rows] + ends - count)[:, None] + column
        mask = column < count[:, None]
    else:
        index = (indptr[rows] + ends - max_len)[:, None] + column
        mask = column >= (max_len - count)[:, None]
    ids = items[np.where(mask, index, 0)]  # padded cells read item 0's slot, then become 0
    ids[~mask] = 0
    return ids, mask


def load_sequences(data_cfg: DataConfig, *, warn: Callable[[str], None] | None = None) -> SequenceData:
    """Read `data.train` and build time-ordered sequences and the user split.

    Data that cannot give meaningful metrics (no test user, no validation user though
    data.sequence.split gives them a share, one item) is a DataError; what only weakens them is
    listed in report["warnings"] and passed to `warn`, one line each.
    """
    key, cfg, path = CONFIG_KEY, data_cfg.sequence, data_cfg.train
    if path is None:
        raise ConfigError(f"data.train must name the interactions (format={data_cfg.format})")
    if data_cfg.format not in ingest.READERS or data_cfg.format == "user_lines":
        raise ConfigError(f"data.format={data_cfg.format} has no time order; sequences read a log, parquet or recbole")
    sort_by_time = cfg.time_ordered is False or (cfg.time_ordered is None and data_cfg.format != "log")
    log, low = ingest.filter_rating(ingest.read(data_cfg, "data.train", timestamps=sort_by_time), data_cfg, str(path))
    require_pairs(log, low, data_cfg, "data.train")
    if cfg.time_ordered is False and log.timestamps is None:
        _no_timestamps(path, log, data_cfg, f"{key}.time_ordered")
    times = log.timestamps if sort_by_time else None  # None also where time_ordered=None found no timestamp column
    users, items = log.users, log.items

    (user_ids,), user_raw = ingest.contiguous([users], log.user_names)
    (item_ids,), item_raw = ingest.contiguous([items], log.item_names)
    report = {
        "source": {"format": data_cfg.format, "path": str(path), "time_ordered": times is None},
        "lines": log.stats,
        "interactions_read": int(users.size + low),
        "users_read": int(user_raw.size),
        "items_read": int(item_raw.size),
        # Kept: a sequence may return to an item. Counted, since MF-style data would drop them.
        "repeat_interactions": int(users.size - unique(user_ids * item_raw.size + item_ids).size),
    }
    if data_cfg.min_rating is not None:
        report["rating_below_min"] = low
    keep = np.ones(users.size, bool)
    if cfg.k_core:
        keep, report["k_core"] = _k_core(user_ids, item_ids, user_raw.size, item_raw.size, cfg.k_core,
                                         cfg.k_core_passes)
        if not keep.any():
            raise DataError(
                f"{path}: no interactions left after {key}.k_core={cfg.k_core} "
                f"({report['k_core']['passes_run']} passes, from {users.size} interactions); lower {key}.k_core"
            )
    per_user = np.bincount(user_ids[keep], minlength=user_raw.size)
    short = keep & (per_user[user_ids] < MIN_LENGTH)
    # Users with one interaction have no (history, target) pair: dropped, counted.
    report["short_users"] = {
        "min_length": MIN_LENGTH,
        "users": int(np.count_nonzero((per_user > 0) & (per_user < MIN_LENGTH))),
        "interactions": int(np.count_nonzero(short)),
    }
    keep &= ~short
    if not keep.any():
        raise DataError(f"{path}: no user has {MIN_LENGTH} or more interactions"
                        + (f" after {key}.k_core={cfg.k_core}" if cfg.k_core else ""))

    users, items = users[keep], items[keep]
    (user_ids,), user_raw = ingest.contiguous([users], log.user_names)
    (item_ids,), item_raw = ingest.contiguous([items], log.item_names)
    if times is None:
        order = np.argsort(user_ids, kind="stable")  # within a user: file order
    else:
        by_time = np.argsort(times[keep], kind="stable")  # ties: file order
        order = by_time[np.argsort(user_ids[by_time], kind="stable")]
    num_users, num_items = int(user_raw.size), int(item_raw.size)
    indptr = csr.indptr(np.bincount(user_ids, minlength=num_users))

    # Rounded cumulative shares, so the three sizes always add up to num_users.
    bounds = np.round(np.cumsum(cfg.split)[:2] * num_users).astype(np.int64)
    permutation = np.random.default_rng(data_cfg.seed).permutation(num_users)
    parts = np.split(permutation, bounds)
    if parts[0].size == 0:
        raise DataError(f"{path}: {key}.split={list(cfg.split)} leaves no training user among {num_users}")
    if num_items < 2:
        raise DataError(f"{path}: {num_items} item in all, so every ranking is trivial and every metric is 1; the "
                        f"data needs two or more items")
    for name, part, share in zip(EVAL_SPLITS, parts[1:], cfg.split[1:]):
        if part.size == 0 and (name == "test" or share > 0):
            why = (f"{key}.split gives test users no share" if share == 0 else
                   f"{share:g} of {num_users} users rounds to none")
            raise DataError(f"{path}: {key}.split={list(cfg.split)} leaves no {name} user ({why}), so there is "
                            f"nothing to {'test' if name == 'test' else 'validate'} on; "
                            + ("give test users a share" if share == 0 else "raise that share or use more users")
                            + ("" if name == "test" else f" (a valid share of 0 trains without validation)"))
    data = SequenceData(
        num_users=num_users,
        num_items=num_items,
        seq_indptr=indptr,
        seq_items=item_ids[order],
        train_users=np.sort(parts[0]),
        valid_users=np.sort(parts[1]),
        test_users=np.sort(parts[2]),
        user_raw=user_raw,
        item_raw=item_raw,
        report=report,
        min_train_position=cfg.min_train_position,
        history_fraction=cfg.history_fraction,
    )
    lengths = data.lengths
    report.update(
        num_users=num_users,
        num_items=num_items,
        num_interactions=int(indptr[-1]),
        length={"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
        splits={name: int(part.size) for name, part in zip(("train", "valid", "test"), parts)},
        samples={"train": int(data.train_samples()[0].size)},
        # Training users with no position >= min_train_position: in no training sample.
        train_users_without_samples=int(np.count_nonzero(lengths[data.train_users] <= cfg.min_train_position)),
        eval_history_clamped={},  # eval users whose int(f * len) was 0, given 1 history item
        max_len=cfg.max_len,
        min_train_position=cfg.min_train_position,
        history_fraction=cfg.history_fraction,
        split=list(cfg.split),
        seed=data_cfg.seed,
    )
    for split in EVAL_SPLITS:
        split_users, _, (target_indptr, _) = data.eval_split(split)
        report["samples"][f"{split}_targets"] = int(target_indptr[-1])
        raw_ends = np.floor(cfg.history_fraction * lengths[split_users])
        report["eval_history_clamped"][split] = int(np.count_nonzero(raw_ends < 1))
    report["warnings"] = _warnings(data, report)
    for line in report["warnings"] if warn is not None else ():
        warn(line)
    return data


LARGE_SHARE = 0.1  # a dropped or untestable group at least this large is warned about


def _warnings(data: SequenceData, report: dict) -> list[str]:
    """One line for each thing that weakens the metrics without making them meaningless."""
    warnings = []
    num_test = int(data.test_users.size)
    if num_test < MIN_TEST_USERS:
        warnings.append(f"only {num_test} test users (under {MIN_TEST_USERS}): one user moves the hit rate by "
                        f"{100 / num_test:.1f} points, so compare runs with care")
    short = report["short_users"]
    if short["users"] >= LARGE_SHARE * max(report["users_read"], 1):
        warnings.append(f"{short['users']} of {report['users_read']} users have fewer than {short['min_length']} "
                        f"interactions and were dropped: no (history, target) pair")
    without = report["train_users_without_samples"]
    if without >= LARGE_SHARE * max(data.train_users.size, 1):
        warnings.append(f"{without} of {data.train_users.size} training users have no position >= "
                        f"data.sequence.min_train_position={data.min_train_position}: in no training sample")
    users, ends, (indptr, targets) = data.eval_split("test")
    # A target that repeats an item of the user's history is masked at evaluation (eval.mask_history).
    history = data.segments(users, np.zeros_like(ends), ends)[1]
    row_of_history = np.repeat(np.arange(users.size), ends)
    row_of_target = np.repeat(np.arange(users.size), np.diff(indptr))
    seen = np.isin(row_of_target * data.num_items + targets, row_of_history * data.num_items + history)
    repeated = int(np.count_nonzero(seen))
    if targets.size and repeated >= LARGE_SHARE * targets.size:
        warnings.append(f"{repeated} of {targets.size} test targets ({repeated / targets.size:.1%}) repeat an item of "
                        f"the user's history: with eval.mask_history=true (the default) they can never be hit")
    return warnings


def _k_core(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, k: int, passes: int
) -> tuple[np.ndarray, dict]:
    """(keep bool [P], report): passes of "drop items with < k interactions, then users with < k".

    passes = 0 runs until a pass removes nothing. Each pass reports the users, items and
    interactions it removed (an item also disappears when all its users went). `stable` says
    whether the result is a true k-core (one pass may leave items below k).
    """
    keep = np.ones(users.size, bool)
    done = []
    while True:
        item_count = np.bincount(items[keep], minlength=num_items)
        user_count = np.bincount(users[keep], minlength=num_users)
        before = (np.count_nonzero(user_count), np.count_nonzero(item_count), int(keep.sum()))
        keep &= item_count[items] >= k
        keep &= np.bincount(users[keep], minlength=num_users)[users] >= k
        after = (np.count_nonzero(np.bincount(users[keep], minlength=num_users)),
                 np.count_nonzero(np.bincount(items[keep], minlength=num_items)), int(keep.sum()))
        done.append({"users": int(before[0] - after[0]), "items": int(before[1] - after[1]),
                     "interactions": int(before[2] - after[2])})
        if after[2] == before[2] or len(done) == passes:
            break
    item_count = np.bincount(items[keep], minlength=num_items)
    user_count = np.bincount(users[keep], minlength=num_users)
    stable = not (((item_count > 0) & (item_count < k)).any() or ((user_count > 0) & (user_count < k)).any())
    report = {"k": k, "passes": passes, "passes_run": len(done), "removed": done, "stable": bool(stable)}
    return keep, report


def _no_timestamps(path: str | Path, log: ingest.Pairs, data_cfg: DataConfig, key: str) -> None:
    """Raise: time_ordered=false sorts by a timestamp column that the input lacks."""
    if data_cfg.format == "log":
        columns = log.stats["columns"]
        raise DataError(
            f"{path}: {key}=false sorts by timestamp, but the log has {len(columns)} columns "
            f"({', '.join(columns)}), no timestamp (the 4th: user, item, rating, timestamp); set {key}=true "
            f"if file order is time order"
        )
    name = ingest.column_names(data_cfg, data_cfg.format)["timestamp"]
    raise DataError(f"{path}: {key}=false sorts by timestamp, but the input has no column {name!r} "
                    f"(data.columns.timestamp); name it, or set {key}=true if file order is time order")
