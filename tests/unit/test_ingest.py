"""Parsing of user_lines and log files against brute-force Python references, and every bad input."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from distrec.config import DataConfig
from distrec.data import DataError, ingest, load_dataset


def write(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def pairs_of(data, split: str) -> set[tuple[int, int]]:
    """Pairs of a split in raw ids."""
    users, items = data.pairs(split)
    return set(zip(data.user_raw[users].tolist(), data.item_raw[items].tolist()))


def check_conventions(data) -> None:
    """Contiguous ids, sorted unique pairs per split, maps ascending."""
    assert np.all(np.diff(data.user_raw) > 0) and np.all(np.diff(data.item_raw) > 0)
    for split in ("train", "valid", "test"):
        users, items = data.pairs(split)
        assert users.dtype == np.int64 and items.dtype == np.int64
        keys = users * data.num_items + items
        assert np.all(np.diff(keys) > 0), f"{split} not sorted by (user, item) or has duplicates"
        assert users.size == 0 or (users.min() >= 0 and users.max() < data.num_users)
        assert items.size == 0 or (items.min() >= 0 and items.max() < data.num_items)
    report = data.report
    assert report["pairs_read"] - sum(report["filtered"].values()) == sum(report["splits"].values())


# ---------------------------------------------------------------- user_lines


def reference_user_lines(train: str, test: str) -> dict:
    """Brute force: Python split on whitespace, sets."""
    def parse(text):
        pairs = []
        for line in text.splitlines():
            fields = line.split()
            pairs += [(int(fields[0]), int(x)) for x in fields[1:]]
        return pairs

    train_pairs, test_pairs = parse(train), parse(test)
    train_set = set(train_pairs)
    test_set = set(test_pairs) - train_set
    return {
        "train": train_set,
        "test": test_set,
        "users": sorted({u for u, _ in train_set | test_set}),
        "items": sorted({i for _, i in train_set | test_set}),
        "duplicate_train": len(train_pairs) - len(train_set),
        "duplicate_test": len(test_pairs) - len(set(test_pairs)),
        "test_in_train": len(set(test_pairs) & train_set),
    }


def user_lines_cfg(tmp_path: Path, train: str | bytes, test: str | bytes, **kw) -> DataConfig:
    return DataConfig(
        format="user_lines", train=write(tmp_path, "train.txt", train), test=write(tmp_path, "test.txt", test), **kw
    )


def test_user_lines_small_by_hand(tmp_path):
    train = "10 5 7\n3\t7 9 9\r\n\n20 5\n7\n"  # tab, CRLF, blank line, duplicate, a user-only line
    test = "10 8\n3 7\n3 12\n20\n"  # (3, 7) is also in train; user 20 has no test items
    data = load_dataset(user_lines_cfg(tmp_path, train, test, valid_fraction=0.0))
    assert data.user_raw.tolist() == [3, 10, 20]
    assert data.item_raw.tolist() == [5, 7, 8, 9, 12]
    assert data.train_users.tolist() == [0, 0, 1, 1, 2]
    assert data.train_items.tolist() == [1, 3, 0, 1, 0]
    assert pairs_of(data, "test") == {(10, 8), (3, 12)}
    assert data.report["filtered"] == {"duplicate_train": 1, "duplicate_test": 0, "test_in_train": 1, "cold_test": 0}
    assert data.report["lines"]["train"] == {"read": 5, "blank": 1, "user_only": 1}
    assert data.report["lines"]["test"]["user_only"] == 1
    check_conventions(data)


def test_user_lines_zero_based_contiguous_maps_to_itself(tmp_path):
    data = load_dataset(user_lines_cfg(tmp_path, "0 0 1\n1 2\n2 1 3\n", "0 3\n2 0\n", valid_fraction=0.0))
    assert data.user_raw.tolist() == [0, 1, 2] and data.item_raw.tolist() == [0, 1, 2, 3]
    assert pairs_of(data, "test") == {(0, 3), (2, 0)}


@pytest.mark.parametrize("seed", range(5))
def test_user_lines_random_files_match_brute_force(tmp_path, seed):
    rng = random.Random(seed)
    seps = [" ", "\t", "  ", " \t"]

    def make(users, max_items, allow_empty):
        lines = []
        for u in users:
            num = rng.randint(0 if allow_empty else 1, max_items)
            items = [rng.randrange(10 ** rng.randint(1, 9)) for _ in range(num)]
            items += items[: rng.randint(0, 2)]  # duplicates
            line = str(u) + "".join(rng.choice(seps) + str(i) for i in items)
            lines.append(line + rng.choice(["", " ", "\r"]))
            if rng.random() < 0.1:
                lines.append("")
        return "\n".join(lines) + rng.choice(["", "\n"])

    users = rng.sample(range(10**6), 60)
    train = make(users, 12, allow_empty=False)
    test_lines = []
    for line in train.splitlines()[:40]:  # some test items repeat train items
        if line.strip():
            fields = line.split()
            test_lines.append(" ".join([fields[0], *rng.sample(fields[1:], 1), str(rng.randrange(1000))]))
    test = "\n".join(test_lines) + "\n"
    ref = reference_user_lines(train, test)
    data = load_dataset(user_lines_cfg(tmp_path, train, test, valid_fraction=0.3, seed=seed))
    assert data.user_raw.tolist() == ref["users"]
    assert data.item_raw.tolist() == ref["items"]
    assert pairs_of(data, "train") | pairs_of(data, "valid") == ref["train"]
    assert not pairs_of(data, "train") & pairs_of(data, "valid")
    assert pairs_of(data, "test") == ref["test"]
    for key in ("duplicate_train", "duplicate_test", "test_in_train"):
        assert data.report["filtered"][key] == ref[key]
    check_conventions(data)


# ---------------------------------------------------------------- logs

DELIMS = {"tab": "\t", "comma": ",", "pipe": "|", "space": " "}


def make_log(rng: random.Random, delim: str, num_cols: int, header: bool, n: int = 200) -> tuple[str, list]:
    items = [rng.randrange(1, 10**7) for _ in range(25)]  # large raw ids, each used by several users
    rows = list(dict.fromkeys((rng.randrange(1, 40), rng.choice(items)) for _ in range(n)))
    rows += rows[:15]  # duplicates
    lines = ["user|item|rating|timestamp".replace("|", delim).split(delim)[:num_cols]] if header else []
    lines = [delim.join(h) for h in lines]
    for u, i in rows:
        extra = [f"{rng.randint(1, 5)}.0", str(rng.randrange(10**9))][: num_cols - 2]
        lines.append(delim.join([str(u), str(i), *extra]))
    return "\n".join(lines) + "\n", rows


@pytest.mark.parametrize("delim_name", DELIMS)
@pytest.mark.parametrize("num_cols", [2, 3, 4])
@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("detect", [True, False])
def test_log_formats_match_brute_force(tmp_path, delim_name, num_cols, header, detect):
    rng = random.Random(f"{delim_name}-{num_cols}-{header}")  # str seeds are stable across processes
    text, rows = make_log(rng, DELIMS[delim_name], num_cols, header)
    cfg = DataConfig(
        format="log", train=write(tmp_path, "log.txt", text),
        delimiter=None if detect else delim_name, header=None if detect else header,
    )
    data = load_dataset(cfg)
    expected = set(rows)
    assert data.user_raw.tolist() == sorted({u for u, _ in expected})
    assert data.item_raw.tolist() == sorted({i for _, i in expected})
    assert pairs_of(data, "train") | pairs_of(data, "valid") | pairs_of(data, "test") == expected
    assert data.report["filtered"]["duplicate"] == len(rows) - len(expected)
    log = data.report["lines"]["log"]
    assert log["header"] == int(header) and log["delimiter"] == delim_name and len(log["columns"]) == num_cols
    check_conventions(data)


def test_log_crlf_blank_lines_and_header_detection(tmp_path):
    text = "user,item,rating\r\n\r\n1,5,4.5\r\n2,5,3\r\n\r\n2,6,1\r\n"
    cfg = DataConfig(format="log", train=write(tmp_path, "a.csv", text), test_fraction=0.5, valid_fraction=0.0)
    data = load_dataset(cfg)
    assert pairs_of(data, "train") | pairs_of(data, "test") == {(1, 5), (2, 5), (2, 6)}
    assert data.report["lines"]["log"] == {
        "read": 6, "header": 1, "blank": 2, "delimiter": "comma", "columns": ["user", "item", "rating"]
    }


def test_log_explicit_header_skips_a_numeric_first_line(tmp_path):
    pairs = ingest.read(DataConfig(format="log", train=write(tmp_path, "a.tsv", "7\t7\n1\t2\n"), header=True))
    assert (pairs.users.tolist(), pairs.items.tolist(), pairs.stats["header"]) == ([1], [2], 1)


# ---------------------------------------------------------------- bad input

BAD_USER_LINES = [
    # (train text, test text, file at fault, line, words in the message)
    ("1 2 3\n4 1\x01 5\n", "1 3\n", "train.txt", 2, "unexpected byte 0x01"),
    ("1 2\n3 -4\n", "1 3\n", "train.txt", 2, "negative id"),
    ("1 2\n\n3 4.5\n", "1 3\n", "train.txt", 3, "decimal point"),
    ("", "1 3\n", "train.txt", 1, "empty"),
    ("\n \n", "1 3\n", "train.txt", 1, "empty"),
    ("1\n2\n", "1 3\n", "train.txt", 1, "no line lists an item"),
    ("1 2\n3 4\n", "", "test.txt", 1, "empty"),
    ("1 2\n3 1234567890123456789\n", "1 5\n", "train.txt", 2, "int64"),
    ("1 2\n3 4\n", "1 5\n\n17 6 7\n", "test.txt", 3, "user 17"),
    ("1 2\n3 4\n", b"1 5\n3 \xe9\n", "test.txt", 2, "unexpected byte 0xe9"),  # not UTF-8
    # Letters, commas and the like are string ids now: tests/unit/test_formats.py.
]


@pytest.mark.parametrize("train, test, culprit, line, words", BAD_USER_LINES)
def test_bad_user_lines_name_file_and_line(tmp_path, train, test, culprit, line, words):
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        load_dataset(user_lines_cfg(tmp_path, train, test), out_dir=out)
    message = str(err.value)
    assert f"{culprit}:{line}:" in message or f"{culprit}:{line} " in message, message
    assert words in message
    assert not out.exists(), "nothing may be written when the input is bad"


def test_cold_test_user_message_is_actionable(tmp_path):
    with pytest.raises(DataError, match=r"user 17 at .*test\.txt:2 has no training items"):
        load_dataset(user_lines_cfg(tmp_path, "1 2\n", "1 3\n17 4\n"))
    data = load_dataset(user_lines_cfg(tmp_path, "1 2\n", "1 3\n17 4 5\n", valid_fraction=0.0),
                        drop_cold_test_users=True)
    assert data.user_raw.tolist() == [1] and data.report["filtered"]["cold_test"] == 2
    assert data.report["cold_test_users"] == 1
    check_conventions(data)


BAD_LOGS = [
    # (log text, line, words in the message)
    ("1,2\n3,4\n5,6,7\n", 3, "expected 2 comma-separated fields"),
    ("1,2\n3,1.5\n", 2, "'1.5' is not an integer"),
    ("1,2\n-3,4\n", 2, "negative user id -3"),
    ("1|2\n3|-4\n", 2, "negative item id -4"),
    ("user,item\n", 2, "no interactions after the header"),
    ("user,item\n\n  \n", 2, "no interactions after the header"),
    ("", 1, "empty"),
    # `12a`, `x`, `0x10`, `"2"` are string ids now: tests/unit/test_formats.py.
    ("1,2,5\n3,x,4.5\n4,y,z\n", 3, "rating 'z' is not a number"),  # string ids, then a bad rating
    ("1,a\n-3,4\n", 2, "negative user id -3"),
    ("1,a\n3,\n", 2, "empty item field"),
    ("1,2\n\n\n3,4,5\n", 4, "got 3"),
    ("1,2,abc\n", 1, "rating 'abc' is not a number"),
    ("1,2,4,9.5\n", 1, "timestamp '9.5'"),
    ("1\t2\n3,4\n", 2, "expected 2 tab-separated fields"),
    ("1 2\n3  4\n", 2, "expected 2 space-separated fields"),
    ("1,2\n3,\n", 2, "empty item field"),
    ("1,2,3,4,5\n", 1, "5 comma-separated fields"),
    ("12\n", 1, "no tab, comma, pipe or space"),
    ("1,2\n3,99999999999999999999\n", 2, "int64"),
]


@pytest.mark.parametrize("text, line, words", BAD_LOGS)
def test_bad_logs_name_file_and_line(tmp_path, text, line, words):
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(format="log", train=write(tmp_path, "ratings.csv", text)), out_dir=out)
    message = str(err.value)
    assert f"ratings.csv:{line}:" in message, message
    assert words in message, message
    assert not out.exists()


def test_bad_line_found_deep_in_a_big_file(tmp_path):
    rng = np.random.default_rng(0)
    lines = [" ".join(map(str, [u, *rng.integers(0, 5000, 5)])) for u in range(20_000)]
    lines[12_345] += " 7.5"
    with pytest.raises(DataError, match=r"train\.txt:12346: ids must be integers"):
        load_dataset(user_lines_cfg(tmp_path, "\n".join(lines), "0 1\n"))
    log = [f"{u},{i}" for u, i in rng.integers(0, 5000, (20_000, 2))]
    log[15_000] = "-1,2"
    with pytest.raises(DataError, match=r"log\.csv:15001: negative user id -1"):
        load_dataset(DataConfig(format="log", train=write(tmp_path, "log.csv", "\n".join(log))))


def test_missing_files_name_file_and_key(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: no such file \(set by data\.train\)"):
        load_dataset(DataConfig(format="log", train=str(tmp_path / "nope.txt")))
    train = write(tmp_path, "train.txt", "1 2\n")
    with pytest.raises(DataError, match=r"gone\.txt: no such file \(set by data\.test\)"):
        load_dataset(DataConfig(format="user_lines", train=train, test=str(tmp_path / "gone.txt")))


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    # Windows editors write one at the start of UTF-8 files.
    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_bytes(b"0 1 2 3\r\n1 2 3 4\r\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = ingest.read_user_lines(plain, "data.train"), ingest.read_user_lines(bom, "data.train")
    assert a.users.tolist() == b.users.tolist() == [0, 0, 0, 1, 1, 1] and a.items.tolist() == b.items.tolist()
    log_plain, log_bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    log_plain.write_bytes(b"user,item\r\n5,6\r\n7,8\r\n")
    log_bom.write_bytes(b"\xef\xbb\xbf" + log_plain.read_bytes())
    a, b = ingest.read_log(log_plain, "data.train"), ingest.read_log(log_bom, "data.train")
    assert a.users.tolist() == b.users.tolist() == [5, 7] and a.items.tolist() == b.items.tolist() == [6, 8]
