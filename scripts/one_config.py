"""One MF config on every data set, against its peers: launch -> metrics.json, side by side.

For each data set, `configs/mrl4rec.yaml` runs with only its data keys changed, and (with
--tuned) the data set's own tuned config runs as well. Each run is timed from launch to exit
(`runner.launch`: start-up, ingest, selection, refit, test and export included). The table puts
every level of each run next to the peers of docs/peers/<name>.json (scripts/peers.py: ALS, BPR,
EASE, each searched on validation and refit), with the ratio to ALS and to EASE at d = 64.

    .venv/bin/python scripts/one_config.py --sets phones ml100k video --tuned --out docs/one_config.json
    .venv/bin/python scripts/one_config.py --table docs/one_config.json     # the markdown again

Runs go one after the other (never two timed jobs at once), each with OMP_NUM_THREADS threads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from distrec.experiments import runner

ROOT = runner.ROOT
SHARED = "../shared/data"  # overrides are relative to the working directory: the repository root
SETS = {
    "phones": {"data": [], "tuned": "configs/mrl4rec_phones.yaml"},
    "ml100k": {"data": ["data.format=log", f"data.train={SHARED}/ml-100k/u.data", "data.test=null"],
               "tuned": "configs/mrl4rec_ml100k.yaml"},
    "video": {"data": ["data.format=log", f"data.train={SHARED}/amazon-video/Video.txt", "data.test=null"],
              "tuned": "configs/mrl4rec_video.yaml"},
}
ONE = "configs/mrl4rec.yaml"
PEER_NAMES = {"als": "implicit ALS", "bpr": "implicit BPR", "ease": "EASE"}


def run(name: str, config: str, overrides: list[str], nproc: int, runs: Path) -> dict:
    label = Path(config).stem
    result = runner.launch(ROOT / config, overrides, nproc, runs / f"{name}_{label}", echo=False)
    if not result.ok:
        raise SystemExit(f"{name} {config} failed (exit {result.returncode}):\n{result.stderr_tail}")
    m = result.metrics
    print(f"{name} {label}: {result.wall_seconds:.0f} s, best epoch {m['best_epoch']}, "
          f"test@64 R@20 {m['test']['64']['recall@20']:.4f} N@20 {m['test']['64']['ndcg@20']:.4f}", flush=True)
    return {"config": config, "overrides": overrides, "nproc": nproc, "wall_seconds": result.wall_seconds,
            "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"], "seconds": m["seconds"],
            "refit": m["refit"], "valid": m["valid"], "test": m["test"], "command": " ".join(result.command)}


def table(name: str, runs: list[dict], peers: dict) -> str:
    als, ease = peers.get("als"), peers.get("ease")
    head = "| model | dim | valid R@20 | test R@20 | test N@20 | vs ALS (R / N) | vs EASE (R / N) | launch -> metrics.json s |"
    lines = [f"### {name}", "", head, "|---|---|---|---|---|---|---|---|"]

    def ratio(row: dict, peer: dict | None) -> str:
        if peer is None:
            return ""
        return f"{row['recall@20'] / peer['test']['recall@20']:.3f} / {row['ndcg@20'] / peer['test']['ndcg@20']:.3f}"

    for key, peer in peers.items():
        fit = f"fit {peer['fit_seconds']:.1f}, search {peer['search_seconds']:.0f} ({peer['trials']} trials)"
        lines.append(f"| {PEER_NAMES.get(key, key)} (searched) | {peer['params'].get('factors', 'items')} | "
                     f"{peer['valid']['recall@20']:.4f} | {peer['test']['recall@20']:.4f} | {peer['test']['ndcg@20']:.4f} "
                     f"| {ratio(peer['test'], als)} | {ratio(peer['test'], ease)} | {fit} |")
    for r in runs:
        label = "distrec, one config" if r["config"] == ONE else f"distrec, tuned (`{r['config']}`)"
        for dim, row in r["test"].items():
            valid = f"{r['valid'][dim]['recall@20']:.4f}" if r.get("valid") else ""
            wall = f"{r['wall_seconds']:.0f} (best epoch {r['best_epoch']})" if dim == max(r["test"], key=int) else ""
            lines.append(f"| {label} | {dim} | {valid} | {row['recall@20']:.4f} | {row['ndcg@20']:.4f} | "
                         f"{ratio(row, als)} | {ratio(row, ease)} | {wall} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    p.add_argument("--tuned", action="store_true", help="also run each data set's own tuned config")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--runs", default="runs/one_config", help="where the run directories go")
    p.add_argument("--out", default=None, help="write every run's figures here as JSON")
    p.add_argument("--table", default=None, help="print the tables of an earlier --out file and exit")
    p.add_argument("overrides", nargs="*", help="extra overrides for the one config's runs")
    args = p.parse_args()
    if args.table:
        record = json.loads(Path(args.table).read_text())
        for name, runs in record["sets"].items():
            print(table(name, runs, json.loads((ROOT / "docs" / "peers" / f"{name}.json").read_text())["peers"]))
        return
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([".venv/bin/python", *sys.argv]), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "sets": {}}
    for name in args.sets:
        spec = SETS[name]
        runs = [run(name, ONE, [*spec["data"], *args.overrides], args.nproc, Path(args.runs))]
        if args.tuned:
            runs.append(run(name, spec["tuned"], [], args.nproc, Path(args.runs)))
        record["sets"][name] = runs
        print(table(name, runs, json.loads((ROOT / "docs" / "peers" / f"{name}.json").read_text())["peers"]), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
