"""Every documented way to launch distrec works: torchx (the users' literal line, --script),
torchrun, and the torchx component in launchers/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = ["data.synthetic.preset=tiny", "train.epochs=2", "progress=false", "model.dim=16", "model.levels=[8,16]"]


def run(cmd: list[str], timeout_s: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)


def check_run(out: subprocess.CompletedProcess, run_dir: Path, world_size: int) -> None:
    text = out.stdout + out.stderr
    clues = [line for line in text.splitlines() if any(w in line for w in ("Error", "error:", "what()", "terminate", "Signal", "signal"))]
    assert out.returncode == 0, "\n".join(clues[:40]) + "\n...\n" + text[-3000:]
    assert f"world size {world_size}" in text
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"8", "16"}


def test_users_literal_torchx_line_on_8_ranks(tmp_path):
    # `torchx run -s local_cwd dist.ddp -j 1x8 distrec/train.py`, plus overrides to keep it small.
    out = run([str(BIN / "torchx"), "run", "-s", "local_cwd", "dist.ddp", "-j", "1x8", "distrec/train.py", *TINY, f"run_dir={tmp_path}"])
    check_run(out, tmp_path, 8)
    assert "SUCCEEDED" in out.stderr + out.stdout


def test_torchx_with_script_and_config(tmp_path):
    out = run([str(BIN / "torchx"), "run", "-s", "local_cwd", "dist.ddp", "-j", "1x2", "--script", "distrec/train.py", "--",
               "--config", "configs/default.yaml", *TINY, f"run_dir={tmp_path}"])
    check_run(out, tmp_path, 2)


def test_torchrun_module(tmp_path):
    out = run([str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "distrec.train", *TINY, f"run_dir={tmp_path}"])
    check_run(out, tmp_path, 2)


def test_launcher_component_builds_a_torchrun_command():
    from launchers.components import train

    app = train("train.epochs=3", config="configs/mrl4rec_phones.yaml", nnodes=2, nproc_per_node=4)
    role = app.roles[0]
    assert role.num_replicas == 2
    assert role.entrypoint == "bash" or "torchrun" in " ".join(role.args)
    cmd = " ".join(role.args)
    assert "-m distrec.train" in cmd and "--config configs/mrl4rec_phones.yaml" in cmd and "train.epochs=3" in cmd
    assert "--nproc_per_node 4" in cmd or "--nproc_per_node=4" in cmd
    assert shutil.which("torchx", path=str(BIN)) is not None
    # Resources follow the ranks unless given.
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (8, 0, 4 * 4096)
    gpu = train(nproc_per_node=8, gpus=8).roles[0].resource
    assert (gpu.cpu, gpu.gpu, gpu.memMB) == (64, 8, 8 * 16384)
    fixed = train(nproc_per_node=8, cpus=16, mem_mb=1000).roles[0].resource
    assert (fixed.cpu, fixed.memMB) == (16, 1000)


def test_launcher_component_from_the_torchx_command_line():
    # torchx decodes each option from the component's type hints; a dry run shows the command.
    out = subprocess.run(
        [str(BIN / "torchx"), "run", "-s", "local_cwd", "--dryrun", "launchers/components.py:train",
         "--nproc_per_node", "2", "--config", "configs/mrl4rec_phones.yaml", "--", "train.epochs=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "distrec.train" in out.stdout and "configs/mrl4rec_phones.yaml" in out.stdout and "train.epochs=1" in out.stdout


def test_two_hosts_on_localhost_give_the_one_host_metrics(tmp_path):
    # Two torchrun launchers of one process each, meeting through a c10d rendezvous, form one
    # job of world size 2 as two hosts would (local_world_size 1, a rendezvous across agents,
    # the restart-safe store): the same metrics as one host running 2 processes.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"distrec-{port}", "-m", "distrec.train", *TINY,
            f"run_dir={tmp_path}/two_hosts"]
    hosts = [subprocess.Popen(node, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [h.communicate(timeout=400)[0] for h in hosts]
    assert [h.returncode for h in hosts] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert any("world size 2" in log for log in logs)
    one_host = run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "distrec.train", *TINY, f"run_dir={tmp_path}/one_host"])
    check_run(one_host, tmp_path / "one_host", 2)
    two = json.loads((tmp_path / "two_hosts" / "metrics.json").read_text())["test"]
    one = json.loads((tmp_path / "one_host" / "metrics.json").read_text())["test"]
    for d in one:
        for m, value in one[d].items():
            assert two[d][m] == pytest.approx(value, abs=1e-5), (d, m)
