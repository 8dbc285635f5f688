"""Quality and speed per batch size: does a learning-rate rule keep batch 2,048's quality at
large batches, at the same number of epochs?

    .venv/bin/python scripts/batch_scaling.py --config configs/mrl4rec_phones.yaml \
        --batches 2048 8192 32768 65536 --powers 0 0.5 --out docs/bench/batch_scaling/phones

Each row is one selection run (`python -m distrec.train`, no refit, the config's epochs and
patience) at `train.batch_size=B` with `train.lr_batch_power=P`: the sparse (and dense) learning
rates are the config's, scaled by (B / train.lr_reference_batch)^P. Reported: the best
validation metric (the config's select_metric at full dimension, and at every level), its
epoch, the median epoch seconds, and the ratio to the row at the reference batch. Runs are
sequential (never two timed jobs at once). Writes OUT.json and OUT.md; a row already in
OUT.json is reused (a long grid can be resumed), `--fresh` runs every row again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_row(cfg: str, batch: int, power: float, extra: list[str], report: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "distrec.train", "--config", cfg, f"train.batch_size={batch}",
               f"train.lr_batch_power={power}", "train.refit=false", f"run_dir={tmp}/run", *extra]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
    evaluated = [r for r in records if "valid" in r]
    select = summary.get("select_metric") or "recall@20"
    full = max(evaluated[0]["valid"], key=int)
    best = max(evaluated, key=lambda r: r["valid"][full][select])  # the run's own selection
    shown = report or select  # e.g. hitrate@50 for REMI, at the epoch that recall@50 selected
    return {
        "batch_size": batch, "power": power, "best_epoch": best["epoch"], "epochs_run": records[-1]["epoch"],
        "valid": {d: m[shown] for d, m in best["valid"].items()}, "metric": shown, "select_metric": select,
        "epoch_s": statistics.median(r["epoch_seconds"] for r in records), "wall_s": wall,
        "command": " ".join(["python -m distrec.train", *cmd[3:-2 - len(extra)], *extra]),
    }


def table(rows: list[dict], reference: int) -> str:
    ref = {r["power"]: r for r in rows if r["batch_size"] == reference}
    any_ref = next(iter(ref.values()), None)
    levels = list(rows[0]["valid"]) if rows else []
    head = ["batch", "lr power", "best epoch", *[f"valid {rows[0]['metric']} @{d}" for d in levels],
            f"x batch {reference}", "epoch s", "speed x"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["power"], r["batch_size"])):
        base = ref.get(r["power"], any_ref)
        full = levels[-1]
        ratio = r["valid"][full] / base["valid"][full] if base else float("nan")
        speed = base["epoch_s"] / r["epoch_s"] if base else float("nan")
        cells = [f"{r['batch_size']:,}", f"{r['power']:g}", str(r["best_epoch"]), *[f"{r['valid'][d]:.4f}" for d in levels],
                 f"{ratio:.3f}", f"{r['epoch_s']:.2f}", f"{speed:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--batches", type=int, nargs="+", default=[2048, 8192, 32768, 65536])
    ap.add_argument("--powers", type=float, nargs="+", default=[0.5])
    ap.add_argument("--reference", type=int, default=2048, help="the batch every ratio is taken against")
    ap.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--report", help="the validation metric shown (default: the config's select_metric), "
                                     "read at the epoch the select_metric chose")
    ap.add_argument("overrides", nargs="*", help="config overrides for every row (key=value)")
    args = ap.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [] if args.fresh or not out.with_suffix(".json").exists() else json.loads(out.with_suffix(".json").read_text())["rows"]
    rows = list(done)
    for power in args.powers:
        for batch in args.batches:
            if any(r["batch_size"] == batch and r["power"] == power for r in rows):
                continue
            same = next((r for r in rows if r["batch_size"] == batch == args.reference), None)
            if same is not None:  # at the reference batch the power scales nothing: the same run
                rows.append({**same, "power": power})
                continue
            row = run_row(args.config, batch, power, args.overrides, args.report)
            rows.append(row)
            print(json.dumps(row), flush=True)
            meta = {"config": args.config, "overrides": args.overrides, "reference": args.reference,
                    "date": time.strftime("%Y-%m-%d"), "rows": rows}
            out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
            out.with_suffix(".md").write_text(table(rows, args.reference))
    print(table(rows, args.reference))


if __name__ == "__main__":
    main()
