"""The few collectives distrec needs, each the identity at world size 1 (so one process needs
no process group). Imports: torch, distrec.distributed.env.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distrec.distributed.env import DistEnv


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
