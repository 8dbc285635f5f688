"""Snapshots and checkpoints of a sharded model.

In memory: each rank copies only the shards it owns (a ShardedTensor's local shards, or a
replicated tensor), to come back to the best validation epoch without communication.
On disk: resumable checkpoints with torch.distributed.checkpoint (DCP), each rank writing its
own shards, with the loop state, the config and a fingerprint of the model and data
(`loop.pt`). `recover` finds the newest complete checkpoint whatever moment a write was killed
at; `check_compatible` refuses to resume a run of another data set or model shape.
Imports: torch, distrec.parallel, distrec.config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from distrec import parallel
from distrec.config import ConfigError

# What a checkpoint's tables and optimizer state are shaped by: resuming with any of these
# changed would load garbage or fail inside DCP, so it is refused up front.
FINGERPRINT_KEYS = ("task", "dim", "levels", "num_interests", "num_users", "num_items", "data")


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


def complete(path: Path) -> bool:
    """`save` writes loop.pt last, after every rank's shards: its presence marks a whole checkpoint."""
    return (path / "loop.pt").is_file()


def recover(path: Path) -> bool:
    """Put the newest complete checkpoint of `path` (e.g. checkpoint/last) back at `path`;
    False when there is none. Rank 0 only, before the other ranks look.

    `save` swaps `<path>.tmp` in with two renames (`path` -> `.old`, `.tmp` -> `path`). A kill
    between them leaves no `path`, a complete `.tmp` (the newer state) and `.old`; a kill while
    `.tmp` is written leaves it incomplete beside a good `path`. Either way nothing is lost."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if complete(path):
        return True
    for candidate in (tmp, old):
        if complete(candidate):
            shutil.rmtree(path, ignore_errors=True)
            candidate.rename(path)
            return True
    return False


def read_loop(path: Path) -> dict:
    """The `extra` dict that `save` stored (loop state, config, fingerprint), without the tables."""
    return torch.load(path / "loop.pt", weights_only=False)["extra"]


def check_compatible(path: Path, saved: dict, current: dict) -> None:
    """One clear error when the checkpoint at `path` was written for another model or data set."""
    theirs = saved.get("fingerprint", {})
    for key in FINGERPRINT_KEYS:
        if key in theirs and theirs[key] != current[key]:
            raise ConfigError(
                f"{path} was written for {key}={theirs[key]}, this run has {key}={current[key]}: it cannot be "
                f"resumed; use another run_dir, or train.resume=never to start this one afresh"
            )


def config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every config value that differs between two resolved configs."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out
