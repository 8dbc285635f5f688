"""Training batches of (user, positive) pairs: one shuffled order per epoch, sliced per rank.

Every rank computes the same permutation from (seed, epoch) and takes its contiguous slice of
each global batch, so the global batch is the same whatever the world size. Vectorised: a
batch is an index array into the training pairs. `DeviceBatch` gives the tasks' batch
dataclasses their one `.to(device)`. Imports: numpy, torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch


class DeviceBatch:
    """Mixin for a batch dataclass: `.to(device)` moves every tensor field, keeps the rest."""

    def to(self, device: torch.device):
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, torch.Tensor)})


def num_batches(num_pairs: int, global_batch: int) -> int:
    # The last partial batch is dropped (as in the reference code), unless it is the only one.
    return max(1, num_pairs // global_batch)


def epoch_batches(
    num_pairs: int, global_batch: int, seed: int, epoch: int, rank: int, world_size: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Yields (this rank's pair indices, global batch size) for every batch of the epoch."""
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs)
    size = min(global_batch, num_pairs)
    for b in range(num_batches(num_pairs, global_batch)):
        batch = order[b * size : (b + 1) * size]
        yield np.array_split(batch, world_size)[rank], len(batch)
