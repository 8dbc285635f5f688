"""Batches built ahead of the step that uses them, in a background thread.

A training batch (the epoch order's slice, the counter-based candidate and negative draws,
the copy to the device) does not depend on the model, so batch t + 1 can be built while step t
runs: its host work (numpy draws, which hold one core) overlaps the step's torch kernels
instead of adding to them. Each batch is the same pure function of (epoch, step) whichever
thread builds it, so a prefetched loop trains exactly the model of the plain loop
(tests/unit/test_prefetch.py). Torch and numpy release the GIL in their kernels, so a
thread is enough; no process or shared memory is needed. Imports: torch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

import torch

T = TypeVar("T")
_DONE = object()


def prefetched(batches: Iterator[T], depth: int) -> Iterator[T]:
    """`batches`, with up to `depth` of them built ahead in a background thread (0: none, the
    caller's own thread builds each as it asks). An error raised while building a batch is
    raised here, where that batch would have been returned; leaving the loop early (break, an
    exception in the step) stops the thread before this generator closes."""
    if depth <= 0:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    # The current CUDA device is per thread too: the builder's is the caller's (its local rank).
    cuda = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    def build() -> None:
        if cuda is not None:
            torch.cuda.set_device(cuda)
        # One thread for the builder's torch ops (OpenMP's count is per thread): its host work
        # takes one core beside the step, and a second full team would oversubscribe the cores
        # the step's own threads spin on. On a GPU its ops are kernel launches either way.
        # torch also keeps this count as the default for threads that start torch work later;
        # the training thread has started its team already, and the refit thread sets its own.
        torch.set_num_threads(1)
        try:
            for batch in batches:
                if not _put(ready, (batch, None), stop):
                    return
            _put(ready, (_DONE, None), stop)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which raises it
            _put(ready, (_DONE, err), stop)

    worker = threading.Thread(target=build, name="distrec-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            batch, err = ready.get()
            if err is not None:
                raise err
            if batch is _DONE:
                return
            yield batch
    finally:
        stop.set()
        worker.join()


def _put(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting while the queue is full; False once the consumer has stopped."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
