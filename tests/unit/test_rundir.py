"""One run at a time in a run directory, and results only from runs that finished (distrec.run.rundir)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distrec.config import ConfigError
from distrec.run import rundir

ROOT = Path(__file__).resolve().parents[2]
TINY = ["data.synthetic.preset=tiny", "train.epochs=1", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]",
        "eval.select_metric=recall@20", "progress=false"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    rundir.acquire(tmp_path)
    with pytest.raises(ConfigError, match=f"in use by another run \\(pid {os.getpid()}"):
        rundir.acquire(tmp_path)  # this process is alive: a second run must wait
    rundir.release(tmp_path)
    assert not (tmp_path / rundir.LOCK).exists()
    # A run killed with its lock held: the pid is gone, so the lock is stale.
    (tmp_path / rundir.LOCK).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "then"}))
    rundir.acquire(tmp_path)
    assert json.loads((tmp_path / rundir.LOCK).read_text())["pid"] == os.getpid()
    rundir.release(tmp_path)
    # Another host's run cannot be checked from here: refused, and the message says what to do.
    (tmp_path / rundir.LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then"}))
    with pytest.raises(ConfigError, match="on elsewhere .* delete .*\\.lock if that run is gone"):
        rundir.acquire(tmp_path)
    rundir.release(tmp_path)  # not ours: left in place
    assert (tmp_path / rundir.LOCK).exists()


def test_publish_replaces_the_whole_result_and_a_fresh_run_shelves_a_leftover_attempt(tmp_path):
    for name, text in (("metrics.json", "old"), ("config.yaml", "old"), ("resumes.jsonl", "old")):
        (tmp_path / name).write_text(text)
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "stale.npy").write_text("old")
    (tmp_path / rundir.LIVE).mkdir(parents=True)
    (tmp_path / rundir.LIVE / "metrics.jsonl").write_text("{}\n")  # an attempt that never finished
    live = rundir.begin(tmp_path, resuming=False)
    assert list(live.iterdir()) == [] and len(list((tmp_path / "attempts").glob("failed-*"))) == 1
    for name in ("metrics.json", "config.yaml", "metrics.jsonl"):
        (live / name).write_text("new")
    (live / "embeddings").mkdir()
    (live / "embeddings" / "item_embeddings.npy").write_text("new")
    rundir.publish(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "config.yaml", "metrics.jsonl", "embeddings", "attempts"}
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == ["item_embeddings.npy"]
    assert all((tmp_path / n).read_text() == "new" for n in ("metrics.json", "config.yaml", "metrics.jsonl"))
    # Resuming a finished run to train on continues its published log in a new live attempt.
    live = rundir.begin(tmp_path, resuming=True)
    assert (live / "metrics.jsonl").read_text() == "new" and (tmp_path / "metrics.jsonl").read_text() == "new"


def _digest(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and "attempts" not in p.parts}


def _train(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distrec.train", *TINY, *extra, f"run_dir={run}"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_failed_run_leaves_the_earlier_result_untouched_and_says_where_its_files_are(tmp_path):
    run = tmp_path / "run"
    assert _train(run).returncode == 0
    before = _digest(run)
    assert "metrics.json" in before and "embeddings/item_embeddings.npy" in before
    failed = _train(run, "train.lr=1e30")  # diverges: a non-finite loss in the first epoch
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert "non-finite loss" in failed.stderr and "this run's files: " in failed.stderr
    where = Path(failed.stderr.split("this run's files: ")[1].split(";")[0])
    assert where.parent == run / "attempts" and (where / "config.yaml").exists()
    assert "lr: 1.0e+30" in (where / "config.yaml").read_text()
    assert _digest(run) == before  # config.yaml, metrics, data/ and embeddings: byte for byte


def test_a_second_run_on_a_run_dir_in_use_refuses_and_the_first_finishes(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "distrec.train", *TINY, "train.epochs=4", "train.batch_size=8",
                              f"run_dir={run}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while not (run / rundir.LOCK).exists() and time.time() - t0 < 60:
        time.sleep(0.05)
    second = _train(run)
    assert second.returncode == 2 and "is in use by another run" in second.stderr, second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert json.loads((run / "metrics.json").read_text())["test"] and not (run / rundir.LOCK).exists()
