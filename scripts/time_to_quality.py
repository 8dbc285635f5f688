"""Wall time from launch until validation or test Recall@20 (full dimension) first reaches a target.

`--split valid` (no test metrics needed) compares with a peer's validation value, e.g. ALS's
from docs/peers/*.json: the time distrec needs to reach the peer's quality on the same split.

Launches `distrec.train` on `--nproc` processes through `distrec.experiments.runner.launch` with
`eval.track_test=true` (test metrics logged at every evaluation for this measurement only;
model selection still uses validation) and watches its metrics.jsonl records. The clock starts
before the launcher starts, so process start-up, data ingest, planning and every evaluation are
included. `--stop` ends the run once the target is reached instead of letting it finish.

    .venv/bin/python scripts/time_to_quality.py --nproc 2 --target 0.1286 -- train.epochs=40
    .venv/bin/python scripts/time_to_quality.py --split valid --target 0.1491 --stop
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distrec.experiments.runner import launch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/mrl4rec_phones.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--target", type=float, default=0.1286)
    p.add_argument("--metric", default="recall@20")
    p.add_argument("--split", choices=("valid", "test"), default="test", help="whose metric must reach the target")
    p.add_argument("--run-dir", default="runs/time_to_quality")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("--stop", action="store_true", help="stop the run as soon as the target is reached")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    reached: dict[str, Any] | None = None

    def watch(record: dict[str, Any]) -> bool:
        nonlocal reached
        if reached is not None or args.split not in record:
            return False
        dim = max(record[args.split], key=int)
        value = record[args.split][dim][args.metric]
        if value >= args.target:
            reached = {"seconds": time.perf_counter() - t0, "epoch": record["epoch"], "value": value,
                       "ndcg@20": record[args.split][dim].get("ndcg@20")}
            print(f"reached {args.split} {args.metric} {value:.4f} >= {args.target} at epoch {record['epoch']}, "
                  f"{reached['seconds']:.1f} s after launch", flush=True)
            return args.stop
        return False

    t0 = time.perf_counter()
    tracking = ["eval.track_test=true"] if args.split == "test" else []
    run = launch(args.config, [*tracking, *args.overrides], args.nproc, args.run_dir, on_metrics=watch)
    result = {"cmd": " ".join(run.command[1:]), "split": args.split, "target": args.target, "reached": reached,
              "total_seconds": run.wall_seconds, "returncode": run.returncode}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
