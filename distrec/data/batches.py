"""Training batches of (user, positive) pairs: one shuffled order per epoch, sliced per rank.

Every rank computes the same permutation from (seed, epoch) and takes its contiguous slice of
each global batch, so the global batch is the same whatever the world size. A slice knows its
batch's index and its first sample's global position in the epoch: samplers key their draws
by position (distrec.nn.counters), and a resumed run starts at any batch. Vectorised: a batch is
an index array into the training pairs. `DeviceBatch` gives the tasks' batch
dataclasses their one `.to(device)`. Imports: numpy, torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

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


class Slice(NamedTuple):
    """This rank's part of one global batch."""

    index: int  # the batch's index within the epoch
    rows: np.ndarray  # indices into the training samples
    global_size: int  # samples in the whole global batch
    first: int  # global position in the epoch of rows[0]: rows[i] sits at first + i


def epoch_order(num_pairs: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shuffled order of the training samples: slice i of it is batch i."""
    return np.random.default_rng([seed, epoch]).permutation(num_pairs)


def epoch_batches(
    num_pairs: int, global_batch: int, seed: int, epoch: int, rank: int, world_size: int, start: int = 0,
    order: np.ndarray | None = None,
) -> Iterator[Slice]:
    """This rank's slice of every batch of the epoch, from batch `start` on (`order`: the
    epoch's `epoch_order`, when the caller has it already). Slice.rows is
    order[first : first + len(rows)], so a copy of the order on the device slices the same rows."""
    if order is None:
        order = epoch_order(num_pairs, seed, epoch)
    size = min(global_batch, num_pairs)
    for b in range(start, num_batches(num_pairs, global_batch)):
        batch = order[b * size : (b + 1) * size]
        # np.array_split's parts: the first len % world_size ranks take one sample more.
        q, r = divmod(len(batch), world_size)
        lo, n = rank * q + min(rank, r), q + (rank < r)
        yield Slice(b, batch[lo : lo + n], len(batch), b * size + lo)
