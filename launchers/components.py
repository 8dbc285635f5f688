"""torchx components for distrec: `dist.ddp` around `python -m distrec.train` with a config.

    torchx run -s local_cwd launchers/components.py:train --nnodes 1 --nproc_per_node 2 \
        --config configs/mrl4rec_phones.yaml -- train.epochs=50
    torchx run -s slurm launchers/components.py:train --nnodes 2 --nproc_per_node 8 --gpus 8 ...
    torchx run -s kubernetes launchers/components.py:train --image <your image> ...

The scheduler is picked by `-s` and `.torchxconfig`, never by the training code.
"""

# No `from __future__ import annotations`: torchx decodes command-line arguments from the
# real type hints of the component, and strings would make every option fail to decode.
from torchx import specs
from torchx.components import dist


def train(
    *overrides: str,
    config: str = "configs/default.yaml",
    nnodes: int = 1,
    nproc_per_node: int = 2,
    gpus: int = 0,
    cpus: int = 2,
    mem_mb: int = 8192,
    image: str = "/",
    name: str = "distrec",
    max_retries: int = 0,
) -> specs.AppDef:
    """Train distrec on `nnodes` x `nproc_per_node` ranks.

    Args:
        overrides: dotted config overrides, e.g. train.epochs=50 run_dir=/tmp/r
        config: YAML config under configs/
        nnodes: number of hosts
        nproc_per_node: ranks per host (one per GPU on GPU hosts)
        gpus: GPUs per host (0 = CPU + gloo; otherwise CUDA + nccl, chosen by distrec itself)
        cpus: CPUs per host
        mem_mb: host memory in MB
        image: container image (kubernetes) or working directory (local_cwd, slurm)
        name: job name
        max_retries: scheduler-level retries
    """
    return dist.ddp(
        "--config",
        config,
        *overrides,
        m="distrec.train",
        image=image,
        name=name,
        cpu=cpus,
        gpu=gpus,
        memMB=mem_mb,
        j=f"{nnodes}x{nproc_per_node}",
        max_retries=max_retries,
    )
