"""Per-user train / valid / test splits, csr, the report's counts and the Parquet dataset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from distrec.config import DataConfig, SyntheticConfig
from distrec.data import DataError, InteractionData, dataset, load_dataset, read_cache


def keys(data: InteractionData, split: str) -> np.ndarray:
    users, items = data.pairs(split)
    return data.user_raw[users] * 10**9 + data.item_raw[items]


def per_user(data: InteractionData, split: str) -> np.ndarray:
    return np.bincount(data.pairs(split)[0], minlength=data.num_users)


def write_log(tmp_path: Path, users: np.ndarray, items: np.ndarray) -> str:
    path = tmp_path / "log.tsv"
    path.write_text("".join(f"{u}\t{i}\n" for u, i in zip(users.tolist(), items.tolist())))
    return str(path)


@pytest.fixture(scope="module")
def small() -> InteractionData:
    return load_dataset(DataConfig(synthetic=SyntheticConfig(preset="small")))


def test_splits_are_disjoint_and_cover_the_input(small):
    generated = DataConfig().synthetic
    from distrec.data.synthetic import generate

    users, items = generate(generated)
    expected = np.sort(users * 10**9 + items)
    parts = [keys(small, s) for s in ("train", "valid", "test")]
    union = np.sort(np.concatenate(parts))
    assert np.array_equal(union, expected), "splits must partition the (duplicate-free) input"
    assert np.unique(union).size == union.size, "splits must be disjoint"


def test_every_user_keeps_training_items_and_shares_are_close(small):
    assert per_user(small, "train").min() >= 1
    n_train, n_valid, n_test = (small.report["splits"][s] for s in ("train", "valid", "test"))
    assert abs(n_test / (n_train + n_valid + n_test) - 0.2) < 0.005
    assert abs(n_valid / (n_train + n_valid) - 0.1) < 0.005


def test_stochastic_rounding_keeps_the_share_exact_for_small_users(tmp_path):
    # Every user has 3 pairs: floor or round of 0.1 * 3 would hold out nothing at all.
    users = np.repeat(np.arange(5000), 3)
    items = np.tile(np.arange(3), 5000) + users % 7
    cfg = DataConfig(format="log", train=write_log(tmp_path, users, items), test_fraction=0.1, valid_fraction=0.1)
    data = load_dataset(cfg)
    share = data.report["splits"]["test"] / users.size
    assert abs(share - 0.1) < 0.01, share
    share = data.report["splits"]["valid"] / (users.size - data.report["splits"]["test"])
    assert abs(share - 0.1) < 0.01, share
    assert per_user(data, "train").min() >= 1


def test_high_fractions_never_take_a_users_last_item_and_singletons_stay_in_train(tmp_path):
    rng = np.random.default_rng(3)
    users = rng.integers(0, 300, 2000)
    users[:50] = np.arange(1000, 1050)  # 50 users with exactly one interaction
    items = rng.integers(0, 500, users.size)
    path = write_log(tmp_path, users, items)
    data = load_dataset(DataConfig(format="log", train=path, test_fraction=0.9, valid_fraction=0.9))
    assert per_user(data, "train").min() >= 1
    singletons = np.searchsorted(data.user_raw, np.arange(1000, 1050))
    assert per_user(data, "test")[singletons].sum() == 0 and per_user(data, "valid")[singletons].sum() == 0
    assert data.report["filtered"]["duplicate"] == users.size - np.unique(users * 1000 + items).size


def test_splits_are_deterministic_per_seed(tmp_path):
    rng = np.random.default_rng(5)
    users, items = rng.integers(0, 200, 5000), rng.integers(0, 300, 5000)
    path = write_log(tmp_path, users, items)
    a = load_dataset(DataConfig(format="log", train=path, seed=1))
    b = load_dataset(DataConfig(format="log", train=path, seed=1))
    c = load_dataset(DataConfig(format="log", train=path, seed=2))
    assert a == b
    assert not np.array_equal(keys(a, "test"), keys(c, "test"))
    assert not np.array_equal(keys(a, "valid"), keys(c, "valid"))


def test_valid_split_of_user_lines_changes_with_seed_only(tmp_path):
    lines = [" ".join(map(str, [u, *range(u, u + 20)])) for u in range(50)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.txt").write_text("0 100\n")
    cfg = dict(format="user_lines", train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt"))
    a, b, c = (load_dataset(DataConfig(**cfg, seed=s)) for s in (4, 4, 5))
    assert a == b and not np.array_equal(keys(a, "valid"), keys(c, "valid"))
    assert np.array_equal(np.sort(np.concatenate([keys(a, "train"), keys(a, "valid")])),
                          np.sort(np.concatenate([keys(c, "train"), keys(c, "valid")])))


def test_csr_matches_brute_force(small):
    for split in ("train", "valid", "test"):
        indptr, items = small.csr(split)
        assert indptr.dtype == np.int64 and indptr.shape == (small.num_users + 1,)
        users, expected_items = small.pairs(split)
        by_user: dict[int, list[int]] = {}
        for u, i in zip(users.tolist(), expected_items.tolist()):
            by_user.setdefault(u, []).append(i)
        for u in range(0, small.num_users, 37):
            assert items[indptr[u] : indptr[u + 1]].tolist() == sorted(by_user.get(u, []))
    with pytest.raises(ValueError, match="split must be one of"):
        small.csr("training")


def test_arrays_are_frozen(small):
    with pytest.raises(ValueError):
        small.train_users[0] = 5


def test_report_counts_add_up_and_are_json(tmp_path):
    (tmp_path / "train.txt").write_text("1 2 2 3\n2 3\n")
    (tmp_path / "test.txt").write_text("1 3 4 4\n2 5\n")
    cfg = DataConfig(format="user_lines", train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt"),
                     valid_fraction=0.0)
    data = load_dataset(cfg)
    report = data.report
    assert report["filtered"] == {"duplicate_train": 1, "duplicate_test": 1, "test_in_train": 1, "cold_test": 0}
    assert report["pairs_read"] == 8
    assert report["pairs_read"] - sum(report["filtered"].values()) == sum(report["splits"].values()) == 5
    assert report["items_without_train"] >= 2  # items 4 and 5 occur in test only
    assert json.loads(json.dumps(report)) == report


# ---------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path, small):
    cfg = DataConfig(synthetic=SyntheticConfig(preset="tiny"))
    data = load_dataset(cfg, out_dir=tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == sorted(dataset.DATASET_FILES)
    back = read_cache(tmp_path / "ds")
    assert back == data and back.report == data.report
    assert back != small
    import pyarrow.parquet as pq

    schema = pq.read_schema(tmp_path / "ds" / "interactions.parquet")
    assert [(f.name, str(f.type)) for f in schema] == [("user", "int64"), ("item", "int64"), ("split", "int8")]


def test_parquet_round_trip_keeps_raw_ids(tmp_path):
    (tmp_path / "log.csv").write_text("user,item\n1000000007,5\n3,99999999999\n3,5\n1000000007,4\n")
    data = load_dataset(DataConfig(format="log", train=str(tmp_path / "log.csv"), test_fraction=0.5, valid_fraction=0.0),
                        out_dir=tmp_path / "ds")
    back = read_cache(tmp_path / "ds")
    assert back == data and back.user_raw.tolist() == [3, 1000000007]


def test_a_crash_while_writing_keeps_the_previous_dataset(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    first = load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny")), out_dir=out)
    calls = []
    real_write = dataset.pq.write_table

    def failing_write(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(table, where, **kw)

    monkeypatch.setattr(dataset.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny", seed=99)), out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(dataset.DATASET_FILES), "temp files must be cleaned up"
    assert read_cache(out) == first
    monkeypatch.undo()
    second = load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny", seed=99)), out_dir=out)
    assert read_cache(out) == second != first


def test_read_parquet_refuses_an_incomplete_dataset(tmp_path):
    with pytest.raises(DataError, match="no report.json"):
        read_cache(tmp_path / "missing")
    load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny")), out_dir=tmp_path / "ds")
    (tmp_path / "ds" / "report.json").unlink()
    with pytest.raises(DataError, match="ds: no report.json"):
        read_cache(tmp_path / "ds")


def test_merge_valid_into_train_keeps_every_pair_once():
    from distrec.config import DataConfig, SyntheticConfig
    from distrec.data import load_dataset

    data = load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny")))
    merged = data.merge_valid_into_train()
    before = set(zip(data.train_users.tolist(), data.train_items.tolist())) | set(zip(data.valid_users.tolist(), data.valid_items.tolist()))
    after = list(zip(merged.train_users.tolist(), merged.train_items.tolist()))
    assert len(data.valid_users) > 0 and len(merged.valid_users) == 0
    assert after == sorted(before)
    assert np.array_equal(merged.test_users, data.test_users)



def test_counts_are_python_ints():
    import json

    from distrec import config
    from distrec.data import load_dataset

    data = load_dataset(config.load(None, ["data.synthetic.preset=tiny"]).data)
    assert type(data.num_users) is int and type(data.num_items) is int
    json.dumps({"users": data.num_users, "items": data.num_items})  # a 0-d numpy array would raise here


# ---------------------------------------------------------------- data that cannot give a result


def test_test_file_equal_to_train_is_refused(tmp_path):
    (tmp_path / "train.txt").write_text("1 2 3\n2 3 4\n3 4 5\n")
    (tmp_path / "test.txt").write_text("1 2 3\n2 3 4\n3 4 5\n")
    cfg = DataConfig(format="user_lines", train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt"))
    with pytest.raises(DataError, match=r"test\.txt: every one of its 6 test pairs is also a pair of .*train\.txt"):
        load_dataset(cfg, out_dir=tmp_path / "ds")
    assert not (tmp_path / "ds" / "report.json").exists()  # nothing that reads as a dataset


@pytest.mark.parametrize("text, overrides, message", [
    ("1,2\n2,3\n3,4\n", {}, r"log\.csv \(data\.train\): every one of the 3 users has a single interaction"),
    ("1,2\n1,3\n2,3\n2,4\n", {"test_fraction": 0.0}, r"data\.test_fraction=0 holds out no test pair"),
    # Two pairs per user: test takes one, the last training pair is never held out for validation.
    ("1,2\n1,3\n2,3\n2,4\n", {"test_fraction": 0.5}, r"log\.csv \(data\.train\): data\.valid_fraction=0\.1 left no "
                                                      r"validation pair.*set data\.valid_fraction=0"),
    ("1,2\n2,2\n", {}, r"log\.csv \(data\.train\): 1 item in all"),
    ("user,item,rating\n1,2,1\n1,3,2\n", {"min_rating": 4.0}, r"log\.csv: data\.min_rating=4\.0 drops all 2"),
])
def test_pools_that_cannot_give_metrics_are_refused(tmp_path, text, overrides, message):
    (tmp_path / "log.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(format="log", train=str(tmp_path / "log.csv"), **overrides))


def test_no_validation_is_accepted_when_asked_for(tmp_path):
    (tmp_path / "log.csv").write_text("1,2\n1,3\n2,3\n2,4\n")
    data = load_dataset(DataConfig(format="log", train=str(tmp_path / "log.csv"), test_fraction=0.5,
                                   valid_fraction=0.0))
    assert data.valid_users.size == 0 and data.test_users.size == 2


def test_cr_only_line_ends_are_line_ends_and_crlf_still_reads(tmp_path):
    lines = ["1 2 3 4", "2 3 4 5", "3 4 5 6"]
    (tmp_path / "test.txt").write_text("1 5\n2 6\n3 7\n")
    results = []
    for name, end in (("lf", "\n"), ("cr", "\r"), ("crlf", "\r\n")):
        (tmp_path / f"{name}.txt").write_bytes(end.join(lines).encode() + end.encode())
        cfg = DataConfig(format="user_lines", train=str(tmp_path / f"{name}.txt"), test=str(tmp_path / "test.txt"))
        data = load_dataset(cfg)
        assert data.num_users == 3 and data.report["lines"]["train"]["read"] == 3, name
        results.append(data)
    for other in results[1:]:  # the same pairs and counts; only the file name in the report differs
        assert other == dataclasses.replace(results[0], report={**results[0].report, "source": other.report["source"]})
    (tmp_path / "log.csv").write_bytes(b"1,2\r1,3\r2,3\r2,4\r3,4\r3,5")
    assert load_dataset(DataConfig(format="log", train=str(tmp_path / "log.csv"), valid_fraction=0.0)).num_users == 3
    (tmp_path / "bad.csv").write_bytes(b"1,2\r1,x,3\r")
    with pytest.raises(DataError, match=r"bad\.csv:2: expected 2 comma-separated fields"):
        load_dataset(DataConfig(format="log", train=str(tmp_path / "bad.csv")))


def test_warnings_go_to_the_report_and_to_warn(tmp_path):
    # 4 test users (under 100), one of 4 test pairs on an item with no training pair.
    (tmp_path / "train.txt").write_text("1 2 3\n2 3 4\n3 4 5\n4 2 5\n")
    (tmp_path / "test.txt").write_text("1 4\n2 5\n3 2\n4 9\n")
    cfg = DataConfig(format="user_lines", train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt"),
                     valid_fraction=0.0)
    seen = []
    data = load_dataset(cfg, out_dir=tmp_path / "ds", warn=seen.append)
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    assert report["warnings"] == data.report["warnings"] == seen and len(seen) == 2
    assert seen[0].startswith("only 4 test users") and seen[1].startswith("1 of 4 test pairs (25.0%)")
    assert all("\n" not in line for line in seen)


def test_a_test_file_of_items_never_trained_on_is_refused(tmp_path):
    # Every test item unseen in training: the item rows stay at their random start, and the
    # metrics would measure chance. From 10 test pairs on, that is an error, not a warning.
    (tmp_path / "train.txt").write_text("".join(f"{u} {u % 5} {u % 5 + 5}\n" for u in range(20)))
    (tmp_path / "test.txt").write_text("".join(f"{u} {100 + u}\n" for u in range(20)))
    cfg = DataConfig(format="user_lines", train=str(tmp_path / "train.txt"), test=str(tmp_path / "test.txt"), valid_fraction=0.0)
    with pytest.raises(DataError, match="no test pair has an item seen in training \\(20 test pairs\\)"):
        load_dataset(cfg)
    (tmp_path / "test.txt").write_text("".join(f"{u} {100 + u}\n" for u in range(5)))  # a handful: warned about
    data = load_dataset(cfg)
    assert any("no test pair has an item seen in training" in w for w in data.report["warnings"])
