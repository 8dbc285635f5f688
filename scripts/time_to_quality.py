"""Wall time from launch until test Recall@20 (full dimension) first reaches a target.

Launches `torchrun --nproc_per_node N -m distrec.train` with `eval.track_test=true` (test
metrics logged at every evaluation for this measurement only; model selection still uses
validation) and watches metrics.jsonl. The clock starts before the launcher starts, so
process start-up, data ingest, planning and every evaluation are included.

    .venv/bin/python scripts/time_to_quality.py --nproc 2 --target 0.1286 -- train.epochs=40
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/mrl4rec_phones.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--target", type=float, default=0.1286)
    p.add_argument("--metric", default="recall@20")
    p.add_argument("--run-dir", default="runs/time_to_quality")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    log_path = Path(args.run_dir) / "metrics.jsonl"
    log_path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc), "-m", "distrec.train",
           "--config", args.config, "eval.track_test=true", f"run_dir={args.run_dir}", "progress=false", *args.overrides]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    seen, reached = 0, None
    while True:
        done = proc.poll() is not None
        lines = log_path.read_text().splitlines() if log_path.exists() else []
        for line in lines[seen:]:
            record = json.loads(line)
            dim = max(record["test"], key=int)
            value = record["test"][dim][args.metric]
            if reached is None and value >= args.target:
                reached = {"seconds": time.perf_counter() - t0, "epoch": record["epoch"], "value": value,
                           "ndcg@20": record["test"][dim].get("ndcg@20")}
                print(f"reached test {args.metric} {value:.4f} >= {args.target} at epoch {record['epoch']}, "
                      f"{reached['seconds']:.1f} s after launch", flush=True)
        seen = len(lines)
        if done:
            break
        time.sleep(0.2)
    total = time.perf_counter() - t0
    result = {"cmd": " ".join(cmd[1:]), "target": args.target, "reached": reached, "total_seconds": total, "returncode": proc.returncode}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
