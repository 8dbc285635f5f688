"""Snapshots and checkpoints of a sharded model.

In memory: each rank copies only the shards it owns (a ShardedTensor's local shards, or a
replicated tensor), to come back to the best validation epoch without communication.
On disk: resumable checkpoints with torch.distributed.checkpoint (DCP), each rank writing its
own shards. Imports: torch, distrec.parallel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from distrec import parallel


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


def save(path: Path, model: nn.Module, dense_opts: list, env, extra: dict) -> None:
    """A resumable checkpoint: every rank's shards and fused-optimizer state (DCP), the dense
    optimizers and `extra` (loop state). Written to `<path>.tmp` and swapped in only when
    complete, so an interrupted save never replaces a good checkpoint."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    parallel.barrier(env)
    dcp.save({"model": model.state_dict(), "optim": model.fused_optimizer.state_dict()}, checkpoint_id=str(tmp))
    if env.is_main:
        torch.save({"dense": [opt.state_dict() for opt in dense_opts], "extra": extra}, tmp / "loop.pt")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    parallel.barrier(env)


def load(path: Path, model: nn.Module, dense_opts: list) -> dict:
    """Restore what `save` wrote into a model sharded the same way; returns `extra`."""
    state = {"model": model.state_dict(), "optim": model.fused_optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(path))  # in place, into this rank's shards
    model.load_state_dict(state["model"])
    model.fused_optimizer.load_state_dict(state["optim"])
    blob = torch.load(path / "loop.pt", weights_only=False)
    for opt, saved in zip(dense_opts, blob["dense"], strict=True):
        opt.load_state_dict(saved)
    return blob["extra"]
