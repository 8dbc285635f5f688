"""The training loop: `fit` runs one phase (select, refit or train) epoch by epoch, `train_epoch`
one pass over the batches. The phase's state is a typed `TrainState`, its checkpoints a
`CheckpointManager`; the refit beside the selection (`RefitAlongside`) rides along epoch for
epoch. Imports: torch, tqdm, distrec.config / distributed / nn / tasks / run.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from distrec import config, distributed
from distrec.data.batches import num_batches
from distrec.nn import counters
from distrec.run import checkpoint, console, monitor, outputs
from distrec.run.prefetch import prefetched
from distrec.run.checkpoint_manager import CheckpointManager
from distrec.run.concurrent_refit import RefitAlongside
from distrec.run.state import Best, TrainState
from distrec.tasks import Workload

log = logging.getLogger(console.NAME)


def fresh_model(cfg: config.Config, work: Workload):
    """A new model and its dense optimizers, seeded: the same weights for any world size
    (dense towers: DDP copies rank 0's; tables: counter-based, Tables.seed)."""
    torch.manual_seed(cfg.train.seed * 1009)
    model, dense_opts = work.build()
    model.module.tables.seed(cfg.train.seed)
    return model, dense_opts


def refit_alongside(cfg: config.Config, env: distributed.DistEnv, work: Workload, resuming: bool) -> RefitAlongside | None:
    """The refit from scratch beside the selection (`train.refit_alongside=auto`) when this
    process has two or more threads to split and runs alone: the same tested model, in about
    the selection's time instead of twice it. A resumed selection, or one that tracks test,
    refits after it, as before."""
    if not (cfg.train.refit and cfg.train.refit_from == "scratch" and cfg.train.refit_alongside == "auto"
            and work.has_valid and work.refit is not None):
        return None
    if cfg.eval.track_test:  # the refit's test curve is evaluated on the way: one after the other
        return None
    threads = torch.get_num_threads()
    if env.world_size > 1 or threads < 2 or resuming:
        return None
    refit_work = work.refit()

    def one_epoch(model, dense_opts, epoch: int, after_step):
        return train_epoch(model, dense_opts, refit_work, cfg, env, epoch, after_step=after_step, show_bar=False)

    return RefitAlongside(refit_work, lambda: fresh_model(cfg, refit_work), one_epoch, threads // 2)


def fit(cfg: config.Config, env: distributed.DistEnv, work: Workload, epochs: int, *, phase: str, start: float,
        out: Path, scalars: monitor.Scalars, resuming: bool = False, first_epoch: int = 0, carry=None,
        alongside: RefitAlongside | None = None):
    """Train a model for up to `epochs` epochs; returns (model, dense optimizers, TrainState).
    `carry`: (model, dense optimizers) to go on training instead of a fresh model, from epoch
    `first_epoch` + 1 (a refit from the selected model: its epochs draw new streams).

    phase "select": evaluate validation every `eval.every_epochs`, keep the best epoch's
    weights (restored before returning), stop after `eval.patience` evaluations without
    progress. "refit" / "train": run all epochs (test on the way only with `eval.track_test`).
    A resumed run continues at the batch after its checkpoint. `alongside`: the refit that
    trains each epoch beside this selection's and keeps its weights at every improving epoch.
    """
    # Tables are counter-based (Tables.seed) and so are the training draws: a run does not
    # depend on the world size at equal global batch, up to float summation order.
    model, dense_opts = carry if carry is not None else fresh_model(cfg, work)
    if carry is None:
        log.info(f"sharding plan:\n{model.plan}")
    state = TrainState(phase=phase, epochs=epochs, best=Best(epoch=epochs), epoch=first_epoch)
    ckpts = CheckpointManager(cfg, env, work, model, dense_opts, state)
    if state.resumable and resuming:
        ckpts.resume(out)
        scalars.resumed(phase, state.epoch)
    eta = Eta(state, refit_after=cfg.train.refit and work.refit is not None and alongside is None)
    dim, metric = str(cfg.model.levels[-1]), cfg.eval.select_metric
    for epoch in range(state.epoch + 1, epochs + 1):
        if state.stopped:  # a resumed run that had stopped early
            break
        first_batch = state.batch
        record, improved, stop = run_epoch(cfg, env, work, model, dense_opts, state, ckpts, epoch, start, out, alongside)
        if alongside is not None:
            t1 = time.perf_counter()
            beside = alongside.finish(epoch, keep=improved)
            state.seconds += time.perf_counter() - t1  # waiting for the refit's epoch is training time
            log.info(epoch_line(beside, epochs))
            scalars.epoch(beside, alongside.work.num_samples / max(beside["epoch_seconds"], 1e-9))
        best_epoch = state.best.epoch if state.select and "valid" in record else None
        log.info(epoch_line(record, epochs, dim, metric, best_epoch, eta.after(record, first_batch, stop)))
        trained = work.num_samples * (ckpts.steps - first_batch) / ckpts.steps  # a resumed epoch trains only its rest
        scalars.epoch(record, trained / max(record["epoch_seconds"], 1e-9))
        ckpts.after_epoch(epoch, improved, stop)
        if stop:
            log.info(f"early stop: no better validation {metric} since epoch {state.best.epoch}")
            break
    if state.select:
        checkpoint.restore(model, state.best.snapshot)
    return model, dense_opts, state


def run_epoch(cfg: config.Config, env: distributed.DistEnv, work: Workload, model, dense_opts: list, state: TrainState,
              ckpts: CheckpointManager, epoch: int, start: float, out: Path, alongside: RefitAlongside | None):
    """Train `epoch` from batch `state.batch` on, evaluate it when due and keep its weights when
    it is the best so far; returns (its metrics.jsonl record, improved, stop early)."""
    first_batch = state.batch
    carried = state.totals if first_batch and env.is_main else None
    t0 = time.perf_counter()
    if alongside is not None:
        alongside.start(epoch)
    loss, level_loss = train_epoch(model, dense_opts, work, cfg, env, epoch, start=first_batch, carried=carried,
                                   after_step=lambda done, totals: ckpts.after_step(epoch, done, totals))
    record = {"phase": state.phase, "epoch": epoch, "loss": loss, "epoch_seconds": time.perf_counter() - t0}
    if level_loss is not None:  # each level's own (unweighted) loss: is a level still learning?
        record["level_loss"] = level_loss
    state.seconds += record["epoch_seconds"]
    state.epoch, state.batch, state.totals = epoch, 0, None
    due = not (epoch % cfg.eval.every_epochs and epoch != state.epochs)
    if not (due and (state.select or cfg.eval.track_test)):
        return record, False, False
    t1 = time.perf_counter()
    model.eval()
    if state.select:
        record["valid"] = work.evaluate(model, "valid", cfg, env)
    if cfg.eval.track_test:  # reporting only; selection never looks at test
        record["test"] = work.evaluate(model, "test", cfg, env)
    if work.diagnostics is not None:
        record.update(work.diagnostics(model))
    record["eval_seconds"] = time.perf_counter() - t1
    state.eval_seconds += record["eval_seconds"]
    record["elapsed_seconds"] = time.perf_counter() - start
    if env.is_main:
        outputs.append_metrics(out, record)
    best = state.best
    score = record["valid"][str(cfg.model.levels[-1])][cfg.eval.select_metric] if state.select else None
    improved = state.select and score > best.score
    if improved:
        best.score, best.epoch, best.valid, best.snapshot = score, epoch, record["valid"], checkpoint.snapshot(model)
    stop = state.select and epoch - best.epoch >= cfg.eval.patience * cfg.eval.every_epochs
    return record, improved, stop


class Eta:
    """The ETA of a phase: epochs left x the mean seconds of a whole epoch with its evaluation
    (a resumed part-epoch does not count). Early stopping can end "select" sooner (an upper
    bound, ≤), and a refit may follow it."""

    def __init__(self, state: TrainState, refit_after: bool) -> None:
        self.state = state
        self.bound = ("≤ ", " + refit" if refit_after else "") if state.select else ("", "")
        self.whole: list[float] = []

    def after(self, record: dict, first_batch: int, stop: bool) -> str:
        if not first_batch:
            self.whole.append(record["epoch_seconds"] + record.get("eval_seconds", 0.0))
        left = 0 if stop or not self.whole else (self.state.epochs - record["epoch"]) * sum(self.whole) / len(self.whole)
        return f"{self.bound[0]}{duration(left)}{self.bound[1]}" if left else ""


def train_epoch(model, dense_opts, work: Workload, cfg: config.Config, env: distributed.DistEnv, epoch: int, *,
                start: int = 0, carried: list | None = None, after_step=None, show_bar: bool = True,
                ) -> tuple[float, dict[str, float] | None]:
    """One pass over the training samples from batch `start` on; returns the mean loss over all
    ranks' samples and each level's mean unweighted loss, by level ("64": ...; None where the
    loss has no levels: BPR). `carried`: the [loss sum, pairs, level sums...] of the batches before `start`, on
    rank 0. `after_step(batches done, this rank's totals)` runs after every step (checkpoints).
    `show_bar`: False for the refit beside the selection, whose bar would overwrite the selection's."""
    total = num_batches(work.num_samples, cfg.train.batch_size)
    # A bar only on a terminal: in a scheduler's log file (torchx, Slurm, Kubernetes) its
    # carriage-return redraws are fragments; the epoch line says all that is needed there.
    batches = prefetched(work.batches(epoch, start), cfg.train.prefetch)
    bar = tqdm(batches, total=total, initial=start, desc=f"epoch {epoch}", leave=False,
               disable=not (show_bar and cfg.progress and env.is_main and sys.stderr.isatty()), mininterval=1.0)
    # The running sums and the first non-finite step stay on the training device: reading them
    # on the host every step would make a GPU wait for each step before the next is queued.
    totals = torch.zeros(2 + len(cfg.model.levels), dtype=torch.float64, device=env.device)  # loss sum, pairs, per-level sums
    if carried:  # a checkpoint written before per-level sums carries only the first two
        totals[: len(carried)] = torch.tensor(carried, dtype=torch.float64)
    first_bad = torch.full((), -1, dtype=torch.int64, device=env.device)
    check_every = _check_every(env.device)
    has_levels = False
    model.train()
    try:
        for step, batch in enumerate(bar, start):
            # Dropout masks from a per-step seed: a run resumed at this step draws the same ones.
            torch.manual_seed(int(counters.stream(cfg.train.seed, counters.Stream.DROPOUT, epoch, step, env.rank)) >> 1)
            loss, stats = model(batch)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            if (step + 1) % check_every == 0:
                _raise_if_non_finite(first_bad, epoch, env)
            loss.backward()
            for opt in dense_opts:
                opt.step()
                opt.zero_grad()
            totals[0] += stats["loss_sum"].detach().double()
            totals[1] += stats["pairs"].double()
            if "level_loss_sum" in stats:
                totals[2:] += stats["level_loss_sum"].detach().double()
                has_levels = True
            if after_step is not None:
                after_step(step + 1, totals)
        _raise_if_non_finite(first_bad, epoch, env)
    finally:  # a step that raised (non-finite loss, preemption) stops the batch builder too
        batches.close()
    totals = distributed.all_reduce_sum(totals, env)
    pairs = totals[1].clamp(min=1)
    levels = dict(zip(map(str, cfg.model.levels), (totals[2:] / pairs).tolist())) if has_levels else None
    return (totals[0] / pairs).item(), levels


def _check_every(device: torch.device) -> int:
    """Steps between host checks of the loss: every step on CPU, where reading it costs
    nothing; every 16th on a GPU, whose queue would otherwise drain at every step."""
    return 1 if device.type == "cpu" else 16


def _raise_if_non_finite(first_bad: torch.Tensor, epoch: int, env: distributed.DistEnv) -> None:
    """The error for the first step whose loss was not finite, if any (`first_bad` >= 0)."""
    step = int(first_bad)
    if step >= 0:
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch}, step {step} on rank {env.rank}; "
            "lower train.lr or check the data. Nothing from this epoch was saved."
        )


def epoch_line(record: dict, epochs: int, dim: str = "", metric: str = "", best_epoch: int | None = None,
                eta: str = "") -> str:
    """`epoch 12/50 | loss ... | valid@64 recall@20 ... | best epoch 10 | ETA ≤ 3 min 10 s`;
    `epochs`: the most this phase will run."""
    line = f"epoch {record['epoch']}/{epochs} | loss {record['loss']:.4f} | {record['epoch_seconds']:.1f} s"
    if record.get("phase") == "refit":
        line = "refit on train + valid: " + line
    for split in ("valid", "test"):
        if split in record:
            line += f" | {split}@{dim} {metric} {record[split][dim][metric]:.4f}"
            if f"{metric}_se" in record[split][dim]:  # a sampled validation: its standard error
                line += f" ± {record[split][dim][metric + '_se']:.4f}"
    if "eval_seconds" in record:
        line += f" | eval {record['eval_seconds']:.1f} s"
    if best_epoch is not None:
        line += f" | best epoch {best_epoch}"
    if eta:
        line += f" | ETA {eta}"
    return line


def duration(seconds: float) -> str:
    """`45 s`, `3 min 10 s`, `2 h 5 min`."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
