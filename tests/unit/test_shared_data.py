"""Ingest of the three real data sets in ../shared/data (see its README); skipped when absent, except under CI."""

from __future__ import annotations


import numpy as np
import pytest

from distrec.config import DataConfig
from distrec.data import DataError, load_dataset





def all_pairs(data) -> int:
    return sum(data.report["splits"].values())


def test_amazon_phones(shared_data):
    cfg = DataConfig(
        format="user_lines",
        train=str(shared_data / "amazon-phones" / "train.txt"),
        test=str(shared_data / "amazon-phones" / "test.txt"),
    )
    # The files hold the README's 27,879 users / 10,429 items / 155,163 + 39,276 pairs, but 4 users
    # (9557, 15012, 17103, 26525) occur in test.txt only, with 20 test pairs: refused by default.
    with pytest.raises(DataError, match=r"user 9557 at .*test\.txt:7369 has no training items \(4 test users, 20"):
        load_dataset(cfg)
    data = load_dataset(cfg, drop_cold_test_users=True)
    report = data.report
    assert report["pairs_read"] == 194_439
    assert report["filtered"] == {"duplicate_train": 0, "duplicate_test": 0, "test_in_train": 0, "cold_test": 20}
    assert report["cold_test_users"] == 4
    assert (data.num_users, data.num_items) == (27_875, 10_429)
    assert report["splits"]["train"] + report["splits"]["valid"] == 155_163
    assert report["splits"]["test"] == 39_256
    assert abs(report["splits"]["valid"] / 155_163 - 0.1) < 0.005
    assert report["items_without_train"] >= 2  # items 10_426 and 10_428 occur in test only
    assert np.array_equal(data.item_raw, np.arange(10_429)), "0-based contiguous ids map to themselves"
    assert np.array_equal(data.user_raw, np.setdiff1d(np.arange(27_879), [9557, 15012, 17103, 26525]))


def test_ml_100k(shared_data):
    data = load_dataset(DataConfig(format="log", train=str(shared_data / "ml-100k" / "u.data")))
    log = data.report["lines"]["log"]
    assert log["header"] == 1 and log["delimiter"] == "pipe"
    assert log["columns"] == ["user", "item", "rating", "timestamp"]
    assert (data.num_users, data.num_items, all_pairs(data)) == (943, 1_682, 100_000)
    assert data.report["filtered"] == {"duplicate": 0}
    assert np.array_equal(data.user_raw, np.arange(1, 944)), "1-based ids become 0-based"


def test_amazon_video(shared_data):
    data = load_dataset(DataConfig(format="log", train=str(shared_data / "amazon-video" / "Video.txt")))
    log = data.report["lines"]["log"]
    assert log["header"] == 0 and log["delimiter"] == "space" and log["columns"] == ["user", "item"]
    assert (data.num_users, data.num_items, all_pairs(data)) == (31_013, 23_715, 287_107)
    assert data.report["filtered"] == {"duplicate": 0}
    # 30 users have a single interaction: it stays in train.
    total = sum(np.bincount(data.pairs(s)[0], minlength=data.num_users) for s in ("train", "valid", "test"))
    singles = total == 1
    assert singles.sum() == 30
    assert np.bincount(data.train_users, minlength=data.num_users)[singles].min() == 1
