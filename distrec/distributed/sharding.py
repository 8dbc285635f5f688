"""Plan and shard a model's embedding collections over the ranks (TorchRec's planner and
DistributedModelParallel), with the sharding type per table that the config asks for.
Imports: torch, torchrec, distrec.config, distrec.distributed.env.
"""

from __future__ import annotations

import logging
import os
import warnings

import torch.distributed as dist
from torch import nn
from torchrec.distributed.comm_ops import set_gradient_division
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.types import ShardingType

from distrec.config import ModelConfig, check_sharding_device
from distrec.distributed.env import DistEnv

# The fused (fbgemm) kernel is the only one that keeps no dense copy and applies the optimizer
# inside the backward pass; data_parallel tables need the dense kernel by construction.
_FUSED = "fused"
_DENSE = "dense"



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
