"""Train a matryoshka retrieval model (MRL4Rec or REMI) over TorchRec-sharded embedding tables.

    python -m distrec.train --config configs/mrl4rec_phones.yaml train.epochs=50 run_dir=/tmp/r
    torchrun --nproc_per_node 2 -m distrec.train --config configs/remi_video.yaml
    torchx run -s local_cwd dist.ddp -j 1x8 distrec/train.py

Reads top to bottom: config, process group, the task's workload (data, model builder, batches,
evaluation sets), the loop (train, evaluate on validation, keep the best, optionally refit),
then the test evaluation and the outputs. Imported by nothing but tests and scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file (torchx --script, torchrun distrec/train.py): put the repository root first
    # on the path instead of distrec/, whose module names must not shadow anything.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import logging
import math
import os
import shutil
import time

import torch
import yaml
from tqdm import tqdm

from distrec import config, distributed
from distrec.data import DataError
from distrec.data.batches import num_batches
from distrec.nn import counters
from distrec.run import checkpoint, console, monitor, outputs, preemption, rundir
from distrec.run.concurrent_refit import RefitAlongside
from distrec.tasks import Workload, build_workload

USAGE = "usage: python -m distrec.train [--config configs/NAME.yaml] [--print-config] [key.sub=value ...]"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
log = logging.getLogger(console.NAME)  # rank 0: stdout and train.log (console.start, in train())


def help_text() -> str:
    """--help: usage, the shipped configs and every key, generated from distrec/config.py."""
    shipped = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        shipped.append(f"  configs/{path.name}: {first}")
    return "\n".join([
        USAGE, "",
        "Without --config the built-in defaults (configs/default.yaml) are used; each key.sub=value",
        "override (a YAML value: lists as [4,8,16]) is applied on top. Every value is checked before",
        "any data is read; a key that this run would not read (e.g. data.train with",
        "data.format=synthetic) is an error. --print-config prints the resolved config and exits.", "",
        "shipped configs:", *shipped, "",
        "keys (type, default): meaning [choices]:", *config.describe(),
    ])


def parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """`--config PATH`, `--print-config` and dotted overrides. A leading path to this very
    script is ignored: the users' `torchx run ... dist.ddp -j 1x8 distrec/train.py` passes it
    as an argument."""
    args = list(argv)
    if args and args[0].endswith(".py") and Path(args[0]).resolve() == Path(__file__).resolve():
        args = args[1:]
    path = None
    overrides = []
    print_config = False
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(help_text())
            raise SystemExit(0)
        if arg == "--print-config":
            print_config = True
        elif arg == "--config":
            if not args:
                raise config.ConfigError("--config needs a path")
            path = args.pop(0)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise config.ConfigError(f"unexpected argument {arg!r} (--help lists every key); {USAGE}")
    return path, overrides, print_config


def main(argv: list[str] | None = None) -> dict:
    path, overrides, print_config = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = config.load(path, overrides)
    if print_config:
        print(yaml.safe_dump(config.to_dict(cfg), sort_keys=False), end="")
        raise SystemExit(0)
    # Scheduler logs (torchx, Slurm, Kubernetes) are files: without line buffering the epoch
    # lines would arrive in blocks, long after the fact, or be lost with a killed worker.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    previous = preemption.install()  # SIGTERM: checkpoint at the next step boundary, then exit 143
    env = distributed.init(cfg.device)
    try:
        result = train(cfg, env)
        # Leave together: a rank that tears down its process group while rank 0 is still
        # writing outputs (or a peer is still draining the last collective) can abort the others.
        distributed.barrier(env)
        return result
    finally:
        distributed.shutdown()
        preemption.restore(previous)


def train(cfg: config.Config, env: distributed.DistEnv) -> dict:
    """One run in `cfg.run_dir`: take its lock, write into a live attempt directory, publish
    the results when the run succeeds (distrec.run.rundir). A run stopped by an input or
    training error keeps its files in attempts/failed-<time> and leaves earlier results alone."""
    config.check_world(cfg, env.world_size, env.device)  # batch vs ranks, device, optimizer, run_dir, files: before any data
    start = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    _agree(env, lambda: rundir.acquire(run_dir))  # every rank stops if the run_dir is in use
    try:
        resuming = prepare_resume(cfg, env)
        out = rundir.begin(run_dir, resuming) if env.is_main else run_dir / rundir.LIVE
        console.start(env.rank, out / console.FILE if env.is_main else None)
        scalars = monitor.Scalars(out / monitor.DIR if env.is_main else None)
        try:
            result = _run(cfg, env, out, resuming, start, scalars)
        except (config.ConfigError, DataError, FloatingPointError) as err:
            # The run cannot succeed as configured: shelve its files (a restart would not
            # help). Other exceptions leave the live attempt for a restarted worker to resume.
            if not env.is_main or not out.exists():
                raise
            where = rundir.shelve(run_dir)
            raise type(err)(f"{err} (this run's files: {where}; earlier results in {run_dir} are untouched)") from None
        finally:  # train.log and the event files whole before publish moves them; no handler outlives the run
            scalars.close()
            console.stop()
        if env.is_main:
            rundir.publish(run_dir)
            if (run_dir / "checkpoint").is_dir():  # `train.resume=auto` starts the next run afresh
                (run_dir / "checkpoint" / FINISHED).touch()
        return result
    finally:
        if env.is_main:
            rundir.release(run_dir)


def _agree(env: distributed.DistEnv, step) -> None:
    """Run `step` on rank 0; if it raises ConfigError, every rank raises one (rank 0's says why)."""
    error = None
    if env.is_main:
        try:
            step()
        except config.ConfigError as err:
            error = err
    failed = distributed.all_reduce_max(torch.tensor([float(error is not None)]), env)
    if error is not None:
        raise error
    if failed[0] > 0:
        raise config.ConfigError("rank 0 refused the run (its error says why)")


def _run(cfg: config.Config, env: distributed.DistEnv, out: Path, resuming: bool, start: float,
         scalars: monitor.Scalars) -> dict:
    """Data, training, the test and the outputs, written into `out` (the live attempt)."""
    if env.is_main:
        outputs.write_config(out, config.to_dict(cfg))
        log.info(scalars.where(Path(cfg.run_dir)))

    # Data: every rank reads the same files deterministically; rank 0 writes the Parquet copy.
    data_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out / "data"
    t0 = time.perf_counter()
    work = build_workload(cfg, env, data_dir if env.is_main else None)
    # Where the wall time goes, for metrics.json: reading / generating data, training steps,
    # evaluations during training (validation, and test when tracked), the final test.
    seconds = {"data": time.perf_counter() - t0, "train": 0.0, "valid": 0.0, "test": 0.0}
    log.info(f"data: {work.summary}; world size {env.world_size}")

    # Train with early stopping on validation; keep the best epoch's weights. Without a
    # validation split (data.valid_fraction=0) every epoch runs and the last one is tested.
    phase = "select" if work.has_valid else "train"
    if not work.has_valid:
        log.info("no validation split: no early stopping or refit; the last epoch is tested")
    alongside = _refit_alongside(cfg, env, work, resuming)
    threads = torch.get_num_threads()
    try:
        if alongside is not None:
            torch.set_num_threads(alongside.threads)  # half for the selection, half for the refit
        model, dense_opts, best, spent = fit(cfg, env, work, cfg.train.epochs, phase=phase, start=start,
                                             resuming=resuming, out=out, scalars=scalars, alongside=alongside)
    finally:
        if alongside is not None:
            alongside.close()
            torch.set_num_threads(threads)
    seconds["train"], seconds["valid"] = spent
    if alongside is not None:
        # The refit trained epoch for epoch beside the selection: its weights at the selected
        # epoch are the model a refit from scratch trains afterwards (concurrent_refit.py).
        phase = "refit"
        work = alongside.work
        model, dense_opts = alongside.result(best["epoch"])
        seconds["refit"] = alongside.seconds  # overlapped with "train", not added to it
        log.info(f"refit on train + valid alongside the selection: its epoch {best['epoch']} is the tested model")
    elif cfg.train.refit and work.has_valid and work.refit is not None:
        # A fresh model on train + validation for the selected number of epochs, so the tested
        # model has seen all training data (the validation split only chose the epoch count).
        phase = "refit"
        work = work.refit()
        if cfg.train.refit_from == "selected":  # the selected model trains on; epochs go on counting
            first, last, carry = best["epoch"], best["epoch"] + cfg.train.refit_epochs, (model, dense_opts)
        else:
            first, last, carry = 0, best["epoch"], None
        model, dense_opts, _, spent = fit(cfg, env, work, last, phase=phase, start=start, out=out, scalars=scalars,
                                          first_epoch=first, carry=carry)
        seconds["train"] += spent[0]
        seconds["valid"] += spent[1]

    # Test once: the best validation epoch's weights (or the refit model).
    t0 = time.perf_counter()
    test = work.evaluate(model, "test", cfg, env)
    seconds["test"] = time.perf_counter() - t0
    result = {"test": test, "valid": best["valid"], "best_epoch": best["epoch"], "train_seconds": seconds["train"],
              "refit": phase == "refit", "refit_alongside": alongside is not None, "seconds": seconds}
    work.write_bundle(model, env, out, resolved=config.to_dict(cfg), origin={"written_by": "train", "epoch": best["epoch"],
                                                                        "phase": phase})
    if env.is_main:
        outputs.write_json(out / "metrics.json", result)
        which = {"select": "the best validation epoch", "refit": "the refit model", "train": "the last epoch"}[phase]
        _print_table(test, which)
        log.info(f"best epoch {best['epoch']}; {seconds['train']:.1f} s training, {seconds['valid']:.1f} s validation, "
                 f"{seconds['test']:.1f} s test, "
                 f"{time.perf_counter() - start:.1f} s in all; outputs in {cfg.run_dir}")
    return result


def _refit_alongside(cfg: config.Config, env: distributed.DistEnv, work: Workload, resuming: bool) -> RefitAlongside | None:
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
        loss, level_loss = train_epoch(model, dense_opts, refit_work, cfg, env, epoch, after_step=after_step, show_bar=False)
        return loss, None if level_loss is None else {str(d): v for d, v in zip(cfg.model.levels, level_loss)}

    return RefitAlongside(refit_work, lambda: _fresh_model(cfg, refit_work), one_epoch, threads // 2)


def _fresh_model(cfg: config.Config, work: Workload):
    """A new model and its dense optimizers, seeded: the same weights for any world size
    (dense towers: DDP copies rank 0's; tables: counter-based, Tables.seed)."""
    torch.manual_seed(cfg.train.seed * 1009)
    model, dense_opts = work.build()
    model.module.tables.seed(cfg.train.seed)
    return model, dense_opts


FINISHED = "finished"  # in <run_dir>/checkpoint once the run has written metrics.json


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


def fit(cfg: config.Config, env: distributed.DistEnv, work: Workload, epochs: int, *, phase: str, start: float,
        out: Path, scalars: monitor.Scalars, resuming: bool = False, first_epoch: int = 0, carry=None,
        alongside: RefitAlongside | None = None):
    """Build a model and train it for up to `epochs` epochs; returns (model, dense optimizers,
    best, (training seconds, evaluation seconds)). `carry`: (model, dense optimizers) to go
    on training instead of a fresh model, from epoch `first_epoch` + 1 (a refit from the
    selected model: its tables and optimizer state stay, its epochs draw new streams).

    phase "select": evaluate validation every `eval.every_epochs`, keep the best epoch's
    weights (restored before returning), stop after `eval.patience` evaluations without
    progress. "refit" / "train" (no validation): run all epochs; test is evaluated on the way
    only with `eval.track_test`. Checkpoints follow `checkpoint.Schedule`; a resumed run
    continues at the batch after its checkpoint. Each epoch: one log line (with the ETA) and
    its TensorBoard scalars. `alongside`: the refit that trains each epoch beside this
    selection's and keeps its weights at every epoch that improves validation.
    """
    select = phase == "select"
    # Dense towers: DDP copies rank 0's initial weights to every rank. Tables: counter-based,
    # the same for any world size (Tables.seed). Training draws are counter-based too, so a run
    # does not depend on the world size at equal global batch, up to float summation order.
    if carry is None:
        model, dense_opts = _fresh_model(cfg, work)
        log.info(f"sharding plan:\n{model.plan}")
    else:
        model, dense_opts = carry
    dim, metric = str(cfg.model.levels[-1]), cfg.eval.select_metric
    best = {"score": -math.inf, "epoch": epochs, "valid": None, "snapshot": None}
    seconds, eval_seconds = 0.0, 0.0
    ckpt = Path(cfg.run_dir) / "checkpoint"
    resumable = phase != "refit"  # a refit is short and restarts from scratch
    schedule = checkpoint.Schedule(cfg.train.checkpoint_every, cfg.train.checkpoint_every_steps,
                                   cfg.train.checkpoint_every_minutes, env)
    steps = num_batches(work.num_samples, cfg.train.batch_size)
    at = {"epoch": first_epoch, "batch": 0, "totals": None, "stopped": False}  # where the loop starts
    best_on_disk = False
    if resumable and resuming:
        loop = _resume(cfg, env, work, model, dense_opts, best, select, out)
        at.update({k: loop[k] for k in at if k in loop})
        best_on_disk, seconds = checkpoint.complete(ckpt / "best"), loop["seconds"]
        scalars.resumed(phase, at["epoch"])

    def write(closed: int, batch: int = 0, totals: list | None = None, *, stopped: bool = False) -> None:
        """checkpoint/last at: `closed` epochs done and evaluated, `batch` batches of the next."""
        loop = {"epoch": closed, "batch": batch, "totals": totals, "stopped": stopped, "seconds": seconds,
                "best": {k: v for k, v in best.items() if k != "snapshot"},
                "fingerprint": checkpoint.fingerprint(cfg, work), "config": config.to_dict(cfg)}
        nonlocal best_on_disk
        if select and best["snapshot"] is not None and not best_on_disk:
            # A preemption before any scheduled checkpoint: the best weights exist only in memory.
            live = checkpoint.snapshot(model)
            checkpoint.restore(model, best["snapshot"])
            checkpoint.save(ckpt / "best", model, dense_opts, env, loop)
            checkpoint.restore(model, live)
            best_on_disk = True
        checkpoint.save(ckpt / "last", model, dense_opts, env, loop)
        schedule.saved()

    pending = False  # a step or time interval that ended with an epoch's last step

    def preempted(where: str) -> preemption.Preempted:
        return preemption.Preempted(f"preempted (SIGTERM) {where}; " + (
            "checkpoint written, the same command resumes" if resumable else "the refit restarts from its start"))

    def after_step(epoch: int, done: int, totals: torch.Tensor) -> None:
        nonlocal pending
        reason = schedule.after_step((epoch - 1) * steps + done)
        if reason == "interval" and resumable and done == steps:
            pending = True  # the epoch's own checkpoint, after its evaluation, covers it
        elif reason == "preempt" or (reason == "interval" and resumable):
            if resumable:  # mid-epoch: the epoch's loss so far, summed over ranks, travels along
                write(epoch - 1, done, distributed.all_reduce_sum(totals.clone(), env).tolist())
            if reason == "preempt":
                raise preempted(f"at epoch {epoch}, batch {done}/{steps}")
            log.info(f"checkpoint: epoch {epoch}, {done}/{steps} batches")

    # The ETA: epochs left x the mean seconds of an epoch with its evaluation. Early stopping
    # can end "select" sooner (an upper bound, ≤), and a refit may follow it (unless it trains alongside).
    after = cfg.train.refit and work.refit is not None and alongside is None
    bound = ("≤ ", " + refit" if after else "") if select else ("", "")
    whole = []  # seconds of each whole epoch trained here, evaluation included (not a resumed part)
    for epoch in range(at["epoch"] + 1, epochs + 1):
        if at["stopped"]:
            break
        first_batch = at["batch"] if epoch == at["epoch"] + 1 else 0
        carried = at["totals"] if first_batch and env.is_main else None
        t0 = time.perf_counter()
        if alongside is not None:
            alongside.start(epoch)
        loss, level_loss = train_epoch(model, dense_opts, work, cfg, env, epoch, start=first_batch, carried=carried,
                           after_step=lambda done, totals, e=epoch: after_step(e, done, totals))
        record = {"phase": phase, "epoch": epoch, "loss": loss, "epoch_seconds": time.perf_counter() - t0}
        if level_loss is not None:  # each level's own (unweighted) loss: is a level still learning?
            record["level_loss"] = {str(d): v for d, v in zip(cfg.model.levels, level_loss)}
        seconds += record["epoch_seconds"]
        improved, stop = False, False
        if not (epoch % cfg.eval.every_epochs and epoch != epochs) and (select or cfg.eval.track_test):
            t1 = time.perf_counter()
            model.eval()
            if select:
                record["valid"] = work.evaluate(model, "valid", cfg, env)
            if cfg.eval.track_test:  # reporting only; selection never looks at test
                record["test"] = work.evaluate(model, "test", cfg, env)
            if work.diagnostics is not None:
                record.update(work.diagnostics(model))
            record["eval_seconds"] = time.perf_counter() - t1
            eval_seconds += record["eval_seconds"]
            record["elapsed_seconds"] = time.perf_counter() - start
            if env.is_main:
                outputs.append_metrics(out, record)
            improved = select and record["valid"][dim][metric] > best["score"]
            if improved:
                best.update(score=record["valid"][dim][metric], epoch=epoch, valid=record["valid"],
                            snapshot=checkpoint.snapshot(model))
            stop = select and epoch - best["epoch"] >= cfg.eval.patience * cfg.eval.every_epochs
        if alongside is not None:
            t1 = time.perf_counter()
            beside = alongside.finish(epoch, keep=improved)
            seconds += time.perf_counter() - t1  # waiting for the refit's epoch is training time
            log.info(_epoch_line(beside, epochs))
            scalars.epoch(beside, alongside.work.num_samples / max(beside["epoch_seconds"], 1e-9))
        if not first_batch:
            whole.append(record["epoch_seconds"] + record.get("eval_seconds", 0.0))
        left = 0 if stop or not whole else (epochs - epoch) * sum(whole) / len(whole)
        eta = f"{bound[0]}{_duration(left)}{bound[1]}" if left else ""
        log.info(_epoch_line(record, epochs, dim, metric, best["epoch"] if select and "valid" in record else None, eta))
        samples = work.num_samples * (steps - first_batch) / steps  # a resumed epoch trains only its rest
        scalars.epoch(record, samples / max(record["epoch_seconds"], 1e-9))
        if resumable and improved and schedule.enabled:
            checkpoint.save(ckpt / "best", model, dense_opts, env, {})
            best_on_disk = True
        reason = schedule.after_epoch(epoch, pending)
        pending = False
        if resumable and (reason or (stop and schedule.enabled)):
            write(epoch, stopped=stop)  # a resumed early-stopped run does not train on
        if reason == "preempt":
            raise preempted(f"after epoch {epoch}")
        if stop:
            log.info(f"early stop: no better validation {metric} since epoch {best['epoch']}")
            break
    if select:
        checkpoint.restore(model, best["snapshot"])
    return model, dense_opts, best, (seconds, eval_seconds)


def _resume(cfg, env, work, model, dense_opts, best: dict, select: bool, out: Path) -> dict:
    """Load checkpoint/last (and /best) into the model; returns the saved loop state."""
    ckpt = Path(cfg.run_dir) / "checkpoint"
    saved = checkpoint.read_loop(ckpt / "last")
    checkpoint.check_compatible(ckpt / "last", saved, checkpoint.fingerprint(cfg, work))  # before DCP reads any shard
    if select and checkpoint.complete(ckpt / "best"):
        checkpoint.load(ckpt / "best", model, dense_opts)
        best["snapshot"] = checkpoint.snapshot(model)
    loop = checkpoint.load(ckpt / "last", model, dense_opts)
    best.update(loop["best"])
    where = f"epoch {loop['epoch']}" + (f" and {loop['batch']} batches of epoch {loop['epoch'] + 1}" if loop.get("batch") else "")
    log.info(f"resumed from {ckpt / 'last'} after {where} (best epoch {best['epoch']})")
    changes = [c for c in checkpoint.config_changes(loop.get("config", {}), config.to_dict(cfg)) if not c.startswith("train.resume:")]
    if changes:
        log.info("resumed with changed settings (recorded in resumes.jsonl): " + "; ".join(changes))
    if env.is_main:
        outputs.truncate_metrics(out, loop["epoch"])
        outputs.append_record(out / "resumes.jsonl", {
            "after_epoch": loop["epoch"], "batch": loop.get("batch", 0), "changes": changes,
            "world_size": env.world_size, "time": time.time()})
    return loop


def train_epoch(model, dense_opts, work: Workload, cfg: config.Config, env: distributed.DistEnv, epoch: int, *,
                start: int = 0, carried: list | None = None, after_step=None, show_bar: bool = True,
                ) -> tuple[float, list[float] | None]:
    """One pass over the training samples from batch `start` on; returns the mean loss over all
    ranks' samples and each level's mean unweighted loss (None where the loss has no levels:
    BPR). `carried`: the [loss sum, pairs, level sums...] of the batches before `start`, on
    rank 0. `after_step(batches done, this rank's totals)` runs after every step (checkpoints).
    `show_bar`: False for the refit beside the selection, whose bar would overwrite the selection's."""
    total = num_batches(work.num_samples, cfg.train.batch_size)
    # A bar only on a terminal: in a scheduler's log file (torchx, Slurm, Kubernetes) its
    # carriage-return redraws are fragments; the epoch line says all that is needed there.
    bar = tqdm(work.batches(epoch, start), total=total, initial=start, desc=f"epoch {epoch}", leave=False,
               disable=not (show_bar and cfg.progress and env.is_main and sys.stderr.isatty()), mininterval=1.0)
    totals = torch.zeros(2 + len(cfg.model.levels), dtype=torch.float64)  # loss sum, pairs, per-level sums
    if carried:  # a checkpoint written before per-level sums carries only the first two
        totals[: len(carried)] = torch.tensor(carried, dtype=torch.float64)
    has_levels = False
    model.train()
    for step, batch in enumerate(bar, start):
        # Dropout masks from a per-step seed: a run resumed at this step draws the same ones.
        torch.manual_seed(int(counters.key(cfg.train.seed, epoch, step, env.rank)) >> 1)
        loss, stats = model(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {loss.item()} at epoch {epoch}, step {step} on rank {env.rank}; "
                "lower train.lr or check the data. Nothing from this epoch was saved."
            )
        loss.backward()
        for opt in dense_opts:
            opt.step()
            opt.zero_grad()
        totals[0] += stats["loss_sum"].double().cpu()
        totals[1] += stats["pairs"].double().cpu()
        if "level_loss_sum" in stats:
            totals[2:] += stats["level_loss_sum"].double().cpu()
            has_levels = True
        if after_step is not None:
            after_step(step + 1, totals)
    totals = distributed.all_reduce_sum(totals, env)
    pairs = totals[1].clamp(min=1)
    return (totals[0] / pairs).item(), (totals[2:] / pairs).tolist() if has_levels else None


def _epoch_line(record: dict, epochs: int, dim: str = "", metric: str = "", best_epoch: int | None = None,
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


def _duration(seconds: float) -> str:
    """`45 s`, `3 min 10 s`, `2 h 5 min`."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _print_table(metrics: dict, which: str) -> None:
    """One log record, so that the rows stay aligned under the heading's time stamp."""
    names = list(next(iter(metrics.values())))
    rows = [f"test metrics at every matryoshka dimension ({which}):", "dim  " + " ".join(f"{n:>10}" for n in names)]
    rows += [f"{dim:>3}  " + " ".join(f"{row[n]:10.4f}" for n in names) for dim, row in metrics.items()]
    log.info("\n".join(rows))


def _report_input_error(err: Exception) -> None:
    """One line on stderr, from rank 0 only (every rank checks the same input). Under torchrun,
    also into the worker's error file, so that the launcher's failure summary (which it always
    prints for a non-zero exit) names the cause instead of "To enable traceback see ..."."""
    if os.environ.get("RANK", "0") != "0":
        return
    line = f"error: {err}"
    print(line, file=sys.stderr)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        import json

        info = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
        try:
            Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps({"message": info}))
        except OSError:
            pass


if __name__ == "__main__":
    try:
        main()
    except (config.ConfigError, DataError, FloatingPointError) as err:  # one clear line, no traceback
        _report_input_error(err)
        raise SystemExit(2) from None
    except preemption.Preempted as stop:  # the scheduler retries a job that exits non-zero
        if os.environ.get("RANK", "0") == "0":  # every rank stops at the same step: say it once
            print(stop, file=sys.stderr)
        raise SystemExit(preemption.EXIT_CODE) from None
    except KeyboardInterrupt:  # Ctrl-C: one line; the last checkpoint (if any) is whole
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
