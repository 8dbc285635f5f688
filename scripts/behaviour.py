"""Record, or check, what a fixed set of runs computes: the guard for a change meant to move code
without changing behaviour (issue #20's layout move).

    python scripts/behaviour.py --out docs/behaviour/before.json        # record
    python scripts/behaviour.py --out /tmp/after.json --against docs/behaviour/before.json
    python scripts/behaviour.py --table docs/behaviour/before.json docs/behaviour/after.json  # markdown

Each case is one `distrec.train` run (through `distrec.experiments.runner`); what it keeps is the best epoch,
every test metric at every level, and a SHA-256 of each exported table. `--against` compares
them exactly (the move must leave every digit as it was) and exits 1 on any difference, naming it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from distrec.experiments import runner

REMI_SHORT = ["train.epochs=2", "eval.patience=10"]

# name: (config, overrides, processes). The synthetic presets cover MF; REMI reads time-ordered
# logs only, so its cases are two epochs of the committed Video config.
CASES: dict[str, tuple[str | None, list[str], int]] = {
    "mf_tiny_1": (None, ["data.synthetic.preset=tiny"], 1),
    "mf_tiny_2": (None, ["data.synthetic.preset=tiny"], 2),
    "mf_small_1": (None, [], 1),
    "mf_small_2": (None, [], 2),
    "remi_video_1": ("configs/remi_video.yaml", REMI_SHORT, 1),
    "remi_video_2": ("configs/remi_video.yaml", REMI_SHORT, 2),
    "phones_6": ("configs/mrl4rec_phones.yaml", ["train.epochs=6"], 1),
}


def _digest(run_dir: Path) -> dict[str, str]:
    emb = run_dir / "embeddings"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(emb.glob("*.npy"))}


def record(name: str, runs: Path) -> dict:
    config, overrides, nproc = CASES[name]
    result = runner.launch(config, overrides, nproc, runs / name, echo=False)
    if not result.ok:
        sys.exit(f"{name}: the run failed (exit {result.returncode}):\n{result.stderr_tail}")
    m = result.metrics
    return {"command": " ".join(result.command[1:]), "best_epoch": m.get("best_epoch"), "test": m["test"],
            "tables": _digest(result.run_dir), "wall_seconds": round(result.wall_seconds, 1)}


def differences(now: dict, before: dict) -> list[str]:
    out = []
    for name, was in before["cases"].items():
        got = now["cases"].get(name)
        if got is None:
            continue
        for key in ("best_epoch", "test", "tables"):
            if got[key] != was[key]:
                out.append(f"{name}.{key}: {json.dumps(was[key])} -> {json.dumps(got[key])}")
    return out


def table(before: dict, after: dict) -> str:
    """Markdown: each case's best epoch and full-dimension test metrics, before -> after."""
    rows = ["| case | best epoch | test R@20 | test N@20 | test HR@50 (REMI) |", "|---|---|---|---|---|"]
    for name, was in before["cases"].items():
        now = after["cases"].get(name)
        if now is None:
            continue
        full = list(was["test"])[-1]

        def pair(metric: str) -> str:
            if metric not in was["test"][full]:
                return ""
            return f"{was['test'][full][metric]:.4f} -> {now['test'][full][metric]:.4f}"

        rows.append(f"| {name} (d = {full}) | {was['best_epoch']} -> {now['best_epoch']} | {pair('recall@20')} | "
                    f"{pair('ndcg@20')} | {pair('hitrate@50')} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", nargs=2, metavar=("BEFORE", "AFTER"), help="print the two records side by side and exit")
    p.add_argument("--out", help="where the JSON record goes")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--against", help="an earlier record: exit 1 on any difference")
    p.add_argument("--runs", help="where the run directories go (default: a temporary folder)")
    args = p.parse_args()
    if args.table:
        print(table(*(json.loads(Path(f).read_text()) for f in args.table)))
        return
    if not args.out:
        p.error("--out is required (or --table BEFORE AFTER)")
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs or tmp)
        cases = {}
        for name in args.cases:
            cases[name] = record(name, runs)
            print(f"{name}: best epoch {cases[name]['best_epoch']}, {cases[name]['wall_seconds']} s", flush=True)
    now = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine(),
           "torch": torch.__version__, "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(now, indent=1) + "\n")
    if args.against:
        diffs = differences(now, json.loads(Path(args.against).read_text()))
        for line in diffs:
            print(line)
        print(f"{len(diffs)} differences against {args.against}")
        sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
