"""The refit trained alongside the selection: the same fresh model on train + validation that a
refit after selection trains, epoch for epoch in a second thread while the selection trains and
evaluates, with its weights kept at every epoch that improves
validation. When the selection stops, the kept weights are those of the refit at the selected
epoch count: the model `train.refit` would have trained afterwards, without training it after.

Why a thread: a Phones MF step is ~200 small kernels; a second OpenMP thread inside each of them
bought nothing (2.02 s an epoch with 2 threads, ~2.1 s with 1, docs/results.md §8), while two
models on one thread each ran two epochs in 1.1-1.3x the time of one (torch and fbgemm kernels
release the GIL). Each thread then runs its kernels on half of the process's threads.

Only for one process (a second model's collectives would need their own process group) and
for steps that draw nothing from torch's global generator (MF: every draw is counter-based), so
the two threads cannot change each other's numbers. Imports: torch, distrec.run.checkpoint.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import torch

from distrec.run import checkpoint


class RefitAlongside:
    """`start(epoch)` trains the refit model's epoch in the background; `finish(epoch, keep)`
    waits for it (raising what it raised) and, with `keep`, snapshots its weights; `result()`
    restores the last kept weights and returns the model. `close()` stops a running epoch at its
    next step (an exception or preemption in the selection) and waits for it.

    work: the refit's workload; build: () -> (model, dense optimizers), the fresh refit model; train_one: (model, dense
    optimizers, epoch, after_step) -> (mean loss, {level: loss} or None), one epoch on train + valid;
    after_step(batches done, totals) runs after every step (the stop check rides on it).
    """

    def __init__(self, work, build: Callable, train_one: Callable, threads: int):
        self.work = work  # the refit's workload (train + valid)
        self.model, self.dense_opts = build()
        self._train_one = train_one
        self.threads = threads  # intra-op threads of each of the two threads
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._record: dict | None = None
        self.kept: tuple[int, dict] | None = None  # (epoch, weights) of the last kept epoch
        self.seconds = 0.0  # the refit's own epoch seconds (they overlap the selection's)

    def start(self, epoch: int) -> None:
        self._record, self._error = None, None
        self._thread = threading.Thread(target=self._epoch, args=(epoch,), name=f"refit-epoch-{epoch}", daemon=True)
        self._thread.start()

    def _epoch(self, epoch: int) -> None:
        torch.set_num_threads(self.threads)  # OpenMP's thread count is per calling thread
        t0 = time.perf_counter()
        try:
            loss, level_loss = self._train_one(self.model, self.dense_opts, epoch, self._check_stop)
            self._record = {"phase": "refit", "epoch": epoch, "loss": loss, "epoch_seconds": time.perf_counter() - t0}
            if level_loss is not None:
                self._record["level_loss"] = level_loss
        except BaseException as err:  # noqa: BLE001 - re-raised in the selection's thread by finish()
            self._error = err

    def _check_stop(self, done: int, totals) -> None:
        if self._stop.is_set():
            raise _Stopped()

    def finish(self, epoch: int, keep: bool) -> dict:
        """Wait for `epoch`; returns its record (phase, epoch, loss, epoch_seconds)."""
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error
        self.seconds += self._record["epoch_seconds"]
        if keep:
            self.kept = (epoch, checkpoint.snapshot(self.model))
        return self._record

    def result(self, epoch: int):
        """(model, dense optimizers) with the weights kept at `epoch` (the selected one)."""
        if self.kept is None or self.kept[0] != epoch:
            raise RuntimeError(f"the refit kept epoch {self.kept and self.kept[0]}, not the selected epoch {epoch}")
        checkpoint.restore(self.model, self.kept[1])
        return self.model, self.dense_opts

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


class _Stopped(Exception):
    """The selection ended (an error or a preemption) while the refit's epoch ran."""
