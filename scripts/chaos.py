"""Kill a random worker of a 2-rank run at a random moment, many times, and count what survives.

    .venv/bin/python scripts/chaos.py --trials 20            # docs/reliability.md
    .venv/bin/python scripts/chaos.py --trials 5 --signal TERM

Each trial starts `torchrun --standalone --nproc_per_node 2 --max-restarts R -m distrec.train`
on the `tiny` preset (135 steps per epoch) with a checkpoint every epoch and every
`--every-steps` steps (`train.resume` at its default, auto), waits until a random number of
epochs is logged plus a random part of one more, sends the signal to one random worker, and
waits for the job to end. A trial is `completed` (exit 0 and metrics.json), `failed` (another
exit) or `hung` (still running after --timeout; then killed). `lost_steps_max` bounds the
progress lost: the steps between the last checkpoint written before the kill and the kill,
at most one interval when the restart resumed from that checkpoint (`resumed_ok`).
Prints one line per trial and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distrec.run import rundir

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.synthetic.preset=tiny", "train.batch_size=32", "model.dim=16", "model.levels=[4,8,16]",
        "eval.ks=[5,20]", "eval.select_metric=recall@20", "eval.patience=100", "train.checkpoint_every=1", "progress=false"]


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (torchrun's workers), from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def logged_epochs(run: Path) -> list[int]:
    """Epochs in metrics.jsonl: the live attempt's while the job runs, the published one after."""
    path = rundir.live_file(run, "metrics.jsonl")
    if not path.exists():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def trial(rng: random.Random, args, run: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(args.max_restarts), "-m", "distrec.train", *TINY,
           f"train.epochs={args.epochs}", f"train.checkpoint_every_steps={args.every_steps}", f"run_dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(run.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        kill_after = rng.randint(1, args.epochs - 2)  # epochs logged before the kill
        t0 = time.time()
        while len(logged_epochs(run)) < kill_after and proc.poll() is None and time.time() - t0 < args.timeout:
            time.sleep(0.05)
        time.sleep(rng.uniform(0, args.epoch_s))  # somewhere inside the next epoch
        workers = children(proc.pid)
        at_kill = logged_epochs(run)
        victim = rng.choice(workers) if workers and proc.poll() is None else None
        if victim is not None:
            os.kill(victim, getattr(signal, f"SIG{args.signal}"))
        log.flush()
        saved_before = last_checkpoint(run.with_suffix(".log").read_text(), len(at_kill))
        try:
            code = proc.wait(timeout=args.timeout)
            outcome = "completed" if code == 0 and (run / "metrics.json").exists() else "failed"
        except subprocess.TimeoutExpired:
            for pid in children(proc.pid):  # torchrun's workers live in sessions of their own
                os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, outcome = None, "hung"
    resumes = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()] \
        if (run / "resumes.jsonl").exists() else []
    resumed_at = resumes[-1]["after_epoch"] * STEPS + resumes[-1].get("batch", 0) if resumes else None
    return {"outcome": outcome, "exit": code, "killed": victim is not None, "epochs_before_kill": len(at_kill),
            "checkpoint_before_kill_step": saved_before, "resumed_at_step": resumed_at,
            "resumed_ok": resumed_at is not None and resumed_at >= saved_before,
            "lost_steps_max": args.every_steps if resumed_at is not None and resumed_at >= saved_before else None,
            "seconds": round(time.time() - t0, 1), "log": str(run.with_suffix(".log"))}


STEPS = 135  # steps per epoch of TINY: 4,321 training pairs / batch 32


def last_checkpoint(log: str, epochs_logged: int) -> int:
    """The global step of the newest checkpoint the log shows: a mid-epoch "checkpoint: epoch E,
    B/N batches" line, or the end of the last logged epoch (a checkpoint every epoch)."""
    steps = [(int(e) - 1) * STEPS + int(b) for e, b in re.findall(r"checkpoint: epoch (\d+), (\d+)/\d+ batches", log)]
    return max([epochs_logged * STEPS, *steps])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--max-restarts", type=int, default=2)
    p.add_argument("--every-steps", type=int, default=40, help="train.checkpoint_every_steps (135 steps per epoch)")
    p.add_argument("--signal", default="KILL", choices=("KILL", "TERM"))
    p.add_argument("--epoch-s", type=float, default=1.5, help="about one epoch's seconds (the kill lands inside one)")
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", default=None, help="where trial runs go (default: a temporary directory)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    base = Path(args.dir or tempfile.mkdtemp(prefix="distrec_chaos_"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(args.trials):
        r = trial(rng, args, base / f"trial{i:02d}")
        results.append(r)
        print(json.dumps({"trial": i, **r}), flush=True)
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("completed", "failed", "hung")}
    print(json.dumps({"trials": len(results), **counts, "resumed_from_the_last_checkpoint": sum(r["resumed_ok"] for r in results),
                      "every_steps": args.every_steps, "signal": args.signal, "max_restarts": args.max_restarts,
                      "dir": str(base)}))


if __name__ == "__main__":
    main()
