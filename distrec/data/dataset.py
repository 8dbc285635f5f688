"""InteractionData (train / valid / test over contiguous ids), load_dataset, the splits and the dataset cache.

load_dataset reads (ingest.READERS, by data.format) or generates (synthetic.py) raw pairs, maps
raw ids to contiguous ids, drops duplicates, splits per user (train/test as given when data.test
names a file, else a per-user random split; validation out of train for every format) and
optionally writes the dataset cache (write_cache / read_cache: the split as Parquet in
<run_dir>/data, not to be confused with ingest.read_parquet, an input format). Every pair
dropped on the way is counted in `report`, and the counts add up: pairs_read - sum(filtered) =
sum(splits). All steps work on sorted int64 keys `user * num_items + item`, with no per-pair
Python loop.

Raw ids are int64, or strings where the input column holds strings (`user_raw` / `item_raw` are
then numpy unicode arrays, sorted, stored as string columns in users.parquet / items.parquet).
Imports: numpy, pyarrow, config, ingest, synthetic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distrec.config import DataConfig
from distrec.data import ingest, synthetic
from distrec.data.ingest import DataError

SPLITS = ("train", "valid", "test")  # their int8 codes in interactions.parquet are 0, 1, 2
# Written in this order; report.json goes last because its presence marks a complete dataset.
DATASET_FILES = ("interactions.parquet", "users.parquet", "items.parquet", "report.json")


@dataclasses.dataclass(frozen=True)
class InteractionData:
    """Interactions split three ways. Arrays are int64, read-only, sorted by (user, item), duplicate free."""

    num_users: int
    num_items: int
    train_users: np.ndarray  # [N_train] contiguous ids 0..num_users-1
    train_items: np.ndarray  # [N_train] contiguous ids 0..num_items-1
    valid_users: np.ndarray  # [N_valid]
    valid_items: np.ndarray  # [N_valid]
    test_users: np.ndarray  # [N_test]
    test_items: np.ndarray  # [N_test]
    user_raw: np.ndarray  # [num_users] raw id (int64, or str) of each contiguous user id (ascending)
    item_raw: np.ndarray  # [num_items]
    report: dict  # JSON-ready counts: lines read, pairs filtered and why, split sizes, source

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.startswith("num_"):  # counts stay Python ints (a 0-d array breaks json.dump)
                object.__setattr__(self, field.name, int(value))
            elif isinstance(value, np.ndarray) or field.name.endswith(("_users", "_items", "_raw")):
                # Our own copy, so freezing it hurts no caller; raw ids may be strings.
                array = raw_ids(value) if field.name.endswith("_raw") else np.array(value, dtype=np.int64, copy=True)
                array.flags.writeable = False
                object.__setattr__(self, field.name, array)
        for split in SPLITS:
            users, items = self.pairs(split)
            if users.shape != items.shape or users.ndim != 1:
                raise ValueError(f"{split}_users and {split}_items must be 1-D of equal length")
        if self.user_raw.shape != (self.num_users,) or self.item_raw.shape != (self.num_items,):
            raise ValueError("user_raw / item_raw must hold num_users / num_items raw ids")

    def pairs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, items) of `split`, int64 [N_split] each."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return getattr(self, f"{split}_users"), getattr(self, f"{split}_items")

    def csr(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(indptr int64 [num_users+1], items int64 [N_split]): user u's items are items[indptr[u]:indptr[u+1]]."""
        users, items = self.pairs(split)
        indptr = np.zeros(self.num_users + 1, np.int64)
        np.cumsum(np.bincount(users, minlength=self.num_users), out=indptr[1:])
        return indptr, items

    def merge_valid_into_train(self) -> "InteractionData":
        """The same data with the validation pairs moved back into train (for a final refit)."""
        keys = np.sort(np.concatenate([self.train_users * self.num_items + self.train_items,
                                       self.valid_users * self.num_items + self.valid_items]))
        empty = np.zeros(0, np.int64)
        report = {**self.report, "valid_merged_into_train": int(self.valid_users.size)}
        return dataclasses.replace(self, train_users=keys // self.num_items, train_items=keys % self.num_items,
                                   valid_users=empty, valid_items=empty, report=report)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InteractionData):
            return NotImplemented
        return all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            for a, b in ((getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self))
        )


def raw_ids(value) -> np.ndarray:
    """A fresh array of raw ids: str (unicode, never object: np.load needs no pickle) or int64."""
    array = np.asarray(value)
    if array.dtype.kind in "OUS":
        return np.array(array, dtype=str, copy=True)
    return np.array(array, dtype=np.int64, copy=True)


def load_dataset(
    cfg: DataConfig, out_dir: str | Path | None = None, *, drop_cold_test_users: bool = False
) -> InteractionData:
    """Read or generate the interactions that `cfg` names, split them, and write them to `out_dir` if given.

    drop_cold_test_users (a given test file only): drop, with a count in the report, test users
    that have no training items instead of raising DataError (amazon-phones has 4 such users).
    """
    if cfg.format == "synthetic":
        data = _from_synthetic(cfg)
    elif cfg.test is not None:
        data = _from_train_test(cfg, drop_cold_test_users)
    else:
        data = _from_one_file(cfg)
    if out_dir is not None:
        write_cache(data, out_dir)
    return data


def _from_train_test(cfg: DataConfig, drop_cold_test_users: bool) -> InteractionData:
    """data.train and data.test as given (user_lines always; other formats when data.test is set)."""
    train, train_low = ingest.filter_rating(ingest.read(cfg, "data.train"), cfg, str(cfg.train))
    test, test_low = ingest.filter_rating(ingest.read(cfg, "data.test"), cfg, str(cfg.test))
    train, test = ingest.share_names(train, test)
    cold = ~_isin_sorted(test.users, unique(train.users))
    num_cold_users = int(unique(test.users[cold]).size)
    if cold.any() and not drop_cold_test_users:
        at = int(np.argmax(cold))
        where = f"at {cfg.test}:{test.lines[at]}" if test.lines is not None else f"in {cfg.test}"
        raise DataError(
            f"user {test.raw_users(at)} {where} has no training items "
            f"({num_cold_users} test users, {int(cold.sum())} test pairs like this): no model can rank for a user "
            f"it never trained on. Remove those test lines, or set data.cold_test_users=drop (load with "
            f"drop_cold_test_users=True) to drop them with a count in the report"
        )
    test_users, test_items = test.users[~cold], test.items[~cold]
    (train_u, test_u), user_raw = _contiguous([train.users, test_users], train.user_names)
    (train_i, test_i), item_raw = _contiguous([train.items, test_items], train.item_names)
    num_items = item_raw.size
    train_keys, train_dups = _dedup(train_u * num_items + train_i)
    test_keys, test_dups = _dedup(test_u * num_items + test_i)
    in_train = _isin_sorted(test_keys, train_keys)
    filtered = {
        "duplicate_train": train_dups,
        "duplicate_test": test_dups,
        "test_in_train": int(in_train.sum()),  # masked at evaluation, so they could never be hit
        "cold_test": int(cold.sum()),
    }
    if cfg.min_rating is not None:
        filtered.update(rating_below_min_train=train_low, rating_below_min_test=test_low)
    report = {
        "source": {"format": cfg.format, "train": str(cfg.train), "test": str(cfg.test)},
        "lines": {"train": train.stats, "test": test.stats},
        "pairs_read": int(train.users.size + test.users.size + train_low + test_low),
        "filtered": filtered,
        "cold_test_users": num_cold_users,
    }
    _note_rating(report, cfg)
    return _finish(cfg, report, train_keys, test_keys[~in_train], user_raw, item_raw)


def _from_one_file(cfg: DataConfig) -> InteractionData:
    """One pool of pairs (a log, a Parquet data set, .inter files), split per user into train and test."""
    pairs, low = ingest.filter_rating(ingest.read(cfg, "data.train"), cfg, str(cfg.train))
    if cfg.format == "log":  # the report keys of a log, as before the other formats came
        source, lines = {"format": "log", "file": str(cfg.train)}, {"log": pairs.stats}
    else:
        source, lines = {"format": cfg.format, "file": str(cfg.train)}, {"train": pairs.stats}
    data = _from_pairs(cfg, source, lines, pairs.users, pairs.items, pairs.user_names, pairs.item_names,
                       {"rating_below_min": low} if cfg.min_rating is not None else {})
    _note_rating(data.report, cfg)
    return data


def _note_rating(report: dict, cfg: DataConfig) -> None:
    report["min_rating"] = cfg.min_rating  # None: ratings were neither read nor used


def _from_synthetic(cfg: DataConfig) -> InteractionData:
    users, items = synthetic.generate(cfg.synthetic)
    sizes = dataclasses.asdict(synthetic.resolve(cfg.synthetic))
    source = {"format": "synthetic", "preset": cfg.synthetic.preset, **sizes}
    return _from_pairs(cfg, source, {}, users, items)


def _from_pairs(
    cfg: DataConfig, source: dict, lines: dict, users: np.ndarray, items: np.ndarray,
    user_names: np.ndarray | None = None, item_names: np.ndarray | None = None, filtered: dict | None = None,
) -> InteractionData:
    """One pool of pairs, split per user into train and test; `filtered` counts pairs dropped before."""
    (users,), user_raw = _contiguous([users], user_names)
    (items,), item_raw = _contiguous([items], item_names)
    keys, dups = _dedup(users * item_raw.size + items)
    is_test = _holdout(keys, item_raw.size, user_raw.size, cfg.test_fraction, np.random.default_rng([cfg.seed, 1]))
    filtered = dict(filtered or {})
    report = {
        "source": source,
        "lines": lines,
        "pairs_read": int(users.size) + sum(filtered.values()),
        "filtered": {"duplicate": dups, **filtered},
        "test_fraction": cfg.test_fraction,
    }
    return _finish(cfg, report, keys[~is_test], keys[is_test], user_raw, item_raw)


def _finish(
    cfg: DataConfig,
    report: dict,
    train_keys: np.ndarray,
    test_keys: np.ndarray,
    user_raw: np.ndarray,
    item_raw: np.ndarray,
) -> InteractionData:
    """Draw validation out of train and assemble; keys are sorted unique `user * num_items + item`."""
    num_users, num_items = user_raw.size, item_raw.size
    is_valid = _holdout(train_keys, num_items, num_users, cfg.valid_fraction, np.random.default_rng([cfg.seed, 2]))
    split_keys = {"train": train_keys[~is_valid], "valid": train_keys[is_valid], "test": test_keys}
    trained_items = np.count_nonzero(np.bincount(split_keys["train"] % num_items, minlength=num_items))
    report.update(
        splits={name: int(k.size) for name, k in split_keys.items()},
        num_users=int(num_users),
        num_items=int(num_items),
        # Kept, but a model cannot learn them: items seen in valid / test only.
        items_without_train=int(num_items - trained_items),
        valid_fraction=cfg.valid_fraction,
        seed=cfg.seed,
    )
    arrays = {}
    for name, keys in split_keys.items():
        arrays[f"{name}_users"], arrays[f"{name}_items"] = np.divmod(keys, num_items)
    return InteractionData(
        num_users=int(num_users),
        num_items=int(num_items),
        user_raw=user_raw,
        item_raw=item_raw,
        report=report,
        **arrays,
    )


def unique(x: np.ndarray) -> np.ndarray:
    """Sorted unique values of int64 [n] `x`. np.unique is ~100x slower in numpy 2.4 (9 s on 9M ids)."""
    y = np.sort(x)
    return y[np.concatenate([[True], y[1:] != y[:-1]])] if y.size else y


def _contiguous(raw: list[np.ndarray], names: np.ndarray | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Map raw ids to 0..K-1 by their sorted unique values over all arrays: (mapped arrays, raw ids [K]).

    With `names` (sorted string ids), `raw` holds indices into it, so index order is string order,
    and the raw ids returned are the names used.
    """
    values = np.concatenate(raw)
    low, high = int(values.min()), int(values.max())
    if high - low <= 4 * values.size + 1024:  # dense ids, the usual case: a lookup table, no sort
        present = np.zeros(high - low + 1, bool)
        present[values - low] = True
        new_id = np.cumsum(present) - 1
        mapped, ids = [new_id[r - low] for r in raw], np.flatnonzero(present) + low
    else:
        ids = unique(values)
        mapped = [np.searchsorted(ids, r) for r in raw]
    return mapped, ids if names is None else names[ids]


def _dedup(keys: np.ndarray) -> tuple[np.ndarray, int]:
    kept = unique(keys)
    return kept, int(keys.size - kept.size)


def _isin_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """bool [len(keys)]: keys[j] occurs in `sorted_keys` (ascending)."""
    if sorted_keys.size == 0:
        return np.zeros(keys.size, bool)
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


def _holdout(
    keys: np.ndarray, num_items: int, num_users: int, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """bool [len(keys)]: a random share `fraction` of each user's pairs, never the user's last one.

    A user with n pairs holds out floor(fraction * n + U), U uniform on [0, 1): stochastic rounding,
    so the expected count is exactly fraction * n even for users with few pairs (capped at n - 1).
    `keys` are sorted, so each user's pairs are one run.
    """
    users = keys // num_items
    count = np.bincount(users, minlength=num_users)
    take = np.minimum(np.floor(fraction * count + rng.random(num_users)).astype(np.int64), np.maximum(count - 1, 0))
    if num_users < 2**31:  # one integer sort on (user, random 32 bits): ~10x faster than lexsort
        order = np.argsort((users << 32) | rng.integers(0, 2**32, keys.size))
    else:
        order = np.lexsort((rng.random(keys.size), users))
    rank = np.empty(keys.size, np.int64)
    rank[order] = np.arange(keys.size) - (np.cumsum(count) - count)[users[order]]
    return rank < take[users]


def write_cache(data: InteractionData, out_dir: str | Path) -> Path:
    """Write the dataset to `out_dir` (see DATASET_FILES); files are renamed into place only once all are written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = {name: out / f".{name}{tag}" for name in DATASET_FILES}
    try:
        codes = [np.full(data.pairs(s)[0].size, code, np.int8) for code, s in enumerate(SPLITS)]
        interactions = pa.table({
            "user": np.concatenate([data.pairs(s)[0] for s in SPLITS]),
            "item": np.concatenate([data.pairs(s)[1] for s in SPLITS]),
            "split": np.concatenate(codes),
        })
        pq.write_table(interactions, temp["interactions.parquet"])
        pq.write_table(pa.table({"id": np.arange(data.num_users), "raw": data.user_raw}), temp["users.parquet"])
        pq.write_table(pa.table({"id": np.arange(data.num_items), "raw": data.item_raw}), temp["items.parquet"])
        with open(temp["report.json"], "w") as f:
            json.dump(data.report, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        # The old marker goes first: a crash among the renames leaves a dataset that reads as incomplete.
        (out / "report.json").unlink(missing_ok=True)
        for name in DATASET_FILES:
            os.replace(temp[name], out / name)
    finally:
        for path in temp.values():
            path.unlink(missing_ok=True)
    return out


def read_cache(path: str | Path) -> InteractionData:
    """Read a dataset written by load_dataset / write_cache."""
    path = Path(path)
    if not (path / "report.json").is_file():
        raise DataError(f"{path}: no report.json, so not a complete distrec dataset (missing, or its write was "
                        f"interrupted); rebuild it with load_dataset(cfg, out_dir={str(path)!r})")
    report = json.loads((path / "report.json").read_text())
    table = pq.read_table(path / "interactions.parquet")
    users, items = table.column("user").to_numpy(), table.column("item").to_numpy()
    code = table.column("split").to_numpy()
    # String raw ids come back as an object array; InteractionData makes them unicode again.
    user_raw = pq.read_table(path / "users.parquet").column("raw").to_numpy(zero_copy_only=False)
    item_raw = pq.read_table(path / "items.parquet").column("raw").to_numpy(zero_copy_only=False)
    if users.size and (users.max() >= user_raw.size or items.max() >= item_raw.size or code.max() > 2):
        raise DataError(f"{path / 'interactions.parquet'}: ids or split codes out of range; rebuild the dataset")
    arrays = {}
    for c, name in enumerate(SPLITS):
        arrays[f"{name}_users"], arrays[f"{name}_items"] = users[code == c], items[code == c]
    return InteractionData(
        num_users=int(user_raw.size), num_items=int(item_raw.size), user_raw=user_raw, item_raw=item_raw,
        report=report, **arrays,
    )
