"""The process group and device of a run: `init()` reads the launcher's environment (torchrun,
torchx, Slurm, Kubernetes) and returns a frozen `DistEnv` that the rest of the code receives
explicitly. Imports: torch, distrec.config.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from distrec.config import ConfigError


@dataclasses.dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# One CPU process and no process group: for scoring exported embeddings outside a training job
# (every collective here is the identity at world size 1).
ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")


def init(device: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Join (or, for a plain `python -m distrec.train`, create) the default process group.

    Rank and world size come from the launcher (torchrun / torchx set RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT). A single process still gets a group of one, so that
    DistributedModelParallel and the collectives run the same code path at any world size.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but no GPU is visible to this process (torch.cuda.is_available() is "
                          "false); use device=cpu, or device=auto (cuda when a GPU is visible)")
    env = os.environ
    # Not under a launcher: a group of one over an in-process store. Nothing goes into
    # os.environ, so a process that trains or exports in-process (a notebook, the tests) leaves
    # no RANK or MASTER_PORT behind for the processes it starts later, and holds no port.
    alone = "RANK" not in env
    local_rank = int(env.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store = dist.HashStore() if alone else _restart_store(timeout)
        if store is None:  # under a launcher: its environment rendezvous
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            rank, size = (0, 1) if alone else (int(env["RANK"]), int(env["WORLD_SIZE"]))
            dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=rank, world_size=size)
    return DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=dev,
        backend=backend,
    )


def _restart_store(timeout: timedelta) -> dist.Store | None:
    """Under torchrun, a store view whose keys are new at every restart of the workers.

    torchrun shares one TCPStore across its rendezvous rounds, and `init_process_group` writes
    the same keys at every attempt: restarted workers could read the gloo addresses that the
    killed attempt left there, and fail with "Connection refused" or wait on a dead peer until
    the group timeout (measured: 4 of 6 kill trials survived, scripts/chaos.py). Prefixing the
    keys with TORCHELASTIC_RESTART_COUNT gives each attempt its own. Elsewhere: None."""
    env = os.environ
    attempt = env.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it; else rank 0 does
    base = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]),
                         is_master=not agent and env["RANK"] == "0", timeout=timeout, multi_tenant=not agent)
    return dist.PrefixStore(f"distrec/attempt_{attempt}", base)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
