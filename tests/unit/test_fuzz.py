"""Property-based fuzzing of the data readers, the splits, the config loader and `python -m distrec.train`.

Hypothesis generates malformed inputs of every accepted format (user_lines, log, Parquet,
RecBole .inter: bad ids, separators, line ends, headers, bytes, column types, truncated files)
and malformed config overrides. The properties:

- in process: `load_dataset` / `load_sequences` either give consistent data (every split
  non-empty where it must be, ids in range, splits disjoint) or raise DataError, one line,
  naming the file; `config.load(None, overrides)` gives a Config or raises ConfigError, one
  line, naming a config key. Any other exception is a bug;
- end to end: a few malformed runs of `python -m distrec.train` exit with code 2, print
  exactly one line on stderr and no traceback, and leave an earlier good run's published
  files byte-identical.

Budget: a small, derandomized example count per property (the file runs in well under a
minute on 2 cores, the same examples every time). For a long search:

    .venv/bin/python -m pytest -m fuzz tests/unit/test_fuzz.py            # FUZZ_LONG examples each, random
    DISTREC_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/unit/test_fuzz.py
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distrec import config
from distrec.config import ColumnsConfig, ConfigError, DataConfig, SequenceConfig
from distrec.data import DataError, InteractionData, load_dataset
from distrec.data.dataset import SPLITS
from distrec.data.sequences import SequenceData, load_sequences

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.fuzz  # `-m fuzz` selects this file and switches to the long budget
FUZZ_LONG = 2000  # examples per property under `-m fuzz`


@pytest.fixture
def budget(request) -> dict:
    """Hypothesis settings: small and derandomized by default, FUZZ_LONG random examples under `-m fuzz`,
    DISTREC_FUZZ_EXAMPLES examples when set."""
    long = "fuzz" in (request.config.getoption("markexpr") or "")
    env = os.environ.get("DISTREC_FUZZ_EXAMPLES")
    return {"examples": int(env) if env else FUZZ_LONG if long else None, "derandomize": not (long or env)}


def run_property(budget: dict, default_examples: int, strategy, check) -> None:
    """Run `check(example)` on `strategy`'s examples under `budget`."""
    @settings(max_examples=budget["examples"] or default_examples, derandomize=budget["derandomize"], database=None,
              deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
    @given(strategy)
    def prop(example):
        check(example)

    prop()


# ---------------------------------------------------------------- inputs: a good data set, then damage
#
# Every input starts as a small good data set (users with a few items each, timestamps, ratings),
# written in the format at hand, and then gets 0-3 mutations: a bad token in place of a field, a
# row with too few or too many fields, blank or comment lines, another separator, CR-only or CRLF
# line ends, one interaction per user, a header, damaged bytes. Most examples are thereby close
# to valid, so the checks after parsing (splits, sequences) are reached too.

BAD_TOKEN = st.sampled_from([
    "-1", "-0", "1.5", "1.", ".5", "1e3", "+3", "0x10", "", " ", "U7", "I 2", '"2"', "'3'", "9" * 19, "9" * 40,
    "nan", "inf", "-inf", "é", "日本", "\x00", "\x01", "\x7f", "\ufeff1", "1\x0b2", "\\N", "NULL", "null", "#",
    "a,b", "1|2", "1\t2", "1\r2",
]) | st.text(max_size=4)
LINE_ENDS = st.sampled_from(["\n", "\n", "\r\n", "\r"])
SEPARATORS = st.sampled_from([",", ",", "\t", " ", "|", ";", ", ", "  "])
MUTATIONS = st.lists(st.sampled_from(["token", "token", "fields", "blank", "comment", "single", "duplicate",
                                      "header", "bytes", "truncate"]), max_size=3)


@st.composite
def base_rows(draw) -> list[list[str]]:
    """[user, item, rating, timestamp] rows of a good data set: 1-12 users with 1-9 distinct items each."""
    rows, time = [], 1000
    for user in range(draw(st.integers(1, 12))):
        for item in draw(st.lists(st.integers(0, 25), min_size=1, max_size=9, unique=True)):
            time += draw(st.integers(0, 50))
            rows.append([str(user * 7 + 3), str(item), str(draw(st.integers(1, 5))), str(time)])
    return rows


def damage_rows(draw, rows: list[list[str]], mutations: list[str]) -> list[list[str]]:
    rows = [list(r) for r in rows]
    for kind in mutations:
        at = draw(st.integers(0, max(len(rows) - 1, 0)))
        if kind == "token" and rows and rows[at]:
            row = rows[at]
            row[draw(st.integers(0, len(row) - 1))] = draw(BAD_TOKEN)
        elif kind == "fields" and rows:
            rows[at] = rows[at][: draw(st.integers(0, 1))] if draw(st.booleans()) else rows[at] + ["7", "8"]
        elif kind == "blank":
            rows.insert(at, draw(st.sampled_from([[], [""], [" "]])))
        elif kind == "comment":
            rows.insert(at, ["# a comment"])
        elif kind == "single":  # every user keeps one interaction
            seen, kept = set(), []
            for row in rows:
                if row and row[0] not in seen:
                    seen.add(row[0])
                    kept.append(row)
            rows = kept
        elif kind == "duplicate":
            rows = rows + rows
    return rows


def damage_bytes(draw, data: bytes, mutations: list[str]) -> bytes:
    if "bytes" in mutations:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf", b"\r", b"\x1a"])
                                | st.binary(min_size=1, max_size=4)) + data[at:]
    if "truncate" in mutations and data:
        data = data[: draw(st.integers(0, len(data) - 1))]
    return data


def text_file(draw, rows: list[list[str]], mutations: list[str], header: str | None = None,
              sep: str | None = None) -> bytes:
    sep, end = sep or draw(SEPARATORS), draw(LINE_ENDS)
    lines = ([header] if header is not None else []) + [sep.join(row) for row in rows]
    text = end.join(lines) + (end if draw(st.integers(0, 3)) else "")
    return damage_bytes(draw, text.encode("utf-8", errors="surrogatepass"), mutations)


@st.composite
def user_lines_files(draw) -> tuple[bytes, bytes]:
    """(train, test): `user item item ...` lines; the test file holds an unseen item or two per user."""
    rows, mutations = draw(base_rows()), draw(MUTATIONS)
    by_user: dict[str, list[str]] = {}
    for user, item, _, _ in rows:
        by_user.setdefault(user, []).append(item)
    train = [[user, *items] for user, items in by_user.items()]
    test = [[user, str(26 + int(user) % 5)] for user in by_user]
    damaged = draw(st.sampled_from(["train", "train", "test", "equal"]))
    sep = draw(st.sampled_from([" ", " ", "\t", "  "]))
    if damaged == "equal":  # the test file is the training file
        train = test = damage_rows(draw, train, mutations)
    elif damaged == "train":
        train = damage_rows(draw, train, mutations)
    else:
        test = damage_rows(draw, test, mutations)
    return (text_file(draw, train, mutations if damaged != "test" else [], sep=sep),
            text_file(draw, test, mutations if damaged != "train" else [], sep=sep))


@st.composite
def log_files(draw) -> bytes:
    num_fields = draw(st.sampled_from([2, 2, 3, 4, 4]))
    mutations = draw(MUTATIONS)
    rows = damage_rows(draw, [r[:num_fields] for r in draw(base_rows())], mutations)
    header = ",".join(["user", "item", "rating", "timestamp"][:num_fields]) if "header" in mutations else None
    return text_file(draw, rows, mutations, header)


INTER_HEADERS = st.sampled_from([
    ["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
    ["item_id:token", "timestamp:float", "user_id:token", "rating:float"],
    ["user_id:token", "item_id:token"],
    ["user_id:token", "item_id:token", "rating:float", "timestamp"],
    ["user_id", "item_id:token", "rating:float", "timestamp:float"],
    ["user_id:token", "user_id:token", "rating:float", "timestamp:float"],
    ["user_id:token", "item:token", "rating:float", "timestamp:float"],
    ["user_id:token", "item_id:token", "rating:float", "timestamp:token_seq"],
])


@st.composite
def inter_files(draw) -> bytes:
    header = draw(INTER_HEADERS)
    mutations = draw(MUTATIONS)
    order = {"user": 0, "item": 1, "rating": 2, "timestamp": 3}
    columns = [order.get(h.split(":")[0].removesuffix("_id"), 0) for h in header]
    rows = [[r[c] for c in columns] for r in draw(base_rows())]
    return text_file(draw, damage_rows(draw, rows, mutations), mutations, "\t".join(header), sep="\t")


def id_column(draw, values: list[int]) -> pa.Array:
    """`values` as an id column of a drawn type: mostly int64, sometimes one no reader should take."""
    kind = draw(st.sampled_from(["int", "int", "int", "string", "int32", "negative", "uint", "float", "null",
                                 "bool", "binary", "dictionary", "timestamp", "large_string", "list"]))
    if kind == "negative":
        return pa.array([-v if i == 0 else v for i, v in enumerate(values)], pa.int64())
    if kind == "uint":
        return pa.array([2**64 - 1 if i == 0 else v for i, v in enumerate(values)], pa.uint64())
    if kind == "float":
        return pa.array([v + 0.5 * (i == 0) for i, v in enumerate(values)], pa.float64())
    if kind == "null":
        return pa.array([None if i == len(values) - 1 else v for i, v in enumerate(values)], pa.int64())
    if kind == "bool":
        return pa.array([v % 2 == 0 for v in values])
    if kind == "binary":
        return pa.array([str(v).encode() for v in values], pa.binary())
    if kind in ("string", "large_string", "dictionary"):
        text = [f"U{v}" if draw(st.integers(0, 4)) else draw(BAD_TOKEN) for v in values]
        array = pa.array(text, pa.large_string() if kind == "large_string" else pa.string())
        return array.dictionary_encode() if kind == "dictionary" else array
    if kind == "timestamp":
        return pa.array(values, pa.timestamp("s"))
    if kind == "list":
        return pa.array([[v] for v in values])
    return pa.array(values, pa.int32() if kind == "int32" else pa.int64())


@st.composite
def parquet_inputs(draw) -> list[tuple[str, bytes]]:
    """[(file name, bytes)]: one file, or the parts of a directory (whose schemas may clash)."""
    rows = draw(base_rows())
    mutations = draw(MUTATIONS)
    if "single" in mutations or "duplicate" in mutations:
        rows = damage_rows(draw, rows, [m for m in mutations if m in ("single", "duplicate")])
    num_parts = draw(st.sampled_from([1, 1, 1, 2, 3]))
    bounds = sorted(draw(st.lists(st.integers(0, len(rows)), min_size=num_parts - 1, max_size=num_parts - 1)))
    files = []
    for k, (lo, hi) in enumerate(zip([0, *bounds], [*bounds, len(rows)])):
        part = rows[lo:hi]
        names = draw(st.sampled_from([["user", "item", "rating", "timestamp"], ["user", "item"],
                                      ["item", "user", "timestamp"], ["user", "itm", "rating", "timestamp"]]))
        plain = {"user": [int(r[0]) for r in part], "item": [int(r[1]) for r in part],
                 "rating": [float(r[2]) for r in part], "timestamp": [int(r[3]) for r in part]}
        columns = {}
        for name in names:
            values = plain["item" if name == "itm" else name]
            if name in ("rating", "timestamp") and draw(st.integers(0, 5)) == 0:
                columns[name] = pa.array([str(v) for v in values]) if draw(st.booleans()) else \
                    pa.array([None] * len(values), pa.float64())
            else:
                columns[name] = id_column(draw, values) if draw(st.integers(0, 2)) == 0 else pa.array(values)
        sink = io.BytesIO()
        pq.write_table(pa.table(columns), sink)
        files.append((f"part-{k}.parquet", damage_bytes(draw, sink.getvalue(), mutations)))
    return files


# ---------------------------------------------------------------- checks


# Outcomes of one input: what a run makes of it. The properties allow only CLEAN and ACCEPTED.
CLEAN = "clean error"  # DataError / ConfigError, one line, naming the file or key
UNCLEAR = "unclear error"  # the right type, but several lines or naming no file / key
TRACEBACK = "traceback"  # any other exception: a run would print a traceback
MEANINGLESS = "accepted with meaningless results"  # loaded, but breaks a check_dataset / check_sequences rule
ACCEPTED = "accepted"  # loaded, consistent (a malformed-looking input can still be good data)
TALLY: dict[str, dict[str, int]] | None = None  # {property: {outcome: count}} when counting (see __main__)


def record(name: str, outcome: str, detail: str) -> None:
    """Count the outcome when tallying; otherwise fail the property unless it is CLEAN or ACCEPTED."""
    if TALLY is not None:
        counts = TALLY.setdefault(name, {})
        counts[outcome] = counts.get(outcome, 0) + 1
        return
    assert outcome in (CLEAN, ACCEPTED), f"{outcome}: {detail}"


def error_outcome(err: Exception, kind: type, names: list[str]) -> tuple[str, str]:
    """CLEAN for a `kind` error of one line naming one of `names` (files, or keys); else UNCLEAR or TRACEBACK."""
    message = f"{type(err).__name__}: {err}"
    if not isinstance(err, kind):
        return TRACEBACK, message
    if "\n" in str(err) or "\r" in str(err) or not any(n in str(err) for n in names):
        return UNCLEAR, f"{message} (should be one line naming one of {names})"
    return CLEAN, message


def check_dataset(data: InteractionData, cfg: DataConfig) -> None:
    """What every accepted data set must satisfy for its metrics to mean something."""
    num_users, num_items = data.num_users, data.num_items
    keys = {}
    for split in SPLITS:
        users, items = data.pairs(split)
        assert users.size == 0 or (0 <= users.min() and users.max() < num_users), split
        assert items.size == 0 or (0 <= items.min() and items.max() < num_items), split
        keys[split] = users * num_items + items
        assert np.all(np.diff(keys[split]) > 0), f"{split} not sorted and unique"
    assert keys["test"].size > 0, "accepted with no test pair"
    assert keys["valid"].size > 0 or cfg.valid_fraction == 0, "accepted with no validation pair"
    assert num_items >= 2
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not np.intersect1d(keys[a], keys[b]).size, f"{a} and {b} overlap"
    trained = np.bincount(data.train_users, minlength=num_users) > 0
    assert trained[data.test_users].all(), "a test user without training pairs"
    assert all("\n" not in w for w in data.report.get("warnings", []))
    json.dumps(data.report)


def check_sequences(data: SequenceData, cfg: DataConfig) -> None:
    assert data.test_users.size > 0, "accepted with no test user"
    assert data.valid_users.size > 0 or cfg.sequence.split[1] == 0, "accepted with no validation user"
    assert data.num_items >= 2 and data.lengths.min() >= 2
    json.dumps(data.report)


def load_or_error(name: str, cfg: DataConfig, paths: list[str], sequences: bool = False, **kw) -> None:
    """Load `cfg` and record the outcome: consistent data, or a DataError naming one of `paths`."""
    try:
        data = load_sequences(cfg) if sequences else load_dataset(cfg, **kw)
    except Exception as err:  # noqa: BLE001 - the property: DataError or nothing
        record(name, *error_outcome(err, DataError, paths))
        return
    try:
        (check_sequences if sequences else check_dataset)(data, cfg)
    except AssertionError as err:
        record(name, MEANINGLESS, str(err))
    else:
        record(name, ACCEPTED, "")


SPLIT_CHOICES = st.fixed_dictionaries({
    "valid_fraction": st.sampled_from([0.0, 0.1, 0.5]),
    "test_fraction": st.sampled_from([0.2, 0.5, 0.01]),
    "seed": st.integers(0, 3),
})
SEQUENCE_CHOICES = st.builds(
    SequenceConfig, time_ordered=st.sampled_from([None, True, False]), k_core=st.sampled_from([0, 0, 2]),
    split=st.sampled_from([(0.8, 0.1, 0.1), (0.4, 0.3, 0.3), (0.5, 0.0, 0.5)]),
)


def write(tmp: Path, name: str, data: bytes) -> str:
    (tmp / name).write_bytes(data)
    return str(tmp / name)


def check_user_lines(example) -> None:
    (train, test), splits = example
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write(Path(tmp), "train.txt", train), write(Path(tmp), "test.txt", test)]
        for cold in ("error", "drop"):
            cfg = DataConfig(format="user_lines", train=paths[0], test=paths[1], cold_test_users=cold,
                             **{k: v for k, v in splits.items() if k != "test_fraction"})
            load_or_error("user_lines", cfg, paths, drop_cold_test_users=cold == "drop")


def check_log(example) -> None:
    text, splits, header, min_rating, seq = example
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "log.csv", text)
        cfg = DataConfig(format="log", train=path, header=header, min_rating=min_rating, **splits)
        load_or_error("log", cfg, [path])
        load_or_error("log sequences", dataclasses.replace(cfg, sequence=seq), [path], sequences=True)


def check_recbole(example) -> None:
    text, splits, min_rating, seq = example
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "x.inter", text)
        cfg = DataConfig(format="recbole", train=path, min_rating=min_rating, **splits)
        load_or_error("recbole", cfg, [path])
        load_or_error("recbole sequences", dataclasses.replace(cfg, sequence=seq), [path], sequences=True)


def check_parquet(example) -> None:
    files, splits, min_rating, seq, renamed = example
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in"
        root.mkdir()
        for name, data in files:
            (root / name).write_bytes(data)
        path = str(root / files[0][0]) if len(files) == 1 else str(root)
        paths = [str(root)]  # a message names the file, a part of the directory, or the directory
        columns = ColumnsConfig(item="itm") if renamed else ColumnsConfig()
        cfg = DataConfig(format="parquet", train=path, min_rating=min_rating, columns=columns, **splits)
        load_or_error("parquet", cfg, paths)
        load_or_error("parquet sequences", dataclasses.replace(cfg, sequence=seq), paths, sequences=True)


RATINGS = st.sampled_from([None, None, 3.0])
# name: (examples per run by default, strategy, check); the names head the rows of the tally.
PROPERTIES = {
    "user_lines": (100, st.tuples(user_lines_files(), SPLIT_CHOICES), check_user_lines),
    "log": (100, st.tuples(log_files(), SPLIT_CHOICES, st.sampled_from([None, None, True, False]), RATINGS,
                          SEQUENCE_CHOICES), check_log),
    "recbole": (80, st.tuples(inter_files(), SPLIT_CHOICES, RATINGS, SEQUENCE_CHOICES), check_recbole),
    "parquet": (80, st.tuples(parquet_inputs(), SPLIT_CHOICES, RATINGS, SEQUENCE_CHOICES, st.booleans()),
                check_parquet),
}


@pytest.mark.parametrize("name", ["user_lines", "log", "recbole", "parquet"])
def test_fuzz_data_files(budget, name):
    run_property(budget, *PROPERTIES[name])


# ---------------------------------------------------------------- config overrides


def config_keys(cls: type = config.Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys.append(prefix + field.name)
            keys += config_keys(hints[field.name], prefix + field.name + ".")
        else:
            keys.append(prefix + field.name)
    return keys


KEYS = config_keys()
VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "1", "2", "0.5", "1e-3", "1e400", "-1e400", ".nan", ".inf", "nan", "true", "null",
                     "~", "[]", "[1, 2]", "[4,8,16]", "[0.8, 0.1, 0.1]", "{}", "{a: 1}", "[", "{", "]", "'", '"',
                     "!!python/object:os.system", "&a [*a]", "*a", "a: b: c", "- 1", "%YAML", "\t", "cpu", "log",
                     "tab", "recall@20", "x" * 300, "0x10", "1_000", "2022-01-01", "=", "a=b", "\x00", "é"]),
    st.text(max_size=8),
    st.integers().map(str),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map("=".join),
    st.tuples(st.sampled_from(KEYS + ["", "data.", ".data", "nope", "data.nope", "data.train.x", "model..dim",
                                      "train.lr.x.y"]), VALUES).map("=".join),
    st.text(max_size=12),
)
KEY_IN_MESSAGE = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in sorted(KEYS, key=len, reverse=True))
                            + r")(?![\w])")


def test_fuzz_config_overrides(budget):
    run_property(budget, *PROPERTIES["config"])


def check_overrides(overrides: list[str]) -> None:
    try:
        cfg = config.load(None, overrides)
    except Exception as err:  # noqa: BLE001 - the property: ConfigError or nothing
        # A known key, or the override itself (quoted) where it names none (`x`, `=1`, `nope=1`).
        found = KEY_IN_MESSAGE.search(str(err))
        record("config overrides", *error_outcome(err, ConfigError, [found.group(0)] if found else
                                                  [repr(o)[1:-1][:40] for o in overrides]))
    else:
        record("config overrides", ACCEPTED if isinstance(cfg, config.Config) else MEANINGLESS, repr(cfg))


PROPERTIES["config"] = (300, st.lists(OVERRIDE, min_size=1, max_size=3), check_overrides)


# ---------------------------------------------------------------- end to end: exit code 2, one line, outputs kept

TINY_RUN = ["train.epochs=1", "train.batch_size=512", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]",
            "eval.select_metric=recall@20", "progress=false", "device=cpu"]
# Malformed inputs, one per format family, and a run that only a bad override spoils.
BAD_RUNS = {
    "log_bad_field": ("log.csv", b"1,2\n1,3\n2,x,4\n", ["data.format=log"]),
    "user_lines_cr_equal": ("train.txt", b"1 2 3\r2 3 4\r", ["data.format=user_lines", "data.test={path}"]),
    "inter_bad_header": ("x.inter", b"user_id\titem_id:token\n1\t2\n", ["data.format=recbole"]),
    "parquet_truncated": ("x.parquet", b"PAR1\x00\x00garbage", ["data.format=parquet"]),
}


def published(run_dir: Path) -> dict[str, bytes]:
    """The bytes of every file of a run's results (not attempts/, locks or checkpoints)."""
    skip = ("attempts", ".lock", "checkpoint", "stdout.log", "stderr.log")
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not str(p.relative_to(run_dir)).startswith(skip)}


def train_cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distrec.train", f"run_dir={run_dir}", *TINY_RUN, *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_malformed_runs_exit_2_with_one_line_and_keep_an_earlier_run(tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.csv"
    good.write_text("".join(f"{u},{i}\n" for u in range(80) for i in rng.choice(60, rng.integers(4, 12), replace=False)))
    run_dir = tmp_path / "run"
    first = train_cli(run_dir, "data.format=log", f"data.train={good}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = published(run_dir)
    assert "metrics.json" in before
    mixed = []
    for name, (file, data, overrides) in BAD_RUNS.items():
        path = tmp_path / name / file
        path.parent.mkdir()
        path.write_bytes(data)
        result = train_cli(run_dir, f"data.train={path}", *(o.format(path=path) for o in overrides))
        lines = result.stderr.splitlines()
        assert result.returncode == 2, (name, result.stderr[-3000:])
        assert "Traceback" not in result.stderr and len(lines) == 1, (name, result.stderr[-3000:])
        assert str(path) in lines[0] and lines[0].startswith("error: "), (name, lines[0])
        after = published(run_dir)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if changed:
            mixed.append(f"{name}: {', '.join(changed)}")
    assert not mixed, f"outputs of a failed run mixed with an earlier run ({'; '.join(mixed)})"


def tally(examples: int) -> dict[str, dict[str, int]]:
    """{property: {outcome: count}} over `examples` derandomized examples of each property."""
    global TALLY
    TALLY = {}
    try:
        for name, (_, strategy, check) in PROPERTIES.items():
            run_property({"examples": examples, "derandomize": True}, examples, strategy, check)
        return TALLY
    finally:
        TALLY = None


if __name__ == "__main__":  # the docs/reliability.md table: python tests/unit/test_fuzz.py [EXAMPLES]
    counts = tally(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    outcomes = (CLEAN, TRACEBACK, UNCLEAR, MEANINGLESS, ACCEPTED)
    print("| input | tried | " + " | ".join(outcomes) + " |")
    print("|---" * (len(outcomes) + 2) + "|")
    for name, row in counts.items():
        print(f"| {name} | {sum(row.values())} | " + " | ".join(str(row.get(o, 0)) for o in outcomes) + " |")
