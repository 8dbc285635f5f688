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
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distrec.config import DataConfig
from distrec.data import csr, ingest, synthetic
from distrec.data.ingest import DataError, unique

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
        return csr.from_sorted_rows(users, items, self.num_users)

    def split_columns(self) -> dict[str, np.ndarray]:
        """Every pair once, as columns `user`, `item` and `split` (int8: 0 train, 1 validation,
        2 test): the layout of data/interactions.parquet and of the exports'."""
        return {"user": np.concatenate([self.pairs(s)[0] for s in SPLITS]),
                "item": np.concatenate([self.pairs(s)[1] for s in SPLITS]),
                "split": np.concatenate([np.full(self.pairs(s)[0].size, code, np.int8) for code, s in enumerate(SPLITS)])}

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
    cfg: DataConfig, out_dir: str | Path | None = None, *, drop_cold_test_users: bool = False,
    warn: Callable[[str], None] | None = None,
) -> InteractionData:
    """Read or generate the interactions that `cfg` names, split them, and write them to `out_dir` if given.

    drop_cold_test_users (a given test file only): drop, with a count in the report, test users
    that have no training items instead of raising DataError (amazon-phones has 4 such users).
    Data that cannot give meaningful metrics (no test pair, no validation pair though
    data.valid_fraction > 0, ...) is a DataError; what only weakens them is listed in
    report["warnings"] and passed to `warn` one line each (default: printed to stderr by the
    caller that writes `out_dir`, the one rank that writes report.json).
    """
    if cfg.format == "synthetic":
        data = _from_synthetic(cfg)
    elif cfg.test is not None:
        data = _from_train_test(cfg, drop_cold_test_users)
    else:
        data = _from_one_file(cfg)
    if warn is None and out_dir is not None:
        warn = print_warning
    for line in data.report["warnings"] if warn is not None else ():
        warn(line)
    if out_dir is not None:
        write_cache(data, out_dir)
    return data


def print_warning(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _from_train_test(cfg: DataConfig, drop_cold_test_users: bool) -> InteractionData:
    """data.train and data.test as given (user_lines always; other formats when data.test is set)."""
    train, train_low = ingest.filter_rating(ingest.read(cfg, "data.train"), cfg, str(cfg.train))
    test, test_low = ingest.filter_rating(ingest.read(cfg, "data.test"), cfg, str(cfg.test))
    require_pairs(train, train_low, cfg, "data.train")
    require_pairs(test, test_low, cfg, "data.test")
    train, test = ingest.share_names(train, test)
    cold = ~_isin_sorted(test.users, unique(train.users))
    num_cold_users = int(unique(test.users[cold]).size)
    if cold.any() and not drop_cold_test_users:
        at = int(np.argmax(cold))
        where = f"at {cfg.test}:{test.lines[at]}" if test.lines is not None else f"in {cfg.test}"
        raise DataError(
            f"user {test.raw_users(at)} {where} has no training items "
            f"({num_cold_users} test users, {int(cold.sum())} test pairs like this): no model can rank for a user "
            f"it never trained on. Remove those test lines, or set data.cold_test_users=drop to drop them "
            f"with a count in the data report"
        )
    test_users, test_items = test.users[~cold], test.items[~cold]
    (train_u, test_u), user_raw = ingest.contiguous([train.users, test_users], train.user_names)
    (train_i, test_i), item_raw = ingest.contiguous([train.items, test_items], train.item_names)
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
    if in_train.size and in_train.all():  # the test file repeats training pairs only: nothing is left to rank
        raise DataError(
            f"{cfg.test}: every one of its {in_train.size} test pairs is also a pair of {cfg.train} (data.test "
            f"names the training file?); test pairs are masked where they are training pairs, so no test pair "
            f"is left. data.test must name held-out interactions, not in data.train"
        )
    return _finish(cfg, report, train_keys, test_keys[~in_train], user_raw, item_raw)


def require_pairs(pairs: ingest.Pairs, dropped: int, cfg: DataConfig, key: str) -> None:
    """DataError when `pairs` is empty: a file with a header and no rows, or data.min_rating above every rating."""
    if pairs.users.size:
        return
    path = getattr(cfg, key.rpartition(".")[2])
    if dropped:
        raise DataError(f"{path}: data.min_rating={cfg.min_rating} drops all {dropped} interactions of {key} "
                        f"(no rating is that high); lower data.min_rating or unset it")
    raise DataError(f"{path}: no interactions in {key} (a header and no rows?); it needs at least one "
                    f"user-item pair")


def _from_one_file(cfg: DataConfig) -> InteractionData:
    """One pool of pairs (a log, a Parquet data set, .inter files), split per user into train and test."""
    pairs, low = ingest.filter_rating(ingest.read(cfg, "data.train"), cfg, str(cfg.train))
    require_pairs(pairs, low, cfg, "data.train")
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
    (users,), user_raw = ingest.contiguous([users], user_names)
    (items,), item_raw = ingest.contiguous([items], item_names)
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
    report["warnings"] = _check_splits(cfg, report, split_keys, num_users, num_items)
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


MIN_UNTESTABLE_ERROR = 10  # test pairs: from this many on, all of them on untrained items is an error
MIN_TEST_USERS = 100  # fewer: recall@K moves by several points with one user; warned about
LARGE_SHARE = 0.1  # a filter or an untestable group at least this large is warned about
UNTESTABLE_SHARE = 0.01  # test pairs on untrained items: every real data set has a few (ml-100k 0.2%)


def _source_key(cfg: DataConfig) -> str:
    """The config key that names the input, for messages."""
    return "data.synthetic" if cfg.format == "synthetic" else f"{cfg.train} (data.train)"


def _check_splits(cfg: DataConfig, report: dict, split_keys: dict[str, np.ndarray], num_users: int,
                  num_items: int) -> list[str]:
    """Raise DataError where the splits cannot give meaningful metrics; return warnings (one line each) for
    what only weakens them. Keys are sorted unique `user * num_items + item` per split."""
    train, valid, test = split_keys["train"], split_keys["valid"], split_keys["test"]
    per_user = np.bincount(np.concatenate([train, valid, test]) // max(num_items, 1), minlength=num_users)
    if num_items < 2:
        raise DataError(f"{_source_key(cfg)}: {num_items} item in all, so every ranking is trivial and every metric "
                        f"is 1; the data needs two or more items")
    if test.size == 0:  # a given test file that is empty after masking raised in _from_train_test
        if cfg.test is None and cfg.test_fraction == 0:
            raise DataError("data.test_fraction=0 holds out no test pair, so there is nothing to test; set "
                            "data.test_fraction in (0, 1), e.g. 0.2, or name a test file in data.test")
        if cfg.test is None and per_user.max() < 2:
            raise DataError(
                f"{_source_key(cfg)}: every one of the {num_users} users has a single interaction, and a user's "
                f"last pair always stays in train, so no test pair is left; a per-user split needs users with 2 or "
                f"more interactions (or a test file in data.test)")
        if cfg.test is not None:
            filtered = report["filtered"]
            raise DataError(f"{cfg.test}: no test pair is left ({filtered['cold_test']} pairs of users with no "
                            f"training items dropped by data.cold_test_users=drop, {filtered['test_in_train']} also "
                            f"in data.train masked); data.test must hold held-out pairs of users in data.train")
        raise DataError(f"{_source_key(cfg)}: the split left no test pair ({int(train.size + valid.size)} training "
                        f"pairs); raise data.test_fraction={cfg.test_fraction}, or name a test file in data.test")
    if valid.size == 0 and cfg.valid_fraction > 0:
        raise DataError(
            f"{_source_key(cfg)}: data.valid_fraction={cfg.valid_fraction} left no validation pair "
            f"({int(train.size)} training pairs, {int(np.count_nonzero(np.bincount(train // num_items) > 1))} users "
            f"with 2 or more; a user's last training pair is never held out); set data.valid_fraction=0 to train "
            f"without validation (no early stopping), or give users more training pairs")
    trained = np.bincount(train % num_items, minlength=num_items) > 0
    test_trained = trained[test % num_items]

    warnings = []
    test_users = int(unique(test // num_items).size)
    if test_users < MIN_TEST_USERS:
        warnings.append(f"only {test_users} test users (under {MIN_TEST_USERS}): one user moves recall@K by "
                        f"{100 / test_users:.1f} points, so compare runs with care")
    untestable = int(np.count_nonzero(~test_trained))
    if untestable == test.size and test.size < MIN_UNTESTABLE_ERROR:
        # A handful of pairs (hand-made examples, parser checks): said, not refused.
        warnings.append(f"no test pair has an item seen in training ({untestable} test pairs): a model can only rank "
                        f"them at random, so the test metrics say nothing about it")
    elif untestable == test.size:
        raise DataError(f"{_source_key(cfg)}: no test pair has an item seen in training ({untestable} test pairs): a "
                        f"model can only rank them at random, so the test metrics would say nothing; test on items "
                        f"that also appear in the training data")
    elif untestable >= UNTESTABLE_SHARE * test.size:
        warnings.append(f"{untestable} of {test.size} test pairs ({untestable / test.size:.1%}) are on items with no "
                        f"training pair: no model learns those items, so these pairs are almost never hit")
    filtered = report.get("filtered", {})
    read = max(int(report.get("pairs_read", 0)), 1)
    in_train = int(filtered.get("test_in_train", 0))
    if in_train:
        warnings.append(f"{in_train} test pairs of {cfg.test} are also training pairs: masked at evaluation, they "
                        f"were dropped from test (test_in_train in the report)")
    if filtered.get("cold_test", 0):
        warnings.append(f"{filtered['cold_test']} test pairs of {report.get('cold_test_users', 0)} test users with no "
                        f"training items were dropped (data.cold_test_users=drop)")
    duplicates = sum(v for k, v in filtered.items() if k.startswith("duplicate"))
    if duplicates >= LARGE_SHARE * read:
        warnings.append(f"{duplicates} of {read} pairs read ({duplicates / read:.1%}) repeat a pair and were dropped: "
                        f"each (user, item) is kept once")
    if cfg.test is None:
        single = int(np.count_nonzero(per_user == 1))
        if single >= LARGE_SHARE * num_users:
            warnings.append(f"{single} of {num_users} users ({single / num_users:.1%}) have a single interaction: "
                            f"they are trained on but never tested")
    return warnings


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
        pq.write_table(pa.table(data.split_columns()), temp["interactions.parquet"])
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
