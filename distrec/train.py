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
import os
import time

import torch
import yaml

from distrec import config, distributed
from distrec.data import DataError
from distrec.run import cli, console, monitor, outputs, preemption, rundir
from distrec.run.checkpoint_manager import mark_finished, prepare_resume
from distrec.run.loop import fit, refit_alongside
from distrec.tasks import build_workload

log = logging.getLogger(console.NAME)  # rank 0: stdout and train.log (console.start, in train())


def main(argv: list[str] | None = None) -> dict:
    path, overrides, print_config = cli.parse_args(sys.argv[1:] if argv is None else argv)
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
            mark_finished(run_dir)
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
    alongside = refit_alongside(cfg, env, work, resuming)
    threads = torch.get_num_threads()
    try:
        if alongside is not None:
            torch.set_num_threads(alongside.threads)  # half for the selection, half for the refit
        model, dense_opts, state = fit(cfg, env, work, cfg.train.epochs, phase=phase, start=start, resuming=resuming,
                                       out=out, scalars=scalars, alongside=alongside)
    finally:
        if alongside is not None:
            alongside.close()
            torch.set_num_threads(threads)
    best = state.best
    seconds["train"], seconds["valid"] = state.seconds, state.eval_seconds
    if alongside is not None:
        # The refit trained epoch for epoch beside the selection: its weights at the selected
        # epoch are the model a refit from scratch trains afterwards (concurrent_refit.py).
        phase = "refit"
        work = alongside.work
        model, dense_opts = alongside.result(best.epoch)
        seconds["refit"] = alongside.seconds  # overlapped with "train", not added to it
        log.info(f"refit on train + valid alongside the selection: its epoch {best.epoch} is the tested model")
    elif cfg.train.refit and work.has_valid and work.refit is not None:
        # A fresh model on train + validation for the selected number of epochs, so the tested
        # model has seen all training data (the validation split only chose the epoch count).
        phase = "refit"
        work = work.refit()
        if cfg.train.refit_from == "selected":  # the selected model trains on; epochs go on counting
            first, last, carry = best.epoch, best.epoch + cfg.train.refit_epochs, (model, dense_opts)
        else:
            first, last, carry = 0, best.epoch, None
        model, dense_opts, refit = fit(cfg, env, work, last, phase=phase, start=start, out=out, scalars=scalars,
                                       first_epoch=first, carry=carry)
        seconds["train"] += refit.seconds
        seconds["valid"] += refit.eval_seconds

    # Test once: the best validation epoch's weights (or the refit model).
    t0 = time.perf_counter()
    test = work.evaluate(model, "test", cfg, env)
    seconds["test"] = time.perf_counter() - t0
    result = {"test": test, "valid": best.valid, "best_epoch": best.epoch, "train_seconds": seconds["train"],
              "refit": phase == "refit", "refit_alongside": alongside is not None, "seconds": seconds}
    work.write_bundle(model, env, out, resolved=config.to_dict(cfg), origin={"written_by": "train", "epoch": best.epoch,
                                                                        "phase": phase})
    if env.is_main:
        outputs.write_json(out / "metrics.json", result)
        which = {"select": "the best validation epoch", "refit": "the refit model", "train": "the last epoch"}[phase]
        log.info(console.metrics_table(test, f"test metrics at every matryoshka dimension ({which}):"))
        log.info(f"best epoch {best.epoch}; {seconds['train']:.1f} s training, {seconds['valid']:.1f} s validation, "
                 f"{seconds['test']:.1f} s test, "
                 f"{time.perf_counter() - start:.1f} s in all; outputs in {cfg.run_dir}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (config.ConfigError, DataError, FloatingPointError) as err:  # one clear line, no traceback
        cli.report_input_error(err)
        raise SystemExit(2) from None
    except preemption.Preempted as stop:  # the scheduler retries a job that exits non-zero
        if os.environ.get("RANK", "0") == "0":  # every rank stops at the same step: say it once
            print(stop, file=sys.stderr)
        raise SystemExit(preemption.EXIT_CODE) from None
    except KeyboardInterrupt:  # Ctrl-C: one line; the last checkpoint (if any) is whole
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
