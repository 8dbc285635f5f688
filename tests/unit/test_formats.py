"""Input formats (user_lines, log, Parquet, RecBole .inter) and string ids: one data set, every format, one result.

A synthetic `tiny` data set is written in every format, with integer ids and with string ids
(`U0007`, `I0042`, zero-padded so string order is integer order): the splits must be identical,
pair for pair. Then the errors (missing column, null id), renamed and reordered columns,
data.min_rating, multi-interest sequences from Parquet / .inter timestamps, and end-to-end runs
of `python -m distrec.train` whose metrics and embeddings must agree across formats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec import config
from distrec.config import ColumnsConfig, DataConfig, SequenceConfig, SyntheticConfig
from distrec.data import DataError, dataset, ingest, load_dataset, read_cache
from distrec.data.sequences import load_sequences

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- writers


def user_strings(ids: np.ndarray) -> np.ndarray:
    return np.char.add("U", np.char.zfill(ids.astype(str), 4))


def item_strings(ids: np.ndarray) -> np.ndarray:
    return np.char.add("I", np.char.zfill(ids.astype(str), 4))


def write_log(path: Path, users, items, times=None, sep: str = ",", header: str | None = None) -> str:
    columns = [users, items] if times is None else [users, items, np.ones(len(users)), times]
    lines = [sep.join(map(str, row)) for row in zip(*columns)]
    path.write_text("".join(line + "\n" for line in ([header] if header else []) + lines))
    return str(path)


def write_user_lines(path: Path, users, items) -> str:
    users, items = np.asarray(users), np.asarray(items)
    order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], users.size]
    path.write_text("".join(" ".join(map(str, [users[s], *items[s:e]])) + "\n" for s, e in zip(starts, ends)))
    return str(path)


def write_parquet(path: Path, columns: dict, parts: int = 1) -> str:
    """One file, or a directory of `parts` files (part-0.parquet, ...) that read as one data set."""
    table = pa.table(columns)
    if parts == 1:
        pq.write_table(table, path)
        return str(path)
    path.mkdir()
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for k in range(parts):
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path / f"part-{k}.parquet")
    (path / "_SUCCESS").write_text("")  # as Spark writes it: skipped
    return str(path)


def write_inter(path: Path, columns: dict[str, tuple[str, np.ndarray]]) -> str:
    """A RecBole .inter file: {header field `name:type`: values}, tab separated."""
    names = list(columns)
    rows = zip(*(columns[n] for n in names))
    path.write_text("\t".join(names) + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def pool() -> dict[str, np.ndarray]:
    """Every pair of the synthetic `tiny` set, shuffled, with distinct timestamps and ratings 1..5."""
    data = load_dataset(DataConfig(synthetic=SyntheticConfig(preset="tiny"), valid_fraction=0.0))
    users = np.concatenate([data.train_users, data.test_users])
    items = np.concatenate([data.train_items, data.test_items])
    rng = np.random.default_rng(0)
    order = rng.permutation(users.size)
    return {"users": users[order] + 1, "items": items[order] + 1, "times": rng.permutation(users.size) * 7 + 1000,
            "ratings": rng.integers(1, 6, users.size).astype(float)}


def signature(data) -> dict:
    """Splits as raw-id pair sets, and the arrays themselves (identical contiguous ids expected)."""
    out = {"num": (data.num_users, data.num_items), "user_raw": data.user_raw.tolist(), "item_raw": data.item_raw.tolist()}
    for split in dataset.SPLITS:
        users, items = data.pairs(split)
        out[split] = (users.tolist(), items.tolist())
    return out


def as_ints(data) -> dict:
    """signature() with string raw ids `U0007` read back as 7."""
    sig = signature(data)
    sig["user_raw"] = [int(u[1:]) for u in sig["user_raw"]]
    sig["item_raw"] = [int(i[1:]) for i in sig["item_raw"]]
    return sig


# ---------------------------------------------------------------- one data set, every format


def test_data_formats_are_the_readers():
    assert config.DATA_FORMATS == ("synthetic", *ingest.READERS)


def one_pool_configs(tmp: Path, pool: dict, strings: bool) -> dict[str, DataConfig]:
    users, items = pool["users"], pool["items"]
    if strings:
        users, items = user_strings(users), item_strings(items)
    tmp.mkdir()
    cols = {"user": users, "item": items}
    return {
        "log": DataConfig(format="log", train=write_log(tmp / "log.csv", users, items)),
        "parquet": DataConfig(format="parquet", train=write_parquet(tmp / "all.parquet", cols)),
        "parquet_dir": DataConfig(format="parquet", train=write_parquet(tmp / "parts", cols, parts=3)),
        "recbole": DataConfig(format="recbole", train=write_inter(
            tmp / "x.inter", {"user_id:token": users, "item_id:token": items})),
    }


def test_one_pool_in_every_format_gives_identical_splits(tmp_path, pool):
    results = {}
    for strings in (False, True):
        for name, cfg in one_pool_configs(tmp_path / f"s{int(strings)}", pool, strings).items():
            data = load_dataset(cfg)
            results[name, strings] = as_ints(data) if strings else signature(data)
            if strings:
                assert data.user_raw.dtype.kind == "U" and data.user_raw[0] == "U0001"
    reference = results["log", False]
    assert sum(len(reference[s][0]) for s in dataset.SPLITS) == pool["users"].size
    for key, result in results.items():
        assert result == reference, key


def test_given_train_and_test_in_every_format_give_identical_splits(tmp_path, pool):
    n = pool["users"].size
    is_test = np.random.default_rng(1).random(n) < 0.2
    results = {}
    for strings in (False, True):
        users, items = pool["users"], pool["items"]
        if strings:
            users, items = user_strings(users), item_strings(items)
        tmp = tmp_path / f"s{int(strings)}"
        tmp.mkdir()
        files = {}
        for part, mask in (("train", ~is_test), ("test", is_test)):
            u, i = users[mask], items[mask]
            files[part] = {
                "user_lines": write_user_lines(tmp / f"{part}.txt", u, i),
                "log": write_log(tmp / f"{part}.csv", u, i, sep="\t", header="user\titem"),
                "parquet": write_parquet(tmp / f"{part}.parquet", {"user": u, "item": i}),
                "recbole": write_inter(tmp / f"{part}.inter", {"item_id:token": i, "user_id:token": u}),
            }
        for fmt in files["train"]:
            cfg = DataConfig(format=fmt, train=files["train"][fmt], test=files["test"][fmt], cold_test_users="drop")
            data = load_dataset(cfg, drop_cold_test_users=True)
            results[fmt, strings] = as_ints(data) if strings else signature(data)
    reference = results["user_lines", False]
    for key, result in results.items():
        assert result == reference, key


def test_string_ids_round_trip_through_the_cache(tmp_path):
    log = write_log(tmp_path / "log.csv", ["b", "a", "a", "c", "b"], ["B00XYZ", "B00XYZ", "x1", "x1", "7"])
    # Users a and b have two pairs each: test_fraction=0.5 holds out at least one of them.
    data = load_dataset(DataConfig(format="log", train=log, test_fraction=0.5, valid_fraction=0.0),
                        out_dir=tmp_path / "ds")
    assert data.user_raw.tolist() == ["a", "b", "c"] and data.item_raw.tolist() == ["7", "B00XYZ", "x1"]
    back = read_cache(tmp_path / "ds")
    assert back == data and back.user_raw.dtype.kind == "U"
    assert str(pq.read_schema(tmp_path / "ds" / "users.parquet").field("raw").type) == "string"
    assert json.loads((tmp_path / "ds" / "report.json").read_text())["num_users"] == 3


def raw_ids_of(pairs: ingest.Pairs) -> tuple[list, list]:
    """The sorted raw user and item ids of `pairs`, as load_dataset would number them."""
    def ids(codes, names):
        kept = dataset.unique(codes)
        return (kept if names is None else names[kept]).tolist()
    return ids(pairs.users, pairs.user_names), ids(pairs.items, pairs.item_names)


def test_former_id_errors_are_string_ids(tmp_path):
    """Text in an id column makes that column strings; numbers-only columns keep their checks."""
    for text, users, items in (
        ("1,2\n3,12a\n", [1, 3], ["12a", "2"]),
        ("user|item\n1|2\n3|x\n", [1, 3], ["2", "x"]),
        ("1,0x10\n", [1], ["0x10"]),
        ('1,"2"\n', [1], ['"2"']),
        ("u 1, 5\nu 2,6\n", ["u 1", "u 2"], [5, 6]),  # spaces around a comma-separated field are trimmed
    ):
        path = tmp_path / "log.csv"
        path.write_text(text)
        # Too few pairs for a split (load_dataset refuses those): the ids as the reader gives them.
        pairs = ingest.read(DataConfig(format="log", train=str(path)))
        assert raw_ids_of(pairs) == (users, items), text
    cfg = DataConfig(format="user_lines", train=write_log(tmp_path / "tr.txt", ["U1"], ["a,b"], sep=" "),
                     test=write_log(tmp_path / "te.txt", ["U1"], [17], sep=" "), valid_fraction=0.0)
    data = load_dataset(cfg)  # an integer test column meets a string train column: both strings
    assert data.item_raw.tolist() == ["17", "a,b"] and data.test_items.tolist() == [0]


# ---------------------------------------------------------------- columns, errors


def test_parquet_columns_renamed_and_only_needed_ones_read(tmp_path, pool, monkeypatch):
    users, items = user_strings(pool["users"]), item_strings(pool["items"])
    plain = load_dataset(DataConfig(format="parquet", train=write_parquet(tmp_path / "a.parquet", {"user": users, "item": items})))
    renamed = write_parquet(tmp_path / "b.parquet", {
        "note": np.full(users.size, "x"), "product": pa.array(items).dictionary_encode(), "customer_id": users,
        "ts": pool["times"]})
    read_columns, real = [], ingest.pads

    class Spy:  # pyarrow's Dataset type cannot be patched: wrap the object instead
        def __init__(self, *args, **kw):
            self.dataset = real.dataset(*args, **kw)

        def to_table(self, columns=None, **kw):
            read_columns.append(columns)
            return self.dataset.to_table(columns=columns, **kw)

    monkeypatch.setattr(ingest, "pads", types.SimpleNamespace(dataset=Spy))
    cfg = DataConfig(format="parquet", train=renamed, columns=ColumnsConfig(user="customer_id", item="product"))
    assert signature(load_dataset(cfg)) == signature(plain)
    assert read_columns == [["customer_id", "product"]]  # not `note`, not `ts` (MF needs no time)
    over = config.load(None, ["data.format=parquet", f"data.train={renamed}", "data.columns.user=customer_id",
                              "data.columns.item=product"])
    assert over.data.columns == cfg.columns


def test_missing_column_and_null_ids_name_file_row_and_columns(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"customer_id": ["a", "b"], "item": [1, 2]})
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(format="parquet", train=path))
    assert str(err.value) == (f"{path}: no column 'user' (data.columns.user); the columns are customer_id, item")
    named = DataConfig(format="parquet", train=path, columns=ColumnsConfig(user="customer_id", timestamp="when"))
    with pytest.raises(DataError, match=r"no column 'when' \(data.columns.timestamp\)"):
        load_sequences(named)  # a timestamp column named explicitly must exist
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(pa.table({"user": ["a", "b"], "item": ["x", "y"]}), parts / "part-0.parquet")
    pq.write_table(pa.table({"user": ["c", None, "d"], "item": ["x", "y", "z"]}), parts / "part-1.parquet")
    with pytest.raises(DataError, match=r"part-1\.parquet: row 2 \(column 'user'\): null user id"):
        load_dataset(DataConfig(format="parquet", train=str(parts)))
    pq.write_table(pa.table({"user": [1, -2], "item": [3, 4]}), tmp_path / "neg.parquet")
    with pytest.raises(DataError, match=r"neg\.parquet: row 2 \(column 'user'\): negative user id -2"):
        load_dataset(DataConfig(format="parquet", train=str(tmp_path / "neg.parquet")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.parquet files in this directory \(set by data\.train\)"):
        load_dataset(DataConfig(format="parquet", train=str(tmp_path / "empty")))
    inter = write_inter(tmp_path / "x.inter", {"user_id:token": ["a", "b"], "rating:float": [1, 2]})
    with pytest.raises(DataError, match=r"x\.inter:1: no column 'item_id' \(data.columns.item\); the columns are user_id, rating"):
        load_dataset(DataConfig(format="recbole", train=inter))
    (tmp_path / "bad.inter").write_text("user_id item_id\n1 2\n")
    with pytest.raises(DataError, match=r"bad\.inter:1: header field 'user_id item_id' is not `name:type`"):
        load_dataset(DataConfig(format="recbole", train=str(tmp_path / "bad.inter")))
    (tmp_path / "gap.inter").write_text("user_id:token\titem_id:token\na\tb\n\nc\t\n")
    with pytest.raises(DataError, match=r"gap\.inter:4: empty item field"):
        load_dataset(DataConfig(format="recbole", train=str(tmp_path / "gap.inter")))


def test_inter_columns_in_any_order_with_extra_columns(tmp_path, pool):
    users, items = user_strings(pool["users"]), item_strings(pool["items"])
    reference = load_dataset(DataConfig(format="log", train=write_log(tmp_path / "log.csv", users, items)))
    path = write_inter(tmp_path / "ml.inter", {
        "timestamp:float": pool["times"].astype(float), "item_id:token": items, "rating:float": pool["ratings"],
        "tags:token_seq": np.full(users.size, "drama comedy"), "user_id:token": users})
    assert signature(load_dataset(DataConfig(format="recbole", train=path))) == signature(reference)
    # A directory of .inter files is one data set, as a directory of Parquet files.
    (tmp_path / "dir").mkdir()
    half = users.size // 2
    for k, part in enumerate((slice(0, half), slice(half, None))):
        write_inter(tmp_path / "dir" / f"p{k}.inter", {"user_id:token": users[part], "item_id:token": items[part]})
    assert signature(load_dataset(DataConfig(format="recbole", train=str(tmp_path / "dir")))) == signature(reference)


def test_min_rating_filters_alike_in_log_parquet_and_inter(tmp_path, pool):
    users, items, ratings = pool["users"], pool["items"], pool["ratings"]
    log = tmp_path / "log.csv"
    log.write_text("".join(f"{u},{i},{r}\n" for u, i, r in zip(users, items, ratings)))
    results = {}
    for fmt, path in (
        ("log", str(log)),
        ("parquet", write_parquet(tmp_path / "r.parquet", {"user": users, "item": items, "stars": ratings})),
        ("recbole", write_inter(tmp_path / "r.inter", {"user_id:token": users, "item_id:token": items,
                                                      "rating:float": ratings})),
    ):
        columns = ColumnsConfig(rating="stars") if fmt == "parquet" else ColumnsConfig()
        data = load_dataset(DataConfig(format=fmt, train=path, min_rating=4.0, columns=columns))
        assert data.report["filtered"]["rating_below_min"] == int((ratings < 4).sum())
        assert data.report["pairs_read"] - sum(data.report["filtered"].values()) == sum(data.report["splits"].values())
        results[fmt] = signature(data)
    assert results["log"] == results["parquet"] == results["recbole"]
    with pytest.raises(DataError, match="no column 'rating'"):
        load_dataset(DataConfig(format="parquet", train=write_parquet(tmp_path / "n.parquet", {"user": users, "item": items}),
                                min_rating=4.0))


def test_config_checks_columns_and_formats():
    with pytest.raises(config.ConfigError, match="data.columns names the columns of parquet and recbole"):
        config.load(None, ["data.format=log", "data.train=/x", "data.columns.user=id"])
    with pytest.raises(config.ConfigError, match="data.columns.item and data.columns.user both name column 'id'"):
        config.load(None, ["data.format=parquet", "data.train=/x", "data.columns.user=id", "data.columns.item=id"])
    with pytest.raises(config.ConfigError, match="data.format=parquet needs data.train"):
        config.load(None, ["data.format=parquet"])
    with pytest.raises(config.ConfigError, match="data.min_rating filters on a rating column"):
        config.load(None, ["data.min_rating=3"])
    with pytest.raises(config.ConfigError, match="unknown config key data.columns.users"):
        config.load(None, ["data.format=parquet", "data.train=/x", "data.columns.users=id"])
    cfg = config.load(None, ["model.task=multi_interest", "train.loss=softmax", "data.format=recbole", "data.train=/x"])
    assert cfg.data.format == "recbole" and cfg.data.sequence.time_ordered is None


# ---------------------------------------------------------------- sequences


def sequences_of(data) -> dict:
    return {data.user_raw[u].item(): data.item_raw[data.seq_items[data.seq_indptr[u]:data.seq_indptr[u + 1]]].tolist()
            for u in range(data.num_users)}


def test_multi_interest_sequences_from_parquet_and_inter_timestamps_equal_the_time_ordered_log(tmp_path, pool):
    users, items, times = user_strings(pool["users"]), item_strings(pool["items"]), pool["times"]
    by_time = np.argsort(times, kind="stable")
    seq = SequenceConfig(split=(0.8, 0.1, 0.1))
    log = load_sequences(DataConfig(format="log", train=write_log(tmp_path / "log.txt", users[by_time], items[by_time],
                                                                   sep=" "), sequence=seq))
    # The pool is shuffled: only the timestamp column gives the order (the default for named columns).
    shuffled = write_parquet(tmp_path / "seq", {"user": users, "item": items, "timestamp": times}, parts=3)
    from_parquet = load_sequences(DataConfig(format="parquet", train=shuffled, sequence=seq))
    inter = write_inter(tmp_path / "seq.inter", {"item_id:token": items, "user_id:token": users,
                                                 "timestamp:float": times.astype(float)})
    from_inter = load_sequences(DataConfig(format="recbole", train=inter, sequence=seq))
    stamped_log = write_log(tmp_path / "stamped.txt", users, items, times, sep="\t")
    from_stamped_log = load_sequences(DataConfig(format="log", train=stamped_log,
                                                 sequence=SequenceConfig(time_ordered=False)))
    for other in (from_parquet, from_inter, from_stamped_log):
        assert sequences_of(other) == sequences_of(log)
        for name in ("seq_indptr", "seq_items", "train_users", "valid_users", "test_users", "user_raw", "item_raw"):
            assert np.array_equal(getattr(other, name), getattr(log, name)), name
    assert from_parquet.report["source"]["time_ordered"] is False and log.report["source"]["time_ordered"] is True
    # time_ordered=true keeps file order even with a timestamp column: the shuffled order then.
    file_order = load_sequences(DataConfig(format="parquet", train=shuffled, sequence=SequenceConfig(time_ordered=True)))
    assert sequences_of(file_order) != sequences_of(log)
    no_time = write_parquet(tmp_path / "nt.parquet", {"user": users, "item": items})
    with pytest.raises(DataError, match=r"nt\.parquet: data\.sequence\.time_ordered=false .* no column 'timestamp'"):
        load_sequences(DataConfig(format="parquet", train=no_time, sequence=SequenceConfig(time_ordered=False)))


# ---------------------------------------------------------------- end to end


TINY_RUN = ["train.epochs=1", "train.batch_size=512", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]",
            "eval.select_metric=recall@20", "progress=false", "device=cpu"]


def run_train(run_dir: Path, *overrides: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "distrec.train", f"run_dir={run_dir}", *TINY_RUN, *overrides],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow  # three training processes (~13 s together), as the other end-to-end tests
def test_train_end_to_end_string_ids_in_parquet_and_inter_match_integer_log(tmp_path, pool):
    users, items = pool["users"], pool["items"]
    log = write_log(tmp_path / "log.csv", users, items)
    parquet = write_parquet(tmp_path / "parts", {"customer_id": user_strings(users), "item": item_strings(items)}, parts=3)
    inter = write_inter(tmp_path / "x.inter", {"item_id:token": item_strings(items), "user_id:token": user_strings(users)})
    runs = {
        "log": run_train(tmp_path / "log", "data.format=log", f"data.train={log}"),
        "parquet": run_train(tmp_path / "parquet", "data.format=parquet", f"data.train={parquet}",
                             "data.columns.user=customer_id"),
        "recbole": run_train(tmp_path / "recbole", "data.format=recbole", f"data.train={inter}"),
    }
    assert runs["parquet"]["test"] == runs["log"]["test"] == runs["recbole"]["test"]
    assert runs["log"]["test"]["16"]["recall@20"] > 0
    emb = {name: tmp_path / name / "embeddings" for name in runs}
    int_ids = np.load(emb["log"] / "user_ids.npy")
    for name in ("parquet", "recbole"):
        user_ids = np.load(emb[name] / "user_ids.npy")  # no allow_pickle: a unicode array
        item_ids = np.load(emb[name] / "item_ids.npy")
        assert user_ids.dtype.kind == "U" and item_ids.dtype.kind == "U"
        assert user_ids.tolist() == user_strings(int_ids).tolist()  # row k of user_embeddings is user_ids[k]
        assert item_ids.tolist() == item_strings(np.load(emb["log"] / "item_ids.npy")).tolist()
        assert np.array_equal(np.load(emb[name] / "user_embeddings.npy"), np.load(emb["log"] / "user_embeddings.npy"))


@pytest.mark.slow  # two REMI training processes
def test_multi_interest_trains_on_string_ids_from_parquet_like_on_the_integer_log(tmp_path, pool):
    users, items, times = pool["users"], pool["items"], pool["times"]
    order = np.lexsort((times, users))  # the log is time-ordered in file order; Parquet is sorted by its column
    log = write_log(tmp_path / "log.txt", users[order], items[order], sep=" ")
    parquet = write_parquet(tmp_path / "p.parquet", {"user": user_strings(users), "item": item_strings(items), "ts": times})
    common = ["model.task=multi_interest", "train.loss=softmax", "train.batch_size=64"]
    runs = {
        "log": run_train(tmp_path / "log", "data.format=log", f"data.train={log}", *common),
        "parquet": run_train(tmp_path / "parquet", "data.format=parquet", f"data.train={parquet}",
                             "data.columns.timestamp=ts", *common),
    }
    assert runs["parquet"]["test"] == runs["log"]["test"] and runs["log"]["test"]["16"]["recall@20"] > 0
    item_ids = np.load(tmp_path / "parquet" / "embeddings" / "item_ids.npy")
    assert item_ids.dtype.kind == "U"
    assert item_ids.tolist() == item_strings(np.load(tmp_path / "log" / "embeddings" / "item_ids.npy")).tolist()
