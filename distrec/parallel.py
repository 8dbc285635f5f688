"""Process groups, devices, sharding plans and the few collectives distrec needs.

The only module that touches torch.distributed set-up, launcher environment variables and
devices. `init()` returns a frozen `DistEnv` that the rest of the code receives explicitly.
Imports: torch, torchrec, distrec.config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.comm_ops import set_gradient_division
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType

from distrec.config import ConfigError, ModelConfig, check_sharding_device

# The fused (fbgemm) kernel is the only one that keeps no dense copy and applies the optimizer
# inside the backward pass; data_parallel tables need the dense kernel by construction.
_FUSED = "fused"
_DENSE = "dense"


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


def shard(model: nn.Module, env: DistEnv, cfg: ModelConfig, table_names: dict[str, str]) -> DistributedModelParallel:
    """Plan and shard `model`'s embedding collections over all ranks.

    `table_names` maps each table name to the ModelConfig field holding its sharding type.
    The planner chooses placement and shard sizes; the sharding type is the user's choice.
    """
    constraints = {}
    for table, field in table_names.items():
        kind = getattr(cfg, field)
        check_sharding_device(cfg, env.device.type, (field,))
        constraints[table] = ParameterConstraints(
            sharding_types=[ShardingType[kind.upper()].value],
            compute_kernels=[_DENSE if kind == "data_parallel" else _FUSED],
            # Column-wise: blocks of dim / world_size columns (a multiple of 4, as fbgemm needs),
            # one per rank; the planner's default block is the whole row, i.e. one rank.
            min_partition=_column_block(cfg.dim, env.world_size) if kind == "column_wise" else None,
        )
    compute_device = "cuda" if env.device.type == "cuda" else "cpu"
    # The planner warns on every run about estimates that do not matter here (the tables are
    # the whole model); keep its real errors, drop the noise from the users' console.
    for name in ("torchrec.distributed.planner", "torch.fx._symbolic_trace"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=env.world_size, compute_device=compute_device, local_world_size=_local_world_size(env)),
            constraints=constraints,
        )
        plan = planner.collective_plan(model, pg=dist.GroupMember.WORLD)
    # TorchRec divides the gradients that reach a sharded table by the world size (its
    # gradient division, on by default), just as DDP averages replicated ones: a loss scaled
    # as mean over the global batch times world_size gives one-process gradients on both.
    set_gradient_division(True)
    return DistributedModelParallel(module=model, device=env.device, plan=plan)


def _column_block(dim: int, world_size: int) -> int:
    block = max(4, dim // world_size // 4 * 4)
    while dim % block:  # equal blocks: TorchRec cuts the row into dim / block of them
        block -= 4
    return block


def _local_world_size(env: DistEnv) -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum over ranks (in place on a copy on the communication device); returns the input's device."""
    if env.world_size == 1:
        return t
    work = t.to(env.device)
    dist.all_reduce(work)
    return work.to(t.device)


def all_reduce_max(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Element-wise max over ranks (flags that any rank may raise); returns the input's device."""
    if env.world_size == 1:
        return t
    work = t.to(env.device)
    dist.all_reduce(work, op=dist.ReduceOp.MAX)
    return work.to(t.device)


def all_gather_rows(t: torch.Tensor, env: DistEnv, total_rows: int) -> torch.Tensor:
    """Concatenate each rank's rows `[n_r, ...]` in rank order, then trim to `total_rows`.

    Ranks may hold different numbers of rows (at most `ceil(total/world)` each): they are padded
    to that size for the collective.
    """
    if env.world_size == 1:
        return t[:total_rows]
    return all_gather_padded(t, env, -(-total_rows // env.world_size))[:total_rows]


def all_gather_padded(t: torch.Tensor, env: DistEnv, rows: int) -> torch.Tensor:
    """Every rank's `t [n_r <= rows, ...]`, zero-padded to `rows`: `[world_size * rows, ...]`,
    rank r's rows at `r * rows` (for local batches, whose sizes differ by at most one)."""
    padded = t.new_zeros((rows, *t.shape[1:]))
    padded[: t.shape[0]] = t
    if env.world_size == 1:
        return padded
    out = [torch.empty_like(padded) for _ in range(env.world_size)]
    dist.all_gather(out, padded)
    return torch.cat(out)


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()
