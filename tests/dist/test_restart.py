"""Faults of a 2-rank job under torchrun, and what is left after them.

A worker killed mid-epoch: the job restarts its workers, resumes from the last checkpoint by
itself (train.resume=auto), loses at most one checkpoint interval, and ends with the tables of
a run that was never interrupted. SIGTERM (preemption): every rank writes a checkpoint at the
next step and exits 143; the same command resumes at the next batch, with the same result."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distrec.run import checkpoint, preemption

ROOT = Path(__file__).resolve().parents[2]
# The chaos script's helpers (a job's worker processes, its logged epochs), not a copy of them.
_spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)
ARGS = ["data.synthetic.preset=tiny", "train.batch_size=32", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]",
        "eval.select_metric=recall@20", "eval.patience=100", "train.epochs=5", "progress=false"]
EVERY_STEPS = 40  # of 135 steps per epoch: checkpoints fall mid-epoch


def _torchrun(run: Path, restarts: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "-m", "distrec.train", *ARGS, *extra, f"run_dir={run}"]
    log = open(run.parent / f"{run.name}.log", "a")
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait(proc: subprocess.Popen, timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for pid in chaos.children(proc.pid):  # torchrun's workers live in sessions of their own
            os.kill(pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the job hung for {timeout_s} s") from None


def _same_tables(a: Path, b: Path, atol: float = 0.0) -> None:
    for name in ("user_embeddings", "item_embeddings"):
        np.testing.assert_allclose(np.load(b / "embeddings" / f"{name}.npy"), np.load(a / "embeddings" / f"{name}.npy"), rtol=0, atol=atol)


def _wait_for_epoch(job: subprocess.Popen, run: Path, epochs: int) -> None:
    t0 = time.time()
    while len(chaos.logged_epochs(run)) < epochs and time.time() - t0 < 300:
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before the fault"


def _checkpoints_logged(log: str) -> list[tuple[int, int]]:
    """(epoch, batches) of every "checkpoint: epoch E, B/N batches" line."""
    return [(int(m[0]), int(m[1])) for m in re.findall(r"checkpoint: epoch (\d+), (\d+)/\d+ batches", log)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The uninterrupted run that the faulted ones must reproduce."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert _wait(_torchrun(run, 0), 300) == 0
    return run


def test_a_worker_killed_mid_epoch_restarts_resumes_and_ends_like_an_uninterrupted_run(straight, tmp_path):
    run = tmp_path / "killed"
    job = _torchrun(run, 1, f"train.checkpoint_every_steps={EVERY_STEPS}")
    _wait_for_epoch(job, run, 2)
    time.sleep(0.3)  # inside epoch 3
    os.kill(sorted(chaos.children(job.pid))[-1], signal.SIGKILL)  # rank 1's worker
    before = _checkpoints_logged((tmp_path / "killed.log").read_text())
    assert _wait(job, 300) == 0
    log = (tmp_path / "killed.log").read_text()
    assert "resumed from" in log, log[-3000:]
    resumed = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    # At most one interval is lost: the restart resumes at the last checkpoint logged before
    # the kill (one could be written after the log was read: then it resumes later still).
    ckpt_epoch, ckpt_batch = before[-1]
    steps = 135
    at = resumed["after_epoch"] * steps + resumed["batch"]
    assert at >= (ckpt_epoch - 1) * steps + ckpt_batch, (resumed, before[-3:])
    assert chaos.logged_epochs(run) == [1, 2, 3, 4, 5]  # one record per epoch
    _same_tables(straight, run)  # same world size, same draws, same summation order: bitwise


def test_sigterm_checkpoints_at_the_next_step_and_the_same_command_resumes_it_exactly(straight, tmp_path):
    run = tmp_path / "preempted"
    job = _torchrun(run, 0)  # no checkpoint interval: the preemption writes the only one
    _wait_for_epoch(job, run, 2)
    time.sleep(0.3)
    os.killpg(job.pid, signal.SIGTERM)  # as Slurm / Kubernetes do: torchrun passes it to the workers
    # The workers exit with preemption.EXIT_CODE; torchrun itself, signalled, exits 1.
    assert _wait(job, 120) != 0
    log = (tmp_path / "preempted.log").read_text()
    assert log.count("preempted (SIGTERM) at epoch 3") == 1, log[-3000:]  # rank 0 says it, once
    assert checkpoint.complete(run / "checkpoint" / "last") and checkpoint.complete(run / "checkpoint" / "best")
    loop = checkpoint.read_loop(run / "checkpoint" / "last")
    assert loop["epoch"] == 2 and 0 < loop["batch"] <= 135
    assert _wait(_torchrun(run, 0), 300) == 0
    assert chaos.logged_epochs(run) == [1, 2, 3, 4, 5]
    _same_tables(straight, run)
    assert json.loads((run / "metrics.json").read_text())["test"] == json.loads((straight / "metrics.json").read_text())["test"]


def test_sigterm_on_one_process_exits_143_with_one_line_and_resumes_exactly(tmp_path):
    args = [*ARGS, "train.epochs=2", "train.batch_size=8"]  # 540 steps per epoch: time to land mid-epoch
    cmd = [sys.executable, "-m", "distrec.train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run([*cmd, f"run_dir={tmp_path / 'straight'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = tmp_path / "preempted"
    job = subprocess.Popen([*cmd, f"run_dir={run}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_epoch(job, run, 1)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == preemption.EXIT_CODE == 143
    # The signal lands at a step of epoch 2, or (on a loaded machine) while epoch 1's end is still
    # being written: both stop at the next boundary, and the resume must be exact either way.
    assert re.match(r"preempted \(SIGTERM\) (at epoch 2, batch \d+/\d+|after epoch 1);", err.strip()), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    again = subprocess.run([*cmd, f"run_dir={run}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "resumed from" in again.stdout, again.stderr[-2000:]
    _same_tables(tmp_path / "straight", run)
