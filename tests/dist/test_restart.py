"""A worker killed mid-run under `torchrun --max-restarts`: the job restarts its workers, resumes
from the last checkpoint by itself (train.resume=auto) and ends with the tables of a run that
was never interrupted."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# The chaos script's helpers (a job's worker processes, its logged epochs), not a copy of them.
_spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
chaos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)
ARGS = ["data.synthetic.preset=tiny", "train.batch_size=32", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]",
        "eval.select_metric=recall@20", "eval.patience=100", "train.checkpoint_every=1", "train.epochs=5", "progress=false"]


def _torchrun(run: Path, restarts: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "-m", "distrec.train", *ARGS, f"run_dir={run}"]
    log = open(run.parent / f"{run.name}.log", "w")
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


def test_a_killed_worker_restarts_resumes_and_ends_like_an_uninterrupted_run(tmp_path):
    straight = _torchrun(tmp_path / "straight", restarts=0)
    assert _wait(straight, 300) == 0
    job = _torchrun(tmp_path / "killed", restarts=1)
    t0 = time.time()
    while len(chaos.logged_epochs(tmp_path / "killed")) < 2 and time.time() - t0 < 300:
        time.sleep(0.05)
    time.sleep(0.3)  # inside epoch 3
    assert job.poll() is None, "the job ended before the kill"
    os.kill(sorted(chaos.children(job.pid))[-1], signal.SIGKILL)  # rank 1's worker
    assert _wait(job, 300) == 0
    log = (tmp_path / "killed.log").read_text()
    assert "resumed from" in log, log[-3000:]
    resumed = json.loads((tmp_path / "killed" / "resumes.jsonl").read_text().splitlines()[-1])
    assert resumed["after_epoch"] >= 2  # at most the killed epoch is redone
    assert chaos.logged_epochs(tmp_path / "killed") == [1, 2, 3, 4, 5]  # one record per epoch
    for name in ("user_embeddings", "item_embeddings"):
        a = np.load(tmp_path / "straight" / "embeddings" / f"{name}.npy")
        b = np.load(tmp_path / "killed" / "embeddings" / f"{name}.npy")
        np.testing.assert_allclose(b, a, atol=1e-5)  # DCP restores shards and optimizer state exactly
