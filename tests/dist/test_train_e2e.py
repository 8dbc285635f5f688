"""train.main end to end: 2 gloo ranks against 1 process, outputs, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distrec import train
from tests.dist.launch import run_ranks

pytestmark = pytest.mark.dist

TINY = ["data.synthetic.preset=tiny", "train.epochs=3", "train.batch_size=256", "progress=false",
        "eval.ks=[5,20]", "eval.select_metric=recall@20", "model.dim=16", "model.levels=[4,8,16]"]


def _main(argv):
    return train.main(argv)


def test_two_ranks_train_like_one_process_and_write_outputs(tmp_path):
    # The same global batches and counter-based draws on 1 and 2 ranks: with uniform negatives
    # nothing discrete depends on the float summation order (MNS's argmax can flip at a near-tie,
    # tests/dist/test_resharding.py), so the two runs pick the same epoch and equal metrics.
    args = [*TINY, "train.sampler=uniform"]
    one = run_ranks(_main, 1, tmp_path, [*args, f"run_dir={tmp_path}/one"])[0]
    two = run_ranks(_main, 2, tmp_path, [*args, f"run_dir={tmp_path}/two"])
    for key in ("test", "valid", "best_epoch"):  # every rank holds the same reduced result
        assert two[0][key] == two[1][key]
    for result in (one, two[0]):
        assert set(result["test"]) == {"4", "8", "16"}
        assert set(result["test"]["16"]) == {"recall@5", "ndcg@5", "recall@20", "ndcg@20"}
        assert 1 <= result["best_epoch"] <= 3
    run = tmp_path / "two"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == two[0]["best_epoch"]
    assert metrics["train_seconds"] > 0
    assert set(metrics["seconds"]) == {"data", "train", "valid", "test"} and min(metrics["seconds"].values()) > 0
    assert metrics["seconds"]["train"] == metrics["train_seconds"]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    users = np.load(run / "embeddings" / "user_embeddings.npy")
    items = np.load(run / "embeddings" / "item_embeddings.npy")
    assert users.shape[1] == items.shape[1] == 16
    assert (run / "config.yaml").exists() and (run / "data" / "interactions.parquet").exists()
    # The model learned something: better than chance at full dimension.
    num_items = items.shape[0]
    assert metrics["test"]["16"]["recall@20"] > 2 * 20 / num_items
    assert one["best_epoch"] == two[0]["best_epoch"]
    for dim, row in one["test"].items():
        for metric, value in row.items():
            assert two[0]["test"][dim][metric] == pytest.approx(value, abs=1e-4), (dim, metric)


def run_cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "distrec.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.foo=1"], "unknown config key train.foo"),
        (["model.levels=[8,4,64]"], "strictly increasing"),
        (["model.levels=[8,128]"], "must end at model.dim=64"),
        (["train.optimizer=adam"], "needs a GPU"),
        (["model.item_sharding=row_wise"], "model.item_sharding=row_wise needs a GPU with model.collection=bag"),
        (["--config", "configs/nope.yaml"], "configs/nope.yaml does not exist"),
    ],
)
def test_bad_config_is_one_clear_line(args, message, tmp_path):
    out = run_cli([*args, f"run_dir={tmp_path}/r"], Path(__file__).resolve().parents[2])
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_non_finite_loss_stops_before_writing_results(tmp_path):
    out = run_cli([*TINY, "train.optimizer=sgd", "train.lr=1e30", f"run_dir={tmp_path}/r"], Path(__file__).resolve().parents[2])
    assert out.returncode == 2, out.stderr[-2000:]
    assert "non-finite loss" in out.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()
    assert not (tmp_path / "r" / "embeddings").exists()


def test_refit_trains_a_fresh_model_for_the_selected_epochs_and_tests_it(tmp_path):
    result = run_ranks(_main, 2, tmp_path, [*TINY, "train.refit=true", "eval.track_test=true", "eval.patience=1",
                                             f"run_dir={tmp_path}/r"])[0]
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    select = [r for r in records if r["phase"] == "select"]
    refit = [r for r in records if r["phase"] == "refit"]
    assert [r["epoch"] for r in refit] == list(range(1, result["best_epoch"] + 1))
    assert all("valid" not in r for r in refit) and all("valid" in r for r in select)
    # The final test evaluation is of the refit model after its last epoch.
    assert result["test"] == refit[-1]["test"]
    assert result["refit"] is True


def test_refit_from_the_selected_model_goes_on_for_refit_epochs(tmp_path):
    result = run_ranks(_main, 2, tmp_path, [*TINY, "train.epochs=4", "train.refit=true", "train.refit_from=selected",
                                             "train.refit_epochs=2", "eval.track_test=true", "eval.patience=1",
                                             f"run_dir={tmp_path}/r"])[0]
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    select = [r for r in records if r["phase"] == "select"]
    refit = [r for r in records if r["phase"] == "refit"]
    best = result["best_epoch"]
    # Its epochs go on counting from the selected one (new negative streams, not a replay).
    assert [r["epoch"] for r in refit] == [best + 1, best + 2]
    # It starts from the trained model: a fresh model's first epoch has the loss of the
    # selection's first epoch; the continued one starts well below it.
    assert refit[0]["loss"] < select[0]["loss"] - 0.01
    assert result["test"] == refit[-1]["test"] and result["refit"] is True


def test_phones_config_learns_on_the_real_split(tmp_path, shared_data):
    shared = shared_data
    result = run_ranks(_main, 2, tmp_path, ["--config", "configs/mrl4rec_phones.yaml", "train.epochs=4", "eval.every_epochs=2",
                                             "train.refit=false", "progress=false", f"run_dir={tmp_path}/r",
                                             f"data.train={shared}/amazon-phones/train.txt", f"data.test={shared}/amazon-phones/test.txt"])[0]
    # 4 epochs of MRL-M reach about 0.10 test Recall@20 at d = 64 (random ranking: ~0.002).
    assert result["test"]["64"]["recall@20"] > 0.08
    # Matryoshka: every prefix is a usable model, and more dimensions do not hurt much.
    assert result["test"]["8"]["recall@20"] > 0.05


def test_the_phones_config_runs_unchanged_on_other_files_in_that_format(tmp_path):
    rng = np.random.default_rng(0)
    train_lines, test_lines = [], []
    for user in range(60):
        items = rng.choice(40, size=8, replace=False)
        train_lines.append(" ".join(map(str, [user, *items[:6]])))
        test_lines.append(" ".join(map(str, [user, *items[6:]])))
    (tmp_path / "train.txt").write_text("\n".join(train_lines) + "\n")
    (tmp_path / "test.txt").write_text("\n".join(test_lines) + "\n")
    out = run_cli(["--config", "configs/mrl4rec_phones.yaml", f"data.train={tmp_path}/train.txt", f"data.test={tmp_path}/test.txt",
                   "train.epochs=2", "progress=false", f"run_dir={tmp_path}/r"], Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data: 60 users, 40 items" in out.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"4", "8", "16", "32", "64"}


def test_remi_config_trains_end_to_end_on_another_log(tmp_path):
    # configs/remi_video.yaml pointed at another time-ordered `user item` log, on 2 ranks.
    rng = np.random.default_rng(1)
    lines = [f"{u} {i}" for u in range(120) for i in rng.integers(0, 60, size=rng.integers(4, 15))]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    result = run_ranks(_main, 2, tmp_path, ["--config", "configs/remi_video.yaml", f"data.train={tmp_path}/log.txt",
                                             "train.epochs=2", "train.batch_size=64", "model.dim=16", "model.levels=[8,16]",
                                             "progress=false", f"run_dir={tmp_path}/r"])
    assert result[0]["test"] == result[1]["test"]
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics["test"]["16"]) == {"recall@20", "ndcg@20", "hitrate@20", "recall@50", "ndcg@50", "hitrate@50"}
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["routing"]["max_weight"] <= 1 for r in records)
    assert (tmp_path / "r" / "embeddings" / "router.pt").exists()
    assert not (tmp_path / "r" / "embeddings" / "user_embeddings.npy").exists()  # users are their histories


def test_sasrec_config_learns_the_order_of_a_sequence(tmp_path):
    # Every user walks the items in order from a random start (next item = last item + 1), so
    # the next items are predictable from the last one alone, and random ranking gets R@20 0.1.
    rng = np.random.default_rng(0)
    starts, lengths = rng.integers(0, 200, 300), rng.integers(6, 13, 300)
    lines = [f"{u} {(s + t) % 200}" for u, (s, n) in enumerate(zip(starts, lengths)) for t in range(n)]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    result = run_ranks(_main, 2, tmp_path, ["--config", "configs/sasrec_video.yaml", f"data.train={tmp_path}/log.txt",
                                             "train.epochs=12", "train.batch_size=64", "model.dim=16", "model.levels=[8,16]",
                                             "train.lr=0.3", "train.dense_lr=0.01", "model.dropout=0.0",
                                             "progress=false", f"run_dir={tmp_path}/r"])
    assert result[0]["test"] == result[1]["test"]
    assert result[0]["test"]["16"]["recall@20"] > 0.8, result[0]["test"]  # 0.98 when written
    assert (tmp_path / "r" / "embeddings" / "router.pt").exists()


def _tables(run: Path) -> dict:
    emb = run / "embeddings"
    return {name: np.load(emb / f"{name}.npy") for name in ("user_embeddings", "item_embeddings") if (emb / f"{name}.npy").exists()}


@pytest.mark.parametrize("world_size, task", [(2, "mrl4rec"), (1, "multi_interest")])
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(world_size, task, tmp_path):
    # Same run, either straight through 4 epochs or stopped after 2 and resumed: the fused
    # optimizer state, dense optimizers, the best-epoch snapshot and the loop state all come back.
    args = [*TINY, "train.epochs=4", "eval.patience=10", "train.checkpoint_every=1"]
    if task == "multi_interest":
        rng = np.random.default_rng(2)
        log = tmp_path / "log.txt"
        log.write_text("\n".join(f"{u} {i}" for u in range(80) for i in rng.integers(0, 40, size=rng.integers(4, 12))) + "\n")
        args = [a for a in args if not a.startswith(("data.synthetic", "eval.ks", "eval.select"))]
        args += ["--config", "configs/remi_video.yaml", f"data.train={log}", "train.batch_size=32", "eval.ks=[5,20]",
                 "eval.select_metric=recall@20"]
    straight = run_ranks(_main, world_size, tmp_path, [*args, f"run_dir={tmp_path}/straight"])[0]
    run_ranks(_main, world_size, tmp_path, [*args, "train.epochs=2", f"run_dir={tmp_path}/resumed"])
    resumed = run_ranks(_main, world_size, tmp_path, [*args, "train.resume=must", f"run_dir={tmp_path}/resumed"])[0]
    assert resumed["best_epoch"] == straight["best_epoch"]
    for d, row in straight["test"].items():
        for m, value in row.items():
            assert resumed["test"][d][m] == pytest.approx(value, abs=1e-6)
    a, b = _tables(tmp_path / "straight"), _tables(tmp_path / "resumed")
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-5)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]  # the log continues, nothing lost or repeated
    report = json.loads((tmp_path / "resumed" / "data" / "report.json").read_text())  # both tasks publish one
    assert isinstance(report.get("warnings", []), list) and report


def test_books_config_trains_on_a_small_preset_with_sampled_validation(tmp_path):
    # configs/books.yaml as committed, shrunk to the small preset and 2 epochs: it parses, trains,
    # validates on its fixed sample with a standard error, and tests every test user.
    result = run_ranks(_main, 2, tmp_path, ["--config", "configs/books.yaml", "data.synthetic.preset=small",
                                            "train.epochs=2", "eval.valid_users=500", f"run_dir={tmp_path}/b"])[0]
    records = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    valid = records[-1]["valid"]["64"]
    assert 0 < valid["recall@20_se"] < 0.05 and valid["recall@20"] > 0.05
    assert "recall@20_se" not in result["test"]["64"]  # test is never sampled
    assert set(result["seconds"]) == {"data", "train", "valid", "test"}


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_auto_continues_an_unfinished_run_and_refuses_other_data(tmp_path):
    root, run = Path(__file__).resolve().parents[2], tmp_path / "r"
    args = [*TINY, "eval.patience=10", "train.checkpoint_every=2", f"run_dir={run}"]
    first = run_cli([*args, "train.epochs=3"], root)
    assert first.returncode == 0, first.stderr
    assert _epochs(run) == [1, 2, 3] and (run / "checkpoint" / "finished").exists()
    # As if the job had been killed after epoch 3's record, before it finished: the checkpoint
    # is from epoch 2, so epoch 3 is redone and logged once.
    (run / "checkpoint" / "finished").unlink()
    (run / "metrics.json").unlink()
    again = run_cli([*args, "train.epochs=4"], root)  # train.resume left at its default, auto
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "after epoch 2" in again.stdout
    assert _epochs(run) == [1, 2, 3, 4]
    resumes = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["after_epoch"] == 2 and "train.epochs: 3 -> 4" in resumes[-1]["changes"]
    # A finished run starts afresh under auto.
    fresh = run_cli([*args, "train.epochs=2"], root)
    assert fresh.returncode == 0, fresh.stderr
    assert "resumed" not in fresh.stdout and _epochs(run) == [1, 2]
    # Another data set (or model shape) is refused in one line, before any shard is read.
    other = run_cli([*args, "train.epochs=2", "train.resume=must", "data.synthetic.seed=8"], root)
    assert other.returncode == 2 and "written for data=" in other.stderr and "Traceback" not in other.stderr
    wider = run_cli([*args, "train.epochs=2", "train.resume=must", "model.dim=32", "model.levels=[4,8,32]"], root)
    assert wider.returncode == 2 and "written for dim=16" in wider.stderr, wider.stderr
    none = run_cli([*TINY, "train.resume=must", f"run_dir={tmp_path}/empty"], root)
    assert none.returncode == 2 and "holds no checkpoint" in none.stderr
