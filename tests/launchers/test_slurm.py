"""A real Slurm: scripts/slurm_local.sh brings up a one-host cluster (installing Slurm 22.05,
munge and MariaDB from Debian's packages when missing), then launchers/README.md's Slurm
lines run as typed: `torchx run -s slurm ...`, `torchx status`, `torchx log`.

Opt-in (root, apt-get, ~1-2 min from a fresh machine): `pytest -m slurm tests/launchers`.
.ci/run runs it after the main suite."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = ["data.synthetic.preset=tiny", "train.epochs=1", "progress=false", "model.dim=16", "model.levels=[8,16]"]
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # an activated venv


def sh(*cmd: str, timeout_s: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=ENV)


def test_component_runs_on_a_real_slurm(tmp_path):
    t0 = time.monotonic()
    up = sh("bash", "scripts/slurm_local.sh", timeout_s=600)
    assert up.returncode == 0, f"scripts/slurm_local.sh failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-4000:]}"
    print(f"slurm_local.sh: {time.monotonic() - t0:.0f} s")
    # Again: it sees the daemons running and changes nothing.
    again = sh("bash", "scripts/slurm_local.sh", timeout_s=120)
    assert again.returncode == 0 and "starting" not in again.stderr, again.stderr

    run_dir = tmp_path / "run"
    # A 2-CPU host: say what the job needs (the defaults, 2 CPUs and 4 GB per rank, would wait forever).
    sub = sh("torchx", "run", "-s", "slurm", "launchers/components.py:train", "--nproc_per_node", "2", "--cpus", "2",
             "--mem_mb", "4000", "--", *TINY, f"run_dir={run_dir}")
    assert sub.returncode == 0, sub.stderr[-3000:]
    handle = sub.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"slurm://torchx/\d+", handle), sub.stdout
    job_id = handle.rsplit("/", 1)[1]
    try:
        t1 = time.monotonic()
        state = ""
        while time.monotonic() - t1 < 300:
            st = sh("torchx", "status", handle)
            if st.returncode != 0 and time.monotonic() - t1 < 30:  # sacct may not list a job in its first seconds
                time.sleep(2)
                continue
            assert st.returncode == 0, st.stderr[-2000:]
            state = re.search(r"State: (\w+)", st.stdout).group(1)
            if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            time.sleep(2)
        print(f"job {job_id}: {state} after {time.monotonic() - t1:.0f} s")
        err = sh("torchx", "log", handle)  # stderr by default: torchrun's lines
        out = sh("torchx", "log", "--streams", "stdout", handle)
        assert state == "SUCCEEDED", f"{state}\n{out.stdout[-3000:]}\n{err.stdout[-3000:]}\n{sh('sacct', '-j', job_id).stdout}"
        assert err.returncode == 0 and "train/0" in err.stdout, err.stderr[-2000:]
        assert out.returncode == 0 and "test metrics at every matryoshka dimension" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
        assert set(metrics) == {"8", "16"}
        assert all(math.isfinite(v) and 0 <= v <= 1 for dim in metrics.values() for v in dim.values()), metrics

        # `torchx run --wait` returns when the job ends, with its final state.
        waited = sh("torchx", "run", "--wait", "-s", "slurm", "launchers/components.py:train", "--nproc_per_node", "2",
                    "--cpus", "2", "--mem_mb", "4000", "--", *TINY, f"run_dir={tmp_path / 'waited'}", timeout_s=300)
        wait_id = waited.stdout.strip().splitlines()[-1].rsplit("/", 1)[1]
        for log in ROOT.glob(f"slurm-{wait_id}*"):
            log.unlink()
        assert waited.returncode == 0 and "Job finished: SUCCEEDED" in waited.stderr, waited.stderr[-3000:]
        assert (tmp_path / "waited" / "metrics.json").is_file()
    finally:
        sh("scancel", job_id)
        # The job's logs land in the directory torchx ran in (the checkout): slurm-<id>[-train-0].{out,err}.
        for log in ROOT.glob(f"slurm-{job_id}*"):
            log.unlink()
