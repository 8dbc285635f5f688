"""Snapshots and checkpoints of a sharded model.

In memory: each rank copies only the shards it owns (a ShardedTensor's local shards, or a
replicated tensor), to come back to the best validation epoch without communication.
On disk: resumable checkpoints with torch.distributed.checkpoint (DCP), each rank writing its
own shards, with the loop state, the config and a fingerprint of the model and data
(`loop.pt`). `recover` finds the newest complete checkpoint whatever moment a write was killed
at; `check_compatible` refuses to resume a run of another data set or model shape. `Schedule`
says when the loop writes one: every N epochs, N steps or M minutes, and on preemption.
Imports: torch, distrec.distributed, distrec.run.preemption, distrec.config.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor

from distrec import distributed
from distrec.config import ConfigError
from distrec.run import preemption

# What a checkpoint's tables and optimizer state are shaped by: resuming with any of these
# changed would load garbage or fail inside DCP, so it is refused up front.
FINGERPRINT_KEYS = ("task", "dim", "levels", "num_interests", "num_users", "num_items", "data")


def fingerprint(cfg, work) -> dict:
    """What a checkpoint's tables are shaped by (FINGERPRINT_KEYS), for a config and a
    `workload.Workload` (training writes it into every checkpoint; resume and export check it)."""
    return {"task": cfg.model.task, "dim": cfg.model.dim, "levels": list(cfg.model.levels),
            "num_interests": cfg.model.num_interests, "num_users": work.num_users, "num_items": work.num_items,
            "data": work.data_hash()}


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


def save(path: Path, model: nn.Module, dense_opts: list, env, extra: dict) -> None:
    """A resumable checkpoint: every rank's shards and fused-optimizer state (DCP), the dense
    optimizers and `extra` (loop state). Written to `<path>.tmp` and swapped in only when
    complete, so an interrupted save never replaces a good checkpoint."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    if env.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier(env)
    dcp.save({"model": model.state_dict(), "optim": model.fused_optimizer.state_dict()}, checkpoint_id=str(tmp))
    if env.is_main:
        torch.save({"dense": [opt.state_dict() for opt in dense_opts], "extra": extra}, tmp / "loop.pt")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier(env)


def load(path: Path, model: nn.Module, dense_opts: list) -> dict:
    """Restore what `save` wrote into this model, however it is sharded now; returns `extra`.

    DCP reshards tables and per-element optimizer state to any world size and sharding type.
    Row-wise Adagrad keeps one accumulator per row and column block ([rows * blocks]), so a
    change between column-wise and other sharding changes its shape: `_regroup_row_state`
    converts it (exactly from column-wise, as the blocks' mean; to column-wise, by giving every
    block the row's value, which is what a row-wise update of the whole row would have used)."""
    state = {"model": model.state_dict(), "optim": model.fused_optimizer.state_dict()}
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    regroup = []
    for param, entries in state["optim"].get("state", {}).items():
        for name, live in list(entries.items()):
            size = getattr(saved.get(f"optim.state.{param}.{name}"), "size", None)
            if isinstance(live, ShardedTensor) and live.dim() == 1 and size is not None and tuple(size) != tuple(live.size()):
                # Read the saved layout whole (DCP gives a plain tensor all of it), regroup below.
                entries[name] = torch.empty(int(size[0]), dtype=live.dtype)
                regroup.append((entries, name, live, int(state["model"][param].size(0))))
    dcp.load(state, checkpoint_id=str(path))  # in place, into this rank's shards; one collective
    for entries, name, live, rows in regroup:
        _regroup_row_state(live, entries[name], rows)
        entries[name] = live
    model.load_state_dict(state["model"])
    model.fused_optimizer.load_state_dict(state["optim"])
    blob = torch.load(path / "loop.pt", weights_only=False)
    for opt, saved_opt in zip(dense_opts, blob["dense"], strict=True):
        opt.load_state_dict(saved_opt)
    return blob["extra"]


@torch.no_grad()
def _regroup_row_state(live: ShardedTensor, full: torch.Tensor, rows: int) -> None:
    """Write a per-(column block, row) state saved as `full [blocks * rows]` into `live`, laid
    out with another number of blocks: each row's mean over the saved blocks, repeated."""
    if full.numel() % rows or live.size(0) % rows:
        raise ValueError(f"optimizer state of {full.numel()} values does not fit a table of {rows} rows")
    per_row = full.view(-1, rows).mean(dim=0)
    for shard in live.local_shards():
        start, length = int(shard.metadata.shard_offsets[0]), int(shard.metadata.shard_sizes[0])
        shard.tensor.copy_(per_row[(torch.arange(start, start + length) % rows)])


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


class Schedule:
    """When the training loop writes `checkpoint/last`.

    `every_epochs`: after every N-th epoch (with its evaluation). `every_steps`: after every
    N-th global step of the run. `every_minutes`: after the first step that ends M minutes
    after the previous checkpoint (rank 0's clock decides). And after any step once SIGTERM
    arrived on any rank. The time and preemption decisions are agreed by one all-reduce of two
    flags per step (multi-rank runs only), so every rank writes the same checkpoint.
    """

    def __init__(self, every_epochs: int, every_steps: int, every_minutes: float, env) -> None:
        self.every_epochs, self.every_steps, self.every_minutes, self.env = every_epochs, every_steps, every_minutes, env
        self.last_save = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self.every_epochs or self.every_steps or self.every_minutes)

    def _agreed(self) -> tuple[bool, bool]:
        """(preemption asked on any rank, rank 0's time interval over): one collective."""
        timed = bool(self.every_minutes) and self.env.is_main and time.monotonic() - self.last_save >= 60 * self.every_minutes
        flags = torch.tensor([float(preemption.requested()), float(timed)])
        if self.env.world_size > 1:
            flags = distributed.all_reduce_max(flags, self.env)
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def after_step(self, global_step: int) -> str | None:
        """"preempt", "interval" or None for the step that just ended (a collective)."""
        preempt, timed = self._agreed()
        if preempt:
            return "preempt"
        if timed or (self.every_steps and global_step % self.every_steps == 0):
            return "interval"
        return None

    def after_epoch(self, epoch: int, interval_pending: bool) -> str | None:
        """The same at an epoch's end, after its evaluation; `interval_pending`: a step or time
        interval ended with the epoch's last step and was left for this checkpoint."""
        preempt, timed = self._agreed()
        if preempt:
            return "preempt"
        if timed or interval_pending or (self.every_epochs and epoch % self.every_epochs == 0):
            return "interval"
        return None

    def saved(self) -> None:
        self.last_save = time.monotonic()
