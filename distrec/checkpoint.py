"""In-memory snapshots of this rank's shards, to come back to the best validation epoch.

Each rank copies only the shards it owns (a ShardedTensor's local shards, or a replicated
data-parallel table), so a snapshot costs one extra copy of the local shards and no
communication. Imports: torch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _local_tensors(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    out = {}
    for name, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            out[name] = [shard.tensor for shard in value.local_shards()]
        elif isinstance(value, torch.Tensor):
            out[name] = [value]
    return out


@torch.no_grad()
def snapshot(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    return {name: [t.detach().clone() for t in ts] for name, ts in _local_tensors(model).items()}


@torch.no_grad()
def restore(model: nn.Module, snap: dict[str, list[torch.Tensor]]) -> None:
    # state_dict() tensors are views of the fused kernels' weights: copying into them in place
    # writes the live parameters.
    for name, ts in _local_tensors(model).items():
        for live, saved in zip(ts, snap[name], strict=True):
            live.copy_(saved)


@torch.no_grad()
def load_full_tables(model: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Write whole tables into a sharded model: `full` maps a table name (e.g. "item") to its
    `[rows, D]` weights; each rank copies the block that its local shards cover.

    For warm starts from exported embeddings and for tests that give every world size the
    same weights.
    """
    found = set()
    for key, value in model.state_dict().items():
        table = key.rsplit(".", 2)[-2] if key.endswith(".weight") else None
        if table not in full:
            continue
        found.add(table)
        src = full[table]
        if isinstance(value, ShardedTensor):
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(src[r0 : r0 + nr, c0 : c0 + nc])
        else:
            value.copy_(src)
    missing = set(full) - found
    if missing:
        raise KeyError(f"no table named {sorted(missing)} in the model")
