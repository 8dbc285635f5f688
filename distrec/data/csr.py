"""The one CSR type of distrec and the vectorised ways it is built: per-row lists of ids
(a user's items, an evaluation row's targets or masked items, a history), as
(indptr int64 [R + 1], columns): row r holds columns[indptr[r]:indptr[r + 1]]. Imports: numpy.
"""

from __future__ import annotations

import numpy as np

Csr = tuple[np.ndarray, np.ndarray]


def indptr(counts: np.ndarray) -> np.ndarray:
    """The indptr `[R + 1]` of rows with `counts [R]` entries each."""
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def from_sorted_rows(rows: np.ndarray, columns: np.ndarray, num_rows: int) -> Csr:
    """The CSR of pairs (rows[j], columns[j]) whose `rows` are sorted (ascending)."""
    return indptr(np.bincount(rows, minlength=num_rows)), columns


def gather(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> Csr:
    """Row j = values[starts[j] : starts[j] + counts[j]], for every j at once."""
    return indptr(counts), values[np.repeat(starts, counts) + ranges(counts)]


def ranges(count: np.ndarray) -> np.ndarray:
    """int64 [sum(count)]: 0..count[0]-1, 0..count[1]-1, ... concatenated."""
    total = int(count.sum())
    starts = np.cumsum(count) - count
    return np.arange(total, dtype=np.int64) - np.repeat(starts, count)
