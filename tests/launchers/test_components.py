"""The cluster launch lines of launchers/README.md, as a user types them, in dry runs: the
Volcano job that `torchx run -s kubernetes` would create and the sbatch script that
`torchx run -s slurm` would submit. Neither needs a cluster (the real Slurm run is in
test_slurm.py, opt-in)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kubernetes  # noqa: F401  (torchx's kubernetes dry run needs it: scripts/setup.sh installs the `kubernetes` extra)
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def torchx(*args: str, timeout_s: int = 120) -> subprocess.CompletedProcess:
    """`torchx ...` from the repository root with the venv's bin on PATH, as after `source .venv/bin/activate`."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([str(BIN / "torchx"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def scheduler_request(out: subprocess.CompletedProcess) -> str:
    text = out.stdout
    assert "=== SCHEDULER REQUEST ===" in text, text[-2000:]
    return text.split("=== SCHEDULER REQUEST ===", 1)[1]


def volcano_job(*args: str) -> dict:
    out = torchx("run", "-s", "kubernetes", "--workspace", "", "--dryrun", "launchers/components.py:train", *args)
    return yaml.safe_load(scheduler_request(out))


def test_kubernetes_two_hosts_volcano_job():
    job = volcano_job("--image", "registry.example.com/distrec:cpu", "--nnodes", "2", "--nproc_per_node", "2",
                      "--mounts", "type=volume,src=distrec-runs,dst=/mnt/runs",
                      "--config", "configs/mrl4rec_phones.yaml", "--", "train.epochs=5", "run_dir=/mnt/runs/phones")
    assert job["apiVersion"].startswith("batch.volcano.sh/") and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["schedulerName"] == "volcano" and spec["queue"] == "default"  # .torchxconfig [kubernetes]
    tasks = spec["tasks"]
    # One Volcano task per host, each one pod.
    assert [t["name"] for t in tasks] == ["train-0", "train-1"] and [t["replicas"] for t in tasks] == [1, 1]
    assert spec["maxRetry"] == 0 and all("policies" not in t for t in tasks)
    endpoints = []
    for i, task in enumerate(tasks):
        pod = task["template"]["spec"]
        assert pod["restartPolicy"] == "Never"  # restarts are Volcano's (max_retries), not the kubelet's
        (c,) = pod["containers"]
        assert c["image"] == "registry.example.com/distrec:cpu"
        assert c["command"][:2] == ["bash", "-c"]
        cmd = c["command"][2]
        assert cmd.startswith("torchrun --rdzv_backend c10d --rdzv_endpoint ")
        assert "--nnodes 2 --nproc_per_node 2" in cmd
        assert "-m distrec.train --config configs/mrl4rec_phones.yaml train.epochs=5 run_dir=/mnt/runs/phones" in cmd
        endpoints.append(cmd.split("--rdzv_endpoint ", 1)[1].split()[0])
        # Resources follow the ranks: 2 CPUs / 4 GB per CPU rank.
        assert c["resources"]["limits"] == {"cpu": "4000m", "memory": "8192M"}
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"c10d": 29500}
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env.get("TORCHX_RANK0_HOST") == ("localhost" if i == 0 else None)
        # The shared run_dir: a PersistentVolumeClaim mounted at /mnt/runs in every pod.
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/mnt/runs"]]["persistentVolumeClaim"] == {"claimName": "distrec-runs"}
    # Host 0 serves the c10d store (on itself); host 1 finds it through Volcano's svc plugin.
    assert endpoints == ["${TORCHX_RANK0_HOST:=localhost}:29500", "${VC_TRAIN_0_HOSTS:=localhost}:29500"]
    assert "--publish-not-ready-addresses" in spec["plugins"]["svc"]


def test_kubernetes_gpu_hosts_retries_and_a_host_path():
    job = volcano_job("--image", "registry.example.com/distrec:gpu", "--nnodes", "4", "--nproc_per_node", "8", "--gpus", "8",
                      "--max_retries", "3", "--rdzv_port", "29600",
                      "--mounts", "type=bind,src=/nfs/runs,dst=/mnt/runs,type=volume,src=data,dst=/data,readonly")
    tasks = job["spec"]["tasks"]
    assert len(tasks) == 4
    assert job["spec"]["maxRetry"] == 3
    for task in tasks:
        assert task["maxRetry"] == 3 and {p["action"] for p in task["policies"]} == {"RestartJob"}
        pod = task["template"]["spec"]
        (c,) = pod["containers"]
        # 8 CPUs / 16 GB per GPU rank, and the GPUs as an extended resource.
        assert c["resources"]["limits"] == {"cpu": "64000m", "memory": "131072M", "nvidia.com/gpu": "8"}
        assert ":29600 " in c["command"][2] and "--nnodes 4 --nproc_per_node 8" in c["command"][2]
        volumes = {v["name"]: v for v in pod["volumes"]}
        by_path = {m["mountPath"]: (volumes[m["name"]], m.get("readOnly")) for m in c["volumeMounts"]}
        assert by_path["/mnt/runs"][0]["hostPath"] == {"path": "/nfs/runs"}
        assert by_path["/data"][0]["persistentVolumeClaim"] == {"claimName": "data"} and by_path["/data"][1] is True


def test_slurm_two_hosts_sbatch_script():
    # The literal README line (but 2 hosts x 2 ranks on CPUs), with the resources stated.
    out = torchx("run", "-s", "slurm", "--dryrun", "launchers/components.py:train", "--nnodes", "2", "--nproc_per_node", "2",
                 "--cpus", "4", "--mem_mb", "8000", "--config", "configs/mrl4rec_phones.yaml", "--", "run_dir=/shared/runs/phones")
    script = scheduler_request(out)
    assert "sbatch --parsable" in script
    # One heterogeneous-job group per host, each one task with the host's CPUs and memory.
    groups = [line for line in script.splitlines() if line.startswith("#SBATCH --job-name=")]
    assert len(groups) == 2 and script.count("#SBATCH hetjob") == 1
    for i, group in enumerate(groups):
        opts = group.split()[1:]
        assert f"--job-name=train-{i}" in opts and "--ntasks-per-node=1" in opts
        assert "--cpus-per-task=4" in opts and "--mem=8000" in opts and "--time=120" in opts
        # .torchxconfig names no partition: the cluster's default partition takes the job.
        assert not any(o.startswith("--partition") for o in opts)
    # One srun over both groups; every host's torchrun meets at the first host's c10d store.
    srun = script.split("\nsrun ", 1)[1].split("\nexitcode=")[0]
    assert srun.count("bash -c 'torchrun --rdzv_backend c10d --rdzv_endpoint ${SLURM_JOB_NODELIST_HET_GROUP_0:=localhost}:29500 ") == 2
    assert srun.count("--nnodes 2 --nproc_per_node 2") == 2
    assert srun.count("-m distrec.train --config configs/mrl4rec_phones.yaml run_dir=/shared/runs/phones") == 2
    assert "--output=slurm-\"$SLURM_JOB_ID\"-train-0.out" in srun and "--output=slurm-\"$SLURM_JOB_ID\"-train-1.out" in srun


def test_slurm_one_host_uses_a_free_port():
    out = torchx("run", "-s", "slurm", "--dryrun", "launchers/components.py:train", "--nproc_per_node", "2", "--cpus", "2", "--mem_mb", "4000")
    script = scheduler_request(out)
    assert "#SBATCH hetjob" not in script and "--cpus-per-task=2" in script and "--mem=4000" in script
    assert "--rdzv_backend c10d --rdzv_endpoint localhost:0 " in script and "--nnodes 1 --nproc_per_node 2" in script


def test_component_mounts_and_rdzv_port_from_python():
    from launchers.components import train

    role = train(nnodes=2, mounts=["type=volume", "src=runs", "dst=/mnt/runs"], rdzv_port=29700).roles[0]
    (mount,) = role.mounts
    assert (mount.src, mount.dst_path, mount.read_only) == ("runs", "/mnt/runs", False)
    assert role.port_map == {"c10d": 29700} and ":29700" in role.args[1]
    assert train().roles[0].mounts == []


def test_slurm_local_script_usage():
    script = ROOT / "scripts" / "slurm_local.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script), "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2 and "usage" in out.stderr


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_dockerfile_has_both_variants(variant):
    # No Docker daemon here: the recipe is checked as text (launchers/README.md says so).
    text = (ROOT / "launchers" / "docker" / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text and f"AS base-{variant}" in text and "FROM base-${VARIANT}" in text
    assert "bash scripts/setup.sh" in text
