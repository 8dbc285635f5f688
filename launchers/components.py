"""torchx components for distrec: `dist.ddp` around `python -m distrec.train` with a config.

    torchx run -s local_cwd launchers/components.py:train --nnodes 1 --nproc_per_node 2 \
        --config configs/mrl4rec_phones.yaml -- train.epochs=50
    torchx run -s slurm launchers/components.py:train --nnodes 2 --nproc_per_node 8 --gpus 8 ...
    torchx run -s kubernetes --workspace "" launchers/components.py:train --image <your image> \
        --mounts type=volume,src=distrec-runs,dst=/mnt/runs ... -- run_dir=/mnt/runs/phones

The scheduler is picked by `-s` and `.torchxconfig`, never by the training code.
"""

# No `from __future__ import annotations`: torchx decodes command-line arguments from the
# real type hints of the component, and strings would make every option fail to decode.
from typing import List, Optional

from torchx import specs
from torchx.components import dist


def train(
    *overrides: str,
    config: str = "configs/default.yaml",
    nnodes: int = 1,
    nproc_per_node: int = 2,
    gpus: int = 0,
    cpus: int = 0,
    mem_mb: int = 0,
    image: str = "/",
    name: str = "distrec",
    max_retries: int = 0,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Train distrec on `nnodes` x `nproc_per_node` ranks.

    Args:
        overrides: dotted config overrides, e.g. train.epochs=50 run_dir=/tmp/r
        config: YAML config under configs/
        nnodes: number of hosts
        nproc_per_node: ranks per host (one per GPU on GPU hosts)
        gpus: GPUs per host (0 = CPU + gloo; otherwise CUDA + nccl, chosen by distrec itself)
        cpus: CPUs per host (0: per rank, 2 on CPU hosts, 8 on GPU hosts)
        mem_mb: host memory in MB (0: per rank, 4096 on CPU hosts, 16384 on GPU hosts; a
            Books-sized CPU rank peaks at 1.8 GB, docs/benchmarks.md)
        image: container image (kubernetes) or working directory (local_cwd, slurm)
        name: job name
        max_retries: scheduler-level retries
        mounts: volumes every host mounts, for a shared run_dir and data (kubernetes; docker):
            type=volume,src=<PVC name>,dst=/mnt/runs or type=bind,src=<host path>,dst=/mnt/runs,
            several one after another, each from its own type=. Slurm and local_cwd ignore
            mounts: there the run_dir must be on a file system all hosts share.
        rdzv_port: port of the c10d rendezvous store on the first host (multi-host jobs only;
            torchrun listens there, on $TORCHX_RANK0_HOST or Slurm's first host)
    """
    # Resources follow the ranks: a fixed 2 CPUs / 8 GB would starve an 8-GPU host.
    per_rank_cpus, per_rank_mb = (8, 16384) if gpus else (2, 4096)
    return dist.ddp(
        "--config",
        config,
        *overrides,
        m="distrec.train",
        image=image,
        name=name,
        cpu=cpus or per_rank_cpus * nproc_per_node,
        gpu=gpus,
        memMB=mem_mb or per_rank_mb * nproc_per_node,
        j=f"{nnodes}x{nproc_per_node}",
        max_retries=max_retries,
        mounts=mounts,
        rdzv_port=rdzv_port,
    )
