"""Side-by-side table of distrec runs and their peers (docs/peers/*.json from scripts/peers.py).

For each data set: the peers' test R@20 / N@20 (settings searched on validation, refit on
train + valid), distrec's test metrics at every level of a finished run, the ratio to the best
peer at d = 64, and time to quality: the wall time after launch at which the run's validation
R@20 first reached the best peer's validation R@20 (from the run's metrics.jsonl), next to the
peer's own fit time.

    .venv/bin/python scripts/peer_table.py phones=runs/mrl4rec_phones:docs/peers/phones.json \
        ml100k=runs/mrl4rec_ml100k:docs/peers/ml100k.json video=runs/mrl4rec_video:docs/peers/video.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return metrics, records


def time_to(records: list[dict], target: float, metric: str = "recall@20") -> tuple[float, int] | None:
    """(seconds after launch, epoch) of the first selection-phase validation at or above `target`."""
    for record in records:
        if record.get("phase") == "select" and "valid" in record:
            full = max(record["valid"], key=int)
            if record["valid"][full][metric] >= target:
                return record["elapsed_seconds"], record["epoch"]
    return None


def table(name: str, run_dir: Path, peers_path: Path) -> str:
    metrics, records = load_run(run_dir)
    peers = json.loads(peers_path.read_text())["peers"]
    best_name = max(peers, key=lambda p: peers[p]["valid"]["recall@20"])  # chosen on validation
    best = peers[best_name]
    lines = [f"### {name}", "", "| model | dim | valid R@20 | test R@20 | test N@20 | vs best peer (R / N) |", "|---|---|---|---|---|---|"]
    for peer, p in peers.items():
        label, dim = ("EASE", "items") if peer == "ease" else (f"implicit {peer.upper()}", "64")
        lines.append(f"| {label} (searched) | {dim} | {p['valid']['recall@20']:.4f} | "
                     f"{p['test']['recall@20']:.4f} | {p['test']['ndcg@20']:.4f} | |")
    full = max(metrics["test"], key=int)
    for dim, row in metrics["test"].items():
        ratio = (f"{row['recall@20'] / best['test']['recall@20']:.3f} / {row['ndcg@20'] / best['test']['ndcg@20']:.3f}")
        valid = f"{metrics['valid'][dim]['recall@20']:.4f}" if metrics.get("valid") else ""
        lines.append(f"| distrec | {dim} | {valid} | {row['recall@20']:.4f} | {row['ndcg@20']:.4f} | {ratio} |")
    reached = time_to(records, best["valid"]["recall@20"])
    when = f"{reached[0]:.0f} s (epoch {reached[1]})" if reached else "never (within the run)"
    lines += ["", f"Time to {best_name.upper()}'s validation R@20 ({best['valid']['recall@20']:.4f}): distrec {when}; "
                  f"{best_name.upper()} fits in {best['fit_seconds']:.1f} s (its search took {best['search_seconds']:.0f} s). "
                  f"distrec's best epoch {metrics['best_epoch']}, {metrics['train_seconds']:.0f} s of training "
                  f"(refit: {metrics.get('refit')}); d = {full} vs d = 32 on test R@20: "
                  f"{metrics['test'][full]['recall@20']:.4f} vs {metrics['test'].get('32', {}).get('recall@20', float('nan')):.4f}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", help="NAME=RUN_DIR:PEERS_JSON")
    args = p.parse_args()
    for spec in args.sets:
        name, _, paths = spec.partition("=")
        run_dir, _, peers = paths.partition(":")
        print(table(name, Path(run_dir), Path(peers)))


if __name__ == "__main__":
    main()
