"""distrec.experiments.search end to end on tiny data: its outputs, and that model selection never reads test.

Both searches run on a user_lines copy of the synthetic `tiny` preset: once with its real test
labels (refit at the end, test metrics read) and once with test labels replaced by random items.
Trials must be identical, value for value.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from distrec import config
from distrec.data import load_dataset
from distrec.experiments import search

pytestmark = pytest.mark.slow  # each search launches several training processes (~10 s each)

TINY = ["train.epochs=2", "train.batch_size=256", "eval.ks=[5,20]", "eval.select_metric=recall@20",
        "model.dim=16", "model.levels=[4,8,16]", "eval.every_epochs=1", "data.valid_fraction=0.1"]
SPACE = "train.lr: {log_uniform: [0.05, 1.0]}\ntrain.loss: {choice: [mrl, bpr]}\n"


def _write_user_lines(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lines = [" ".join(map(str, [users[s], *items[s:e]])) for s, e in zip(starts, np.r_[starts[1:], users.size])]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def data_sets(tmp_path_factory) -> dict[str, Path]:
    """clean/ and corrupted/, each with train.txt and test.txt; only test.txt differs. Every
    test item is also a training item, so both sets have the same users and items (ids map alike)."""
    root = tmp_path_factory.mktemp("user_lines")
    data = load_dataset(config.load(None, ["data.synthetic.preset=tiny"]).data)
    train_users = np.concatenate([data.train_users, data.valid_users])
    train_items = np.concatenate([data.train_items, data.valid_items])
    known = np.isin(data.test_items, train_items)
    test_users, test_items = data.test_users[known], data.test_items[known]
    random_items = np.random.default_rng(0).choice(np.unique(train_items), size=test_items.size)
    assert (random_items != test_items).mean() > 0.9
    sets = {}
    for name, items in (("clean", test_items), ("corrupted", random_items)):
        sets[name] = root / name
        sets[name].mkdir()
        _write_user_lines(sets[name] / "train.txt", train_users, train_items)
        _write_user_lines(sets[name] / "test.txt", test_users, items)
    return sets


def _search(tmp_path: Path, data_dir: Path, out: str, *flags: str) -> dict:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return search.main(["--space", str(space), "--trials", "2", "--nproc", "1", "--seed", "3", "--out", str(tmp_path / out),
                        *flags, *TINY, "data.format=user_lines", f"data.train={data_dir}/train.txt",
                        f"data.test={data_dir}/test.txt"])


@pytest.fixture(scope="module")
def clean_search(data_sets, tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("clean")
    return _search(tmp, data_sets["clean"], "out"), tmp / "out"


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_search_writes_its_table_and_tests_only_the_final_refit_run(clean_search):
    best, out = clean_search
    rows = _rows(out)
    assert [r["number"] for r in rows] == ["0", "1"] and {r["state"] for r in rows} == {"complete"}
    # The first trial is the config's own point (train.lr's default 0.2, train.loss mrl).
    assert (float(rows[0]["train.lr"]), rows[0]["train.loss"]) == (0.2, "mrl")
    assert all(float(r["value"]) > 0 and r["best_epoch"] in ("1", "2") for r in rows)
    assert (out / "trials.md").read_text().count("| complete |") == 2
    on_disk = json.loads((out / "best.json").read_text())
    assert on_disk == best
    assert best["valid"]["value"] == max(float(r["value"]) for r in rows)
    assert set(best["final"]["test"]["16"]) == {"recall@5", "ndcg@5", "recall@20", "ndcg@20"}
    assert "train.refit=true" in best["final"]["command"] and best["final"]["refit"] is True and best["date"]
    assert (out / "best_overrides.txt").read_text().split() == best["overrides"]
    assert set(best["params"]) == {"train.lr", "train.loss"}
    for trial in ("0000", "0001"):  # trials: no refit, no test tracking
        resolved = config.load(out / "trials" / trial / "config.yaml")
        assert resolved.train.refit is False and resolved.eval.track_test is False
        records = [json.loads(line) for line in (out / "trials" / trial / "metrics.jsonl").read_text().splitlines()]
        assert all("test" not in r and r["phase"] == "select" for r in records)
    assert json.loads((out / "final" / "metrics.json").read_text())["refit"] is True


def test_selection_is_the_same_with_corrupted_test_labels(clean_search, data_sets, tmp_path):
    clean, clean_out = clean_search
    corrupted = _search(tmp_path, data_sets["corrupted"], "out", "--no-refit")
    keep = ("number", "state", "train.lr", "train.loss", "value", "best_epoch", "epochs_run")
    assert [{k: r[k] for k in keep} for r in _rows(tmp_path / "out")] == [{k: r[k] for k in keep} for r in _rows(clean_out)]
    assert corrupted["params"] == clean["params"] and corrupted["valid"] == clean["valid"]
    assert corrupted["final"] is None and not (tmp_path / "out" / "final").exists()
    # The corruption is real: the trials' own test evaluations (which the search never reads) differ.
    for trial in ("0000", "0001"):
        tests = [json.loads((out / "trials" / trial / "metrics.json").read_text())["test"] for out in (clean_out, tmp_path / "out")]
        assert tests[0]["16"]["recall@20"] != tests[1]["16"]["recall@20"]


def test_budget_reserves_the_final_run_and_stops_starting_trials():
    now = [0.0]
    budget = search.Budget(100.0, clock=lambda: now[0])
    assert budget.trial_timeout() == 50.0  # half for the final run until a trial has completed
    now[0] = 20.0
    budget.done(20.0, complete=True)  # the final run is reserved 1.5 x the longest trial
    assert budget.trial_timeout() == pytest.approx(100 - 20 - 30)
    assert not budget.exhausted()
    now[0] = 67.0  # 33 s left, 30 reserved: 3 s is no trial
    assert budget.exhausted()
    unlimited = search.Budget(None)
    assert unlimited.trial_timeout() is None and not unlimited.exhausted() and unlimited.left() == float("inf")


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("20m", 1200.0), ("1.5h", 5400.0)])
def test_durations(text, seconds):
    assert search.parse_duration(text) == seconds


def test_a_bad_duration_is_one_line(capsys):
    with pytest.raises(SystemExit):
        search.parse_args(["--budget", "soon", "--out", "x"])
    assert "not a duration: 'soon'" in capsys.readouterr().err


def test_a_30_second_budget_ends_within_it_with_its_table_and_final_run(data_sets, tmp_path):
    import time

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    t0 = time.monotonic()
    best = search.main(["--space", str(space), "--budget", "30s", "--nproc", "1", "--seed", "3",
                        "--out", str(tmp_path / "out"), *TINY, "train.refit_from=selected", "train.refit_epochs=1",
                        "data.format=user_lines", f"data.train={data_sets['clean']}/train.txt",
                        f"data.test={data_sets['clean']}/test.txt"])
    wall = time.monotonic() - t0
    assert wall <= 30.0 + 2.0  # the budget, plus the time to notice a child's exit and write the table
    assert best["study"]["budget_seconds"] == 30.0 and best["study"]["pruner"] == "hyperband"
    rows = _rows(tmp_path / "out")
    assert rows and len(rows) == best["study"]["trials"]
    assert best["final"]["test"] is not None and best["final"]["refit"] is True
