"""Throughput at Amazon-Books scale on the synthetic `books` preset (603,668 users, 367,982
items, 8,898,041 interactions): data generation, planning + sharding, training steps per
second and full-ranking evaluation speed, on however many ranks torchrun gives it.

    .venv/bin/torchrun --nproc_per_node 2 scripts/bench_scale.py --steps 100 --eval-users 4096

Evaluation scores `--eval-users` users (spread over ranks) against all items at every level,
and reports users/s; a full evaluation of all users takes num_users / that rate. Prints one
JSON line on rank 0. `--checkpoint DIR` also times writing and reading a resumable checkpoint.

    .venv/bin/torchrun --nproc_per_node 1 scripts/bench_scale.py --task multi_interest --steps 60 --eval-users 2048

measures REMI (configs/remi_video.yaml's settings) on the preset's pairs written as a `user item`
sequence log (each user's items in a random order: a cost, not a quality, benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distrec import config, distributed  # noqa: E402
from distrec.eval import evaluate  # noqa: E402
from distrec.run import checkpoint  # noqa: E402
from distrec.run.prefetch import prefetched  # noqa: E402
from distrec.data import load_dataset, synthetic  # noqa: E402
from distrec.tasks import build_workload, mrl4rec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="books")
    p.add_argument("--task", default="mrl4rec", choices=("mrl4rec", "multi_interest"),
                   help="multi_interest: REMI (configs/remi_video.yaml's settings) on the preset's pairs as sequences")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-users", type=int, default=4096)
    p.add_argument("--save", default=None, help="write the data and the trained tables here (a run layout "
                   "that scripts/bench_eval.py reads): train one epoch's steps first to benchmark evaluation "
                   "on a trained model")
    p.add_argument("--checkpoint", default=None, help="also time checkpoint.save / load of the model (3 saves) in this "
                   "directory: what a mid-epoch checkpoint stalls training for")
    p.add_argument("--profile", default=None, help="after timing, profile 10 more steps with torch.profiler and write "
                   "rank 0's table (the step's phases, then the ops by self time) to this file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if args.task == "multi_interest":
        return bench_multi_interest(args)
    cfg = config.load(None, [f"data.synthetic.preset={args.preset}", *args.overrides])
    env = distributed.init(cfg.device)
    out = {"world_size": env.world_size, "preset": args.preset, "batch_size": cfg.train.batch_size, "sampler": cfg.train.sampler}
    t = time.perf_counter()
    data = load_dataset(cfg.data, out_dir=None if args.save is None else Path(args.save) / "data")
    out["data_seconds"] = time.perf_counter() - t
    out.update(users=data.num_users, items=data.num_items, train_pairs=int(data.train_users.size))
    t = time.perf_counter()
    work = mrl4rec.from_data(cfg, env, data)  # the trainer's own batches, sampler and evaluation
    model, dense = work.build()
    out["shard_seconds"] = time.perf_counter() - t
    step_s = time_steps(work, model, dense, env, args.steps, cfg.train.prefetch)
    if args.profile is not None:
        profile_steps(work, model, dense, env, Path(args.profile))
    out.update(step_ms_median=1000 * step_s, pairs_per_s=cfg.train.batch_size / step_s,
               epoch_seconds_est=data.train_users.size / cfg.train.batch_size * step_s)
    if args.checkpoint is not None:
        out.update(time_checkpoint(Path(args.checkpoint), model, dense, env, cfg, step_s))
    # Evaluation speed on a fixed sample of users with test items.
    every_user = evaluate.rows_with_targets(work.eval_sets["test"].targets)
    users_with_test = every_user[: args.eval_users]
    t = time.perf_counter()
    work.evaluate(model, "test", cfg, env, rows=users_with_test)
    eval_s = time.perf_counter() - t
    out.update(eval_users=len(users_with_test), eval_seconds=eval_s, eval_users_per_s=len(users_with_test) / eval_s,
               full_eval_seconds_est=len(every_user) / (len(users_with_test) / eval_s),
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.save is not None:
        tables = model.module.tables
        users, items = (evaluate.gather_table(t, n, env) for t, n in ((tables.users, data.num_users), (tables.items, data.num_items)))
        if env.is_main:
            (Path(args.save) / "embeddings").mkdir(parents=True, exist_ok=True)
            np.save(Path(args.save) / "embeddings" / "user_embeddings.npy", users.cpu().numpy())
            np.save(Path(args.save) / "embeddings" / "item_embeddings.npy", items.cpu().numpy())
    if env.is_main:
        print(json.dumps(out, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    distributed.shutdown()


def time_checkpoint(where: Path, model, dense, env, cfg, step_s: float) -> dict:
    """Median seconds of `checkpoint.save` (every rank's shards and optimizer state, then the
    swap), one `checkpoint.load`, the bytes on disk, and the share of training time that one
    checkpoint every `train.checkpoint_every_minutes` (10 when unset) would cost."""
    times = []
    for _ in range(3):
        distributed.barrier(env)
        t = time.perf_counter()
        checkpoint.save(where / "last", model, dense, env, {"bench": True})
        times.append(time.perf_counter() - t)
    distributed.barrier(env)
    t = time.perf_counter()
    checkpoint.load(where / "last", model, dense)
    load_s = time.perf_counter() - t
    size = sum(f.stat().st_size for f in (where / "last").rglob("*") if f.is_file())
    minutes = cfg.train.checkpoint_every_minutes or 10.0
    save_s = float(np.median(times))
    return {"checkpoint_save_seconds": save_s, "checkpoint_load_seconds": load_s, "checkpoint_mb": size / 2**20,
            "checkpoint_every_minutes": minutes, "checkpoint_share_of_training": save_s / (60 * minutes + save_s),
            "checkpoint_save_in_steps": save_s / step_s}


def time_steps(work, model, dense, env, steps: int, depth: int = 0) -> float:
    """Median seconds of a whole training step (batch building and sampling included; with `depth` > 0 the
    next batches are built during the step, as train.prefetch does in the loop), after 5 warm-up steps."""
    batches = prefetched(work.batches(1), depth)  # as the training loop builds them (train.prefetch)
    times = []
    model.train()
    for step in range(steps + 5):
        distributed.barrier(env)
        t = time.perf_counter()
        batch = next(batches, None)  # building the batch (sampling included) is part of a step
        if batch is None:  # past one epoch: the next one
            batches = prefetched(work.batches(2), depth)
            batch = next(batches)
        loss, _ = model(batch)
        loss.backward()
        for opt in dense:  # the router's optimizer (multi-interest); fused tables step in backward
            opt.step()
            opt.zero_grad()
        distributed.barrier(env)
        if step + 1 == 5 or (step + 1) % 500 == 0:
            if env.is_main:
                print(f"step {step + 1}", file=sys.stderr, flush=True)
        if step >= 5:  # the first steps warm up allocators and the kernels
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def profile_steps(work, model, dense, env, path: Path, steps: int = 10) -> None:
    """Where a step's time goes: torch.profiler over `steps` steps (after the timed ones), each
    phase in its own region (batch = building the batch and its draws), written by rank 0."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    batches = work.batches(3)
    next(batches)  # the epoch's first batch also shuffles the epoch's order: not a step's cost
    model.train()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            with record_function("step.batch"):
                batch = next(batches)
            with record_function("step.forward"):
                loss, _ = model(batch)
            with record_function("step.backward"):
                loss.backward()
            with record_function("step.dense"):
                for opt in dense:
                    opt.step()
                    opt.zero_grad()
    if env.is_main:
        table = prof.key_averages()
        phases = [e for e in table if e.key.startswith("step.")]
        lines = [f"{steps} steps; per step, ms (CPU total, self included):"]
        lines += [f"  {e.key:15s} {e.cpu_time_total / 1000 / steps:9.2f}" for e in phases]
        path.parent.mkdir(parents=True, exist_ok=True)
        by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25)
        path.write_text("\n".join(lines) + "\n\n" + table.table(sort_by="self_cpu_time_total", row_limit=30)
                        + "\n\nBy input shape:\n" + by_shape + "\n")


def sequence_log(preset: str, path: Path) -> None:
    """The synthetic preset's pairs as a `user item` log, each user's items in a random order.

    The generator has no notion of time, so a model learns nothing sequential here: this log
    measures what a REMI run of that size costs, not what quality it reaches."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    users, items = synthetic.generate(config.load(None, [f"data.synthetic.preset={preset}"]).data.synthetic)
    order = np.lexsort((np.random.default_rng(0).random(users.size), users))
    pcsv.write_csv(pa.table({"user": users[order], "item": items[order]}), path,
                   pcsv.WriteOptions(include_header=False, delimiter=" "))


def bench_multi_interest(args) -> None:
    """REMI at the preset's size: samples/s, epoch seconds and the full test evaluation's seconds
    (extrapolated from a fixed sample of `--eval-users` test users)."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"distrec_{args.preset}_sequences.txt"
    env = distributed.init("auto")
    if env.is_main and not log.exists():
        sequence_log(args.preset, log)
    distributed.barrier(env)
    # eval.valid_users: the fixed seeded sample that evaluate() scores for "valid" (pointed at test below).
    cfg = config.load(ROOT / "configs" / "remi_video.yaml", [f"data.train={log}", f"eval.valid_users={args.eval_users}", *args.overrides])
    out = {"world_size": env.world_size, "preset": args.preset, "task": "multi_interest", "batch_size": cfg.train.batch_size}
    t = time.perf_counter()
    work = build_workload(cfg, env, None)
    out["data_seconds"] = time.perf_counter() - t
    model, dense = work.build()
    step_s = time_steps(work, model, dense, env, args.steps, cfg.train.prefetch)
    out.update(step_ms_median=1000 * step_s, samples_per_s=cfg.train.batch_size / step_s, train_samples=work.num_samples,
               epoch_seconds_est=work.num_samples / cfg.train.batch_size * step_s)
    test_rows = len(evaluate.rows_with_targets(work.eval_sets["test"].targets))
    t = time.perf_counter()
    work.evaluate(model, "test", cfg, env, rows=evaluate.sample_rows(work.eval_sets["test"].targets, args.eval_users, seed=0))
    eval_s = time.perf_counter() - t
    out.update(eval_users=args.eval_users, eval_seconds=eval_s, eval_users_per_s=args.eval_users / eval_s,
               test_users=test_rows, full_eval_seconds_est=test_rows * eval_s / args.eval_users,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if env.is_main:
        print(json.dumps(out))
    distributed.shutdown()


if __name__ == "__main__":
    main()
