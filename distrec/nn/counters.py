"""Counter-based random numbers: draw i of stream `key` is a pure function of (key, i).

Training draws (negative candidates, shared negatives, initial table rows) are keyed by what
they are for, the global position of a sample within its epoch or the global (row, column) of
a table entry, never by which rank asks or how far an iterator has advanced. So a run on 1 or
8 ranks at the same global batch draws the same numbers, and a run resumed mid-epoch (or on
another number of ranks) draws exactly what the uninterrupted run would have.

The mixer is SplitMix64's finaliser over wrapping uint64 arithmetic (Steele et al., 2014):
statistically sound for sampling, vectorised, about as fast as `Generator.integers`.
`torch_random` / `torch_integers` are the same functions over int64 tensors on any device
(wrapping int64 products and masked shifts are the uint64 ones bit for bit), so draws can be
made where the step runs, equal to the numpy ones (tests/unit/test_device_draws.py).
Imports: numpy, torch.
"""

from __future__ import annotations

import enum

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(s) for s in (30, 27, 31, 11))
_UNIT = 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


class Stream(enum.IntEnum):
    """What a stream is for: every stream is keyed (seed, purpose, ...) through `stream()`, so
    two purposes never share one (tests/unit/test_samplers.py holds that)."""

    TABLE_INIT = 1  # (seed, TABLE_INIT, table index): initial rows, Tables.seed
    MF_CANDIDATES = 2  # (seed, MF_CANDIDATES, epoch): MF hard-negative candidates, by sample position
    MF_SHARED_NEGATIVES = 3  # (seed, MF_SHARED_NEGATIVES, epoch): loss=softmax's negatives shared by a batch
    SEQUENCE_NEGATIVES = 4  # (seed, SEQUENCE_NEGATIVES, epoch): multi_interest's shared negatives
    DROPOUT = 5  # (seed, DROPOUT, epoch, step, rank): torch's generator before each step (dropout masks)


def stream(seed: int, purpose: Stream, *parts: int) -> np.uint64:
    """The stream of `purpose` for `seed` and its `parts` (epoch, table, ...)."""
    return key(seed, int(purpose), *parts)


def key(*parts: int) -> np.uint64:
    """A stream key from integers: distinct tuples, unrelated streams. Training code names its
    streams with `stream(seed, Stream.X, ...)`; `key` derives sub-streams (`key(stream, round)`)."""
    k = np.zeros(1, np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            k = _mix(k ^ (np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF) + _GOLDEN))
    return k[0]


def random(stream: np.uint64, counters: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1), one per counter (any shape of non-negative int64)."""
    x = _mix(np.asarray(counters, dtype=np.int64).view(np.uint64) * _GOLDEN + stream)
    return (x >> _S11).astype(np.float64) * _UNIT


def integers(stream: np.uint64, counters: np.ndarray, high: int) -> np.ndarray:
    """Uniform int64 in [0, high), one per counter. The float route biases an id by at most
    high / 2^53 of its probability, far below anything sampling could notice."""
    return np.minimum((random(stream, counters) * high).astype(np.int64), high - 1)


def as_int64(v: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    v &= 0xFFFFFFFFFFFFFFFF
    return v - (1 << 64) if v >= 1 << 63 else v


_T_GOLDEN, _T_M1, _T_M2 = (as_int64(int(c)) for c in (_GOLDEN, _M1, _M2))


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    # A logical right shift: int64 `>>` is arithmetic, so clear the sign bits it copies in.
    return (x >> s) & ((1 << (64 - s)) - 1)


def _torch_mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _T_M1
    x = (x ^ _shr(x, 27)) * _T_M2
    return x ^ _shr(x, 31)


def torch_random(stream: np.uint64 | int, counters: torch.Tensor) -> torch.Tensor:
    """`random` on a tensor of non-negative int64 counters, on the counters' device: float64."""
    x = _torch_mix(counters.to(torch.int64) * _T_GOLDEN + as_int64(int(stream)))
    return _shr(x, 11).to(torch.float64) * _UNIT


def torch_integers(stream: np.uint64 | int, counters: torch.Tensor, high: int) -> torch.Tensor:
    """`integers` on a tensor of counters, on the counters' device: int64 in [0, high)."""
    return (torch_random(stream, counters) * high).to(torch.int64).clamp_(max=high - 1)
