"""Paper Table 3 and Fig. 3 on Amazon-Phones: BPR-D, BPR-M, MRL-D, MRL-M from one config.

Runs each variant through `distrec.experiments.runner.launch` (loss/sampler overridden, `--nproc`
processes), then evaluates every run's exported embeddings at prefix sizes 4..64 (the "deploy
at any dimension" curve of Fig. 3) and writes a Markdown table and a PNG.

    .venv/bin/python scripts/phones_ablation.py --nproc 2 --out docs/phones_ablation
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distrec.data import read_cache
from distrec.distributed import ONE_PROCESS
from distrec.eval import evaluate
from distrec.experiments.runner import launch

# Each variant is the config plus these overrides.
VARIANTS: dict[str, list[str]] = {
    "BPR-D": ["train.loss=bpr", "train.sampler=dns"],
    "BPR-M": ["train.loss=bpr", "train.sampler=mns"],
    "MRL-D": ["train.loss=mrl", "train.sampler=dns"],
    "MRL-M": ["train.loss=mrl", "train.sampler=mns"],
}
DIMS = (4, 8, 12, 16, 24, 32, 40, 48, 56, 64)


def run_variant(name: str, args) -> dict:
    run = launch(args.config, [*VARIANTS[name], *args.overrides], args.nproc, Path(args.runs) / name)
    if not run.ok:
        raise SystemExit(f"{name} failed (exit code {run.returncode}):\n{run.stderr_tail}")
    metrics = run.metrics
    selected = max(r["epoch"] for r in run.records if r["phase"] in ("select", "train"))
    trained = selected + (metrics["best_epoch"] if metrics.get("refit") else 0)  # + the refit's epochs
    return {"name": name, "cmd": " ".join(run.command[1:]), "wall_s": run.wall_seconds, "metrics": metrics,
            "epochs_run": selected, "epochs_trained": trained, "s_per_epoch": metrics["train_seconds"] / trained,
            "run_dir": str(run.run_dir)}


def recall_by_dim(run_dir: Path) -> dict[int, float]:
    """Test Recall@20 of the exported (best-epoch) embeddings truncated to each prefix size."""
    data = read_cache(run_dir / "data")
    users = torch.from_numpy(np.load(run_dir / "embeddings" / "user_embeddings.npy"))
    items = torch.from_numpy(np.load(run_dir / "embeddings" / "item_embeddings.npy"))
    metrics = evaluate.evaluate(lambda rows: users[torch.as_tensor(rows)], lambda ids: items[ids], data.num_items, ONE_PROCESS,
                                evaluate.EvalSplit(data.csr("test"), (data.csr("train"), data.csr("valid"))),
                                evaluate.EvalSpec(levels=DIMS, ks=(20,)))
    return {d: metrics[str(d)]["recall@20"] for d in DIMS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/mrl4rec_phones.yaml")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--runs", default="runs/phones_ablation")
    p.add_argument("--out", default="docs/phones_ablation")
    p.add_argument("--only", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--report-only", action="store_true", help="rebuild the table and PNG from --out's JSON")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.report_only:  # re-render the table and figure from a previous run's JSON
        results = json.loads(out.with_suffix(".json").read_text())
        for r in results:
            r["recall20_by_dim"] = {int(k): v for k, v in r["recall20_by_dim"].items()}
    else:
        results = []
        for name in args.only:
            res = run_variant(name, args)
            res["recall20_by_dim"] = recall_by_dim(Path(res["run_dir"]))
            results.append(res)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    rows = ["| variant | R@10 | R@20 | R@50 | N@10 | N@20 | N@50 | best epoch | selection epochs | epochs trained (with refit) | s/epoch | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["metrics"]["test"]["64"]
        rows.append(f"| {r['name']} | " + " | ".join(f"{t[m]:.4f}" for m in ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50"))
                    + f" | {r['metrics']['best_epoch']} | {r['epochs_run']} | {r['epochs_trained']} | {r['s_per_epoch']:.2f} | {r['wall_s']:.0f} |")
    rows += ["", "Test Recall@20 of the best-epoch embeddings truncated to k dimensions:", "",
             "| variant | " + " | ".join(f"k={d}" for d in DIMS) + " |", "|---|" + "---|" * len(DIMS)]
    for r in results:
        rows.append(f"| {r['name']} | " + " | ".join(f"{r['recall20_by_dim'][d]:.4f}" for d in DIMS) + " |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(DIMS, [r["recall20_by_dim"][d] for d in DIMS], marker="o", label=r["name"])
    ax.set_xlabel("evaluation dimension k (first k coordinates)")
    ax.set_ylabel("test Recall@20")
    ax.set_title("Amazon-Phones: Recall@20 by dimension (cf. MRL4Rec Fig. 3)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
