"""One phase's checkpoints: `<run_dir>/checkpoint/last` (the loop state, to resume from) and
`/best` (the best validation epoch's weights), when they are written (`checkpoint.Schedule`:
epochs, steps, minutes, SIGTERM), resuming from them, and `prepare_resume`, which recovers a
half-written checkpoint and decides whether a run continues. The files themselves are
run/checkpoint.py's. Imports: torch, distrec.config / distributed / tasks / run.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch

from distrec import config, distributed
from distrec.data.batches import num_batches
from distrec.run import checkpoint, console, outputs, preemption
from distrec.run.state import TrainState
from distrec.tasks import Workload

FINISHED = "finished"  # in <run_dir>/checkpoint once the run has written metrics.json
log = logging.getLogger(console.NAME)


def prepare_resume(cfg: config.Config, env: distributed.DistEnv) -> bool:
    """Whether this run continues from <run_dir>/checkpoint/last (every rank gets the same
    answer). `train.resume=auto` resumes an unfinished run, e.g. a job restarted after a
    rank died, and starts afresh otherwise; `must` resumes whatever is there or stops;
    `never` deletes an old checkpoint so that it cannot mix with the new run."""
    ckpt, mode = Path(cfg.run_dir) / "checkpoint", cfg.train.resume
    if env.is_main:
        if mode == "never" or (mode == "auto" and (ckpt / FINISHED).exists()):
            shutil.rmtree(ckpt, ignore_errors=True)
        else:  # a write killed half-way leaves the previous checkpoint, or the new one, whole
            checkpoint.recover(ckpt / "last")
            checkpoint.recover(ckpt / "best")
            (ckpt / FINISHED).unlink(missing_ok=True)
    distributed.barrier(env)
    found = checkpoint.complete(ckpt / "last")
    if mode == "must" and not found:
        raise config.ConfigError(f"train.resume=must, but {ckpt / 'last'} holds no checkpoint (train.checkpoint_every=N writes them)")
    return found


def mark_finished(run_dir: Path) -> None:
    """After metrics.json: `train.resume=auto` starts the next run in this run_dir afresh."""
    if (run_dir / "checkpoint").is_dir():
        (run_dir / "checkpoint" / FINISHED).touch()


class CheckpointManager:
    """checkpoint/last and /best of one phase of `state`, for `model` and its dense optimizers.

    The loop calls `after_step` after every training step and `after_epoch` after every
    epoch's evaluation; both write what the schedule asks for and raise `Preempted` once
    SIGTERM has arrived (after writing). A refit phase writes nothing: it restarts from scratch.
    """

    def __init__(self, cfg: config.Config, env: distributed.DistEnv, work: Workload, model, dense_opts: list,
                 state: TrainState) -> None:
        self.cfg, self.env, self.work, self.model, self.dense_opts, self.state = cfg, env, work, model, dense_opts, state
        self.dir = Path(cfg.run_dir) / "checkpoint"
        self.schedule = checkpoint.Schedule(cfg.train.checkpoint_every, cfg.train.checkpoint_every_steps,
                                            cfg.train.checkpoint_every_minutes, env)
        self.steps = num_batches(work.num_samples, cfg.train.batch_size)
        self.best_on_disk = False  # checkpoint/best holds state.best's weights
        self.pending = False  # a step or time interval that ended with an epoch's last step

    def resume(self, out: Path) -> None:
        """Load checkpoint/last (and /best) into the model and `state`; log the resume in `out`."""
        state, last = self.state, self.dir / "last"
        saved = checkpoint.read_loop(last)
        checkpoint.check_compatible(last, saved, checkpoint.fingerprint(self.cfg, self.work))  # before DCP reads any shard
        if state.select and checkpoint.complete(self.dir / "best"):
            checkpoint.load(self.dir / "best", self.model, self.dense_opts)
            state.best.snapshot = checkpoint.snapshot(self.model)
        loop = checkpoint.load(last, self.model, self.dense_opts)
        state.best.load(loop["best"])
        state.epoch, state.batch = loop["epoch"], loop.get("batch", 0)
        state.totals, state.stopped, state.seconds = loop.get("totals"), loop.get("stopped", False), loop["seconds"]
        self.best_on_disk = checkpoint.complete(self.dir / "best")
        where = f"epoch {loop['epoch']}" + (f" and {loop['batch']} batches of epoch {loop['epoch'] + 1}" if loop.get("batch") else "")
        log.info(f"resumed from {last} after {where} (best epoch {state.best.epoch})")
        changes = [c for c in checkpoint.config_changes(loop.get("config", {}), config.to_dict(self.cfg))
                   if not c.startswith("train.resume:")]
        if changes:
            log.info("resumed with changed settings (recorded in resumes.jsonl): " + "; ".join(changes))
        if self.env.is_main:
            outputs.truncate_metrics(out, loop["epoch"])
            outputs.append_record(out / "resumes.jsonl", {
                "after_epoch": loop["epoch"], "batch": loop.get("batch", 0), "changes": changes,
                "world_size": self.env.world_size, "time": time.time()})

    def write(self, closed: int, batch: int = 0, totals: list | None = None, *, stopped: bool = False) -> None:
        """checkpoint/last at: `closed` epochs done and evaluated, `batch` batches of the next."""
        state = self.state
        loop = {**state.loop_record(closed, batch, totals, stopped=stopped),
                "fingerprint": checkpoint.fingerprint(self.cfg, self.work), "config": config.to_dict(self.cfg)}
        if state.select and state.best.snapshot is not None and not self.best_on_disk:
            # A preemption before any scheduled checkpoint: the best weights exist only in memory.
            live = checkpoint.snapshot(self.model)
            checkpoint.restore(self.model, state.best.snapshot)
            checkpoint.save(self.dir / "best", self.model, self.dense_opts, self.env, loop)
            checkpoint.restore(self.model, live)
            self.best_on_disk = True
        checkpoint.save(self.dir / "last", self.model, self.dense_opts, self.env, loop)
        self.schedule.saved()

    def preempted(self, where: str) -> preemption.Preempted:
        return preemption.Preempted(f"preempted (SIGTERM) {where}; " + (
            "checkpoint written, the same command resumes" if self.state.resumable else "the refit restarts from its start"))

    def after_step(self, epoch: int, done: int, totals: torch.Tensor) -> None:
        """After step `done` of `epoch` (this rank's running `totals`): a mid-epoch checkpoint
        when one is due, and the stop after a SIGTERM."""
        resumable = self.state.resumable
        reason = self.schedule.after_step((epoch - 1) * self.steps + done)
        if reason == "interval" and resumable and done == self.steps:
            self.pending = True  # the epoch's own checkpoint, after its evaluation, covers it
        elif reason == "preempt" or (reason == "interval" and resumable):
            if resumable:  # mid-epoch: the epoch's loss so far, summed over ranks, travels along
                summed = distributed.all_reduce_sum(totals.clone(), self.env).tolist()
                if not math.isfinite(summed[0]):  # the loop checks every few steps on a GPU: never save what diverged
                    raise FloatingPointError(f"non-finite loss at epoch {epoch} before batch {done}; lower train.lr "
                                             "or check the data. Nothing from this epoch was saved.")
                self.write(epoch - 1, done, summed)
            if reason == "preempt":
                raise self.preempted(f"at epoch {epoch}, batch {done}/{self.steps}")
            log.info(f"checkpoint: epoch {epoch}, {done}/{self.steps} batches")

    def after_epoch(self, epoch: int, improved: bool, stop: bool) -> None:
        """After `epoch`'s evaluation: checkpoint/best when it improved, checkpoint/last when the
        schedule (or an early stop) asks, and the stop after a SIGTERM."""
        resumable = self.state.resumable
        if resumable and improved and self.schedule.enabled:
            checkpoint.save(self.dir / "best", self.model, self.dense_opts, self.env, {})
            self.best_on_disk = True
        reason = self.schedule.after_epoch(epoch, self.pending)
        self.pending = False
        if resumable and (reason or (stop and self.schedule.enabled)):
            self.write(epoch, stopped=stop)  # a resumed early-stopped run does not train on
        if reason == "preempt":
            raise self.preempted(f"after epoch {epoch}")
