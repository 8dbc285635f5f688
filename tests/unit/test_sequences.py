"""Sequences, samples, user splits and history windows against plain-Python references; the real logs."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest

from distrec import config
from distrec.data import DataError
from distrec.data.sequences import SequenceData, history_windows, load_sequences


def SequenceConfig(path=None, delimiter=None, header=None, seed=2022, **sequence):  # noqa: N802 - reads like the config it builds
    """A DataConfig for a log at `path` with `data.sequence` fields from keywords."""
    seq = config.SequenceConfig(**sequence)
    return config.DataConfig(format="log", train=path, delimiter=delimiter, header=header, seed=seed, sequence=seq)


# A time-ordered `user item` log with interleaved users (file order = time order per user).
# Raw user 40 has a single interaction: dropped. Contiguous users: 10->0, 20->1, 30->2, 50->3, 60->4, 70->5.
TIME_ORDERED_LOG = """\
10 100
20 300
10 200
30 100
10 300
20 100
40 500
10 400
30 200
50 600
50 100
60 200
60 300
20 200
10 100
70 400
70 300
60 100
70 200
70 100
"""
# Per raw user, in time order; item raw ids 100, 200, 300, 400, 600 become 0..4 (500 only belonged to 40).
EXPECTED_SEQUENCES = {
    10: [100, 200, 300, 400, 100],
    20: [300, 100, 200],
    30: [100, 200],
    50: [600, 100],
    60: [200, 300, 100],
    70: [400, 300, 200, 100],
}


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def sequences_of(data: SequenceData) -> dict[int, list[int]]:
    """{raw user: [raw items in time order]}, read from the CSR arrays one user at a time."""
    return {
        int(data.user_raw[u]): data.item_raw[data.seq_items[data.seq_indptr[u] : data.seq_indptr[u + 1]]].tolist()
        for u in range(data.num_users)
    }


def python_window(seq: list[int], end: int, max_len: int, align: str) -> tuple[list[int], list[bool]]:
    window = seq[max(0, end - max_len) : end]
    pad = max_len - len(window)
    if align == "left":
        return window + [0] * pad, [True] * len(window) + [False] * pad
    return [0] * pad + window, [False] * pad + [True] * len(window)


def contiguous_sequences(data: SequenceData) -> list[list[int]]:
    return [data.seq_items[data.seq_indptr[u] : data.seq_indptr[u + 1]].tolist() for u in range(data.num_users)]


def random_log(tmp_path: Path, num_users: int, seed: int, max_length: int = 12) -> str:
    rng = random.Random(seed)
    lines = []
    for user in range(num_users):
        lines += [f"{user + 1} {rng.randrange(1, 60)}" for _ in range(rng.randrange(2, max_length + 1))]
    rng.shuffle(lines)  # interleaves users; each user's lines stay in their own order as "time"
    return write(tmp_path, f"random{seed}.txt", "\n".join(lines) + "\n")


@pytest.fixture
def hand(tmp_path: Path) -> SequenceData:
    # 6 users: split (1/3, 1/3, 1/3) gives 2 users per split, so every split has something to check.
    return load_sequences(SequenceConfig(path=write(tmp_path, "log.txt", TIME_ORDERED_LOG), split=(0.34, 0.33, 0.33)))


def test_hand_made_sequences_and_report(hand):
    assert sequences_of(hand) == EXPECTED_SEQUENCES
    assert hand.user_raw.tolist() == [10, 20, 30, 50, 60, 70]
    assert hand.item_raw.tolist() == [100, 200, 300, 400, 600]
    assert hand.seq_indptr.tolist() == [0, 5, 8, 10, 12, 15, 19]
    assert hand.seq_items.tolist() == [0, 1, 2, 3, 0, 2, 0, 1, 0, 1, 4, 0, 1, 2, 0, 3, 2, 1, 0]
    assert hand.seq_items.dtype == np.int64 and not hand.seq_items.flags.writeable
    report = hand.report
    assert report["interactions_read"] == 20 and report["users_read"] == 7 and report["items_read"] == 6
    assert report["short_users"] == {"min_length": 2, "users": 1, "interactions": 1}
    assert report["repeat_interactions"] == 1  # user 10 returns to item 100
    assert (report["num_users"], report["num_items"], report["num_interactions"]) == (6, 5, 19)
    assert report["splits"] == {"train": 2, "valid": 2, "test": 2}
    assert "k_core" not in report


def test_hand_made_train_samples(tmp_path):
    path = write(tmp_path, "log.txt", TIME_ORDERED_LOG)
    for min_position in (1, 3):
        data = load_sequences(SequenceConfig(path=path, split=(0.34, 0.33, 0.33), min_train_position=min_position))
        seqs = contiguous_sequences(data)
        users, positions = data.train_samples()
        expected = [(u, p) for u in data.train_users.tolist() for p in range(min_position, len(seqs[u]))]
        assert list(zip(users.tolist(), positions.tolist())) == expected
        assert data.report["samples"]["train"] == len(expected)
        targets = data.items_at(users, positions)
        assert targets.tolist() == [seqs[u][p] for u, p in expected]
        without = sum(len(seqs[u]) <= min_position for u in data.train_users.tolist())
        assert data.report["train_users_without_samples"] == without
    # All users in training would leave nothing to test: refused, naming the key.
    with pytest.raises(DataError, match=r"log\.txt: data\.sequence\.split=\[1\.0, 0\.0, 0\.0\] leaves no test user"):
        load_sequences(SequenceConfig(path=path, split=(1.0, 0.0, 0.0)))


def test_hand_made_eval_split(tmp_path, hand):
    seqs = contiguous_sequences(hand)
    assert sorted(hand.train_users.tolist() + hand.valid_users.tolist() + hand.test_users.tolist()) == list(range(6))
    for split in ("valid", "test"):
        users, ends, (indptr, items) = hand.eval_split(split)
        assert users.tolist() == getattr(hand, f"{split}_users").tolist()
        assert ends.tolist() == [max(1, int(0.8 * len(seqs[u]))) for u in users.tolist()]
        assert [items[indptr[j] : indptr[j + 1]].tolist() for j in range(len(users))] == \
            [seqs[u][max(1, int(0.8 * len(seqs[u]))) :] for u in users.tolist()]
        assert hand.report["samples"][f"{split}_targets"] == int(indptr[-1])
    with pytest.raises(ValueError, match="split must be one of valid, test"):
        hand.eval_split("train")

    # history_fraction 0.3: int(0.3 * len) is 0 for lengths 2 and 3, so those histories are clamped to 1 item.
    path = write(tmp_path, "log.txt", TIME_ORDERED_LOG)
    data = load_sequences(SequenceConfig(path=path, split=(0.2, 0.3, 0.5), history_fraction=0.3))
    assert data.report["splits"] == {"train": 1, "valid": 2, "test": 3}  # 5 of 6 users: one has length 2 or 3
    clamped = 0
    for split in ("valid", "test"):
        users, ends, (indptr, items) = data.eval_split(split)
        lengths = [len(seqs[u]) for u in users.tolist()]
        assert ends.tolist() == [max(1, int(0.3 * n)) for n in lengths]
        assert all(1 <= e < n for e, n in zip(ends.tolist(), lengths)), "at least one history item and one target"
        assert np.diff(indptr).tolist() == [n - e for e, n in zip(ends.tolist(), lengths)]
        assert data.report["eval_history_clamped"][split] == sum(int(0.3 * n) == 0 for n in lengths)
        clamped += data.report["eval_history_clamped"][split]
    assert clamped >= 1


@pytest.mark.parametrize("align", ["left", "right"])
@pytest.mark.parametrize("max_len", [1, 2, 4, 20])
def test_hand_made_windows(hand, align, max_len):
    seqs = contiguous_sequences(hand)
    users = np.repeat(np.arange(6), [len(s) for s in seqs])
    ends = np.concatenate([np.arange(1, len(s) + 1) for s in seqs])  # every possible end, incl. the full sequence
    ids, mask = history_windows(hand, users, ends, max_len, align=align)
    assert ids.shape == mask.shape == (len(users), max_len) and ids.dtype == np.int64 and mask.dtype == bool
    for b, (u, e) in enumerate(zip(users.tolist(), ends.tolist())):
        expected_ids, expected_mask = python_window(seqs[u], e, max_len, align)
        assert ids[b].tolist() == expected_ids and mask[b].tolist() == expected_mask, (u, e)


def test_default_alignment_is_left(hand):
    ids, mask = history_windows(hand, np.array([0]), np.array([3]), 5)  # user 10: items 0, 1, 2 before position 3
    assert ids.tolist() == [[0, 1, 2, 0, 0]] and mask.tolist() == [[True, True, True, False, False]]


def test_windows_refuse_bad_arguments(hand):
    with pytest.raises(ValueError, match=r"ends\[1\] = 0 is outside \[1, 5\]"):
        history_windows(hand, np.array([0, 0]), np.array([1, 0]), 4)
    with pytest.raises(ValueError, match=r"ends\[0\] = 3 is outside \[1, 2\]"):
        history_windows(hand, np.array([2]), np.array([3]), 4)
    with pytest.raises(ValueError, match=r"users\[0\] = 6 is not a user id"):
        history_windows(hand, np.array([6]), np.array([1]), 4)
    with pytest.raises(ValueError, match="max_len"):
        history_windows(hand, np.array([0]), np.array([1]), 0)
    with pytest.raises(ValueError, match="align"):
        history_windows(hand, np.array([0]), np.array([1]), 3, align="center")


def test_windows_brute_force_on_random_data(tmp_path):
    data = load_sequences(SequenceConfig(path=random_log(tmp_path, 200, seed=3, max_length=30)))
    seqs = contiguous_sequences(data)
    rng = np.random.default_rng(0)
    users = rng.integers(0, data.num_users, 500)
    ends = 1 + (rng.random(500) * data.lengths[users]).astype(np.int64)  # uniform on [1, len]
    for max_len in (1, 5, 20, 64):  # shorter and longer than the sequences (2..30)
        for align in ("left", "right"):
            ids, mask = history_windows(data, users, ends, max_len, align=align)
            for b in range(users.size):
                expected_ids, expected_mask = python_window(seqs[users[b]], int(ends[b]), max_len, align)
                assert ids[b].tolist() == expected_ids and mask[b].tolist() == expected_mask


def test_timestamped_log_is_sorted_by_time_with_stable_ties(tmp_path):
    rng = random.Random(5)
    rows = [(u, rng.randrange(1, 40), rng.randrange(1, 6), rng.randrange(1000, 1010))  # few timestamps: many ties
            for u in range(1, 16) for _ in range(rng.randrange(2, 12))]
    rng.shuffle(rows)
    body = "".join(f"{u}|{i}|{r}|{t}\n" for u, i, r, t in rows)
    path = write(tmp_path, "u.data", "user|item|rating|timestamp\n" + body)
    data = load_sequences(SequenceConfig(path=path, time_ordered=False))
    expected = {}
    for line, (u, i, _, t) in enumerate(rows):
        expected.setdefault(u, []).append((t, line, i))
    assert sequences_of(data) == {u: [i for _, _, i in sorted(v)] for u, v in expected.items()}
    assert data.report["lines"]["header"] == 1 and data.report["lines"]["delimiter"] == "pipe"
    # The same file in file order is a different (unsorted) sequence set: the sort did something.
    assert sequences_of(load_sequences(SequenceConfig(path=path))) == {
        u: [i for _, _, i in v] for u, v in expected.items()
    } != sequences_of(data)


def test_time_ordered_false_needs_a_timestamp_column(tmp_path):
    path = write(tmp_path, "log.txt", TIME_ORDERED_LOG)
    with pytest.raises(DataError, match=r"log\.txt: data\.sequence\.time_ordered=false .* 2 columns \(user, item\)"):
        load_sequences(SequenceConfig(path=path, time_ordered=False))


def test_malformed_input_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.txt", "1 2\n1 3\n2 1.5\n")  # `2 x` would be a string id (test_formats.py)
    with pytest.raises(DataError, match=r"bad\.txt:3: item '1\.5' is not an integer"):
        load_sequences(SequenceConfig(path=path))
    with pytest.raises(DataError, match=r"no such file \(set by data\.train\)"):
        load_sequences(SequenceConfig(path=str(tmp_path / "missing.txt")))
    with pytest.raises(DataError, match="no user has 2 or more interactions"):
        load_sequences(SequenceConfig(path=write(tmp_path, "singles.txt", "1 2\n2 3\n3 3\n")))


# k = 2. Pass 1 drops item w (1 interaction), then user u3, which leaves item y with one interaction;
# pass 2 drops y, then user u1, whose x is gone too. x and z keep 2 interactions each: stable.
K_CORE_LOG = """\
1 1
1 2
2 1
2 3
3 2
3 4
4 3
4 1
"""  # users 1..4 = u1..u4, items 1 = x, 2 = y, 3 = z, 4 = w


def test_k_core_one_pass_differs_from_until_stable(tmp_path):
    path = write(tmp_path, "kcore.txt", K_CORE_LOG)
    one = load_sequences(SequenceConfig(path=path, k_core=2, split=(0.5, 0.0, 0.5)))
    assert sequences_of(one) == {1: [1, 2], 2: [1, 3], 4: [3, 1]}
    assert one.report["k_core"] == {
        "k": 2, "passes": 1, "passes_run": 1, "stable": False,
        "removed": [{"users": 1, "items": 1, "interactions": 2}],
    }
    stable = load_sequences(SequenceConfig(path=path, k_core=2, k_core_passes=0, split=(0.5, 0.0, 0.5)))
    assert sequences_of(stable) == {2: [1, 3], 4: [3, 1]}
    assert stable.report["k_core"] == {
        "k": 2, "passes": 0, "passes_run": 3, "stable": True,
        "removed": [{"users": 1, "items": 1, "interactions": 2}, {"users": 1, "items": 1, "interactions": 2},
                    {"users": 0, "items": 0, "interactions": 0}],
    }
    assert stable.item_raw.tolist() == [1, 3] and stable.report["num_interactions"] == 4
    two = load_sequences(SequenceConfig(path=path, k_core=2, k_core_passes=2, split=(0.5, 0.0, 0.5)))
    assert sequences_of(two) == sequences_of(stable) and two.report["k_core"]["stable"]
    assert two.report["k_core"]["passes_run"] == 2
    with pytest.raises(DataError, match=r"kcore\.txt: no interactions left after data\.sequence\.k_core=3"):
        load_sequences(SequenceConfig(path=path, k_core=3))


def test_k_core_matches_brute_force_on_random_data(tmp_path):
    path = random_log(tmp_path, 150, seed=9)
    lines = [tuple(map(int, line.split())) for line in Path(path).read_text().splitlines()]
    for passes in (1, 2, 0):
        kept = list(lines)
        for done in range(passes or 10**9):
            before = len(kept)
            items = {}
            for _, i in kept:
                items[i] = items.get(i, 0) + 1
            kept = [(u, i) for u, i in kept if items[i] >= 3]
            users = {}
            for u, _ in kept:
                users[u] = users.get(u, 0) + 1
            kept = [(u, i) for u, i in kept if users[u] >= 3]
            if len(kept) == before:
                break
        data = load_sequences(SequenceConfig(path=path, k_core=3, k_core_passes=passes))
        expected = {}
        for u, i in kept:
            expected.setdefault(u, []).append(i)
        assert sequences_of(data) == expected
        removed = data.report["k_core"]["removed"]
        assert sum(r["interactions"] for r in removed) == len(lines) - len(kept)


def test_user_split_is_disjoint_covering_8_1_1_and_seeded(tmp_path):
    path = random_log(tmp_path, 1000, seed=1)
    data = load_sequences(SequenceConfig(path=path))
    parts = [data.train_users, data.valid_users, data.test_users]
    assert [p.size for p in parts] == [800, 100, 100]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
    assert all(np.all(np.diff(p) > 0) for p in parts)
    again = load_sequences(SequenceConfig(path=path))
    other = load_sequences(SequenceConfig(path=path, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(parts, [again.train_users, again.valid_users, again.test_users]))
    assert not np.array_equal(data.valid_users, other.valid_users)
    assert np.array_equal(data.seq_items, other.seq_items), "the seed moves users between splits, nothing else"
    # Sizes always add up, whatever the rounding.
    small = load_sequences(SequenceConfig(path=random_log(tmp_path, 13, seed=2)))
    assert sum(small.report["splits"].values()) == 13 and small.report["splits"]["train"] == 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(split=(0.8, 0.1, 0.2)), r"sequence\.split must be .* sum to 1"),
    (dict(split=(0.8, 0.2)), r"sequence\.split"),
    (dict(split=(0.0, 0.5, 0.5)), r"sequence\.split must give training users"),
    (dict(max_len=0), r"sequence\.max_len must be an integer >= 1"),
    (dict(min_train_position=0), r"sequence\.min_train_position"),
    (dict(k_core=-1), r"sequence\.k_core must"),
    (dict(k_core_passes=-2), r"sequence\.k_core_passes"),
    (dict(history_fraction=1.0), r"sequence\.history_fraction"),
    (dict(history_fraction=0.0), r"sequence\.history_fraction"),
    (dict(delimiter=";"), r"data\.delimiter"),
])
def test_bad_config_values_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceConfig(path="x", **kwargs)


def test_config_spelled_delimiter_and_missing_path(tmp_path):
    assert SequenceConfig(path="x", delimiter="tab").delimiter == "\t"
    with pytest.raises(ValueError, match=r"data\.format=log needs data\.train"):
        load_sequences(SequenceConfig())




def test_amazon_video(shared_data):
    path = str(shared_data / "amazon-video" / "Video.txt")
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        data = load_sequences(SequenceConfig(path=path))
        seconds.append(time.perf_counter() - start)
    print(f"\nVideo.txt load: best {min(seconds):.3f} s of {len(seconds)}")
    report = data.report
    assert (report["users_read"], report["items_read"], report["interactions_read"]) == (31_013, 23_715, 287_107)
    assert report["lines"]["delimiter"] == "space" and report["repeat_interactions"] == 0
    # 30 users with a single interaction are dropped; 3 items occurred only in their lines.
    assert report["short_users"] == {"min_length": 2, "users": 30, "interactions": 30}
    assert (data.num_users, data.num_items, report["num_interactions"]) == (30_983, 23_712, 287_077)
    assert report["splits"] == {"train": 24_786, "valid": 3_099, "test": 3_098}
    assert report["samples"] == {"train": 203_510, "valid_targets": 6_870, "test_targets": 7_068}
    assert report["length"]["min"] == 2 and report["length"]["max"] == 860
    # The file's order is kept within each user: user 1's first items as in the file.
    assert data.item_raw[data.seq_items[: 3]].tolist() == [6393, 13504, 14087] and data.user_raw[0] == 1

    one = load_sequences(SequenceConfig(path=path, k_core=5))
    assert one.report["k_core"]["removed"] == [{"users": 5_760, "items": 11_606, "interactions": 46_362}]
    assert not one.report["k_core"]["stable"]  # one pass (as the reference) leaves items below 5
    assert (one.num_users, one.num_items, one.report["num_interactions"]) == (25_253, 12_109, 240_745)
    stable = load_sequences(SequenceConfig(path=path, k_core=5, k_core_passes=0))
    assert stable.report["k_core"]["stable"] and stable.report["k_core"]["passes_run"] == 7
    assert (stable.num_users, stable.num_items, stable.report["num_interactions"]) == (24_303, 10_672, 231_780)
    assert stable.lengths.min() >= 5 and np.bincount(stable.seq_items).min() >= 5


def test_ml_100k_sorted_by_timestamp(shared_data):
    path = shared_data / "ml-100k" / "u.data"
    data = load_sequences(SequenceConfig(path=str(path), time_ordered=False))
    assert (data.num_users, data.num_items, data.report["num_interactions"]) == (943, 1_682, 100_000)
    assert data.report["splits"] == {"train": 754, "valid": 95, "test": 94}
    rows = np.loadtxt(path, dtype=np.int64, delimiter="|", skiprows=1)
    user = 0  # raw user 1: its sequence is its rows sorted by timestamp, ties in file order
    mine = rows[rows[:, 0] == data.user_raw[user]]
    expected = mine[np.argsort(mine[:, 3], kind="stable"), 1]
    assert sequences_of(data)[int(data.user_raw[user])] == expected.tolist()


def test_segments_match_python_slices(tmp_path):
    data = load_sequences(SequenceConfig(path=random_log(tmp_path, 30, seed=4)))
    rng = np.random.default_rng(0)
    users = rng.integers(0, data.num_users, size=25)
    lengths = data.lengths[users]
    ends = rng.integers(0, lengths + 1)
    starts = np.minimum(rng.integers(0, lengths + 1), ends)
    indptr, items = data.segments(users, starts, ends)
    for j, u in enumerate(users):
        seq = data.seq_items[data.seq_indptr[u] : data.seq_indptr[u + 1]].tolist()
        assert items[indptr[j] : indptr[j + 1]].tolist() == seq[starts[j] : ends[j]]
