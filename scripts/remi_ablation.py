"""REMI ablation on Amazon Video Games: ComiRec-SA baseline, IHN only, RR only, IHN + RR.

Every variant runs through `distrec.experiments.runner.launch` (`--nproc` processes) with the same budget
(epochs, batch, negatives, early stopping), differing only in train.ihn_beta / train.rr_lambda.
Writes a Markdown table (every matryoshka level), JSON, and a PNG of routing matrices of a few
test users without and with routing regularisation.

    .venv/bin/python scripts/remi_ablation.py --nproc 2 --out docs/remi_ablation -- train.epochs=10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from distrec import config
from distrec.data.sequences import history_windows, load_sequences
from distrec.experiments.runner import launch
from distrec.nn.towers import SelfAttentiveRouter


@dataclasses.dataclass(frozen=True)
class Variant:
    config: str
    overrides: list[str]
    run_name: str  # directory under --runs


def variants(beta: float, lam: float) -> dict[str, Variant]:
    remi = "configs/remi_video.yaml"
    return {
        "ComiRec-SA (baseline)": Variant("configs/comirec_video.yaml", [], "ComiRec-SA"),
        "IHN only": Variant(remi, [f"train.ihn_beta={beta}", "train.rr_lambda=0"], "IHN"),
        "RR only": Variant(remi, ["train.ihn_beta=0", f"train.rr_lambda={lam}"], "RR"),
        "IHN + RR (REMI)": Variant(remi, [f"train.ihn_beta={beta}", f"train.rr_lambda={lam}"], "REMI"),
    }


def run(name: str, variant: Variant, args) -> dict:
    result = launch(variant.config, [*variant.overrides, *args.overrides], args.nproc, Path(args.runs) / variant.run_name)
    if not result.ok:
        raise SystemExit(f"{name} failed (exit code {result.returncode}):\n{result.stderr_tail}")
    metrics = result.metrics
    epochs = result.records[-1]["epoch"]
    return {"name": name, "cmd": " ".join(result.command[1:]), "run_dir": str(result.run_dir), "wall_s": result.wall_seconds,
            "metrics": metrics, "epochs_run": epochs, "s_per_epoch": metrics["train_seconds"] / epochs,
            "routing": result.records[-1].get("routing"), "config": variant.config, "extra": variant.overrides}


def routing_matrices(run_dir: Path, users: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Attention [users, K, L] and masks of the first test users, from a run's exported model."""
    cfg = config.load(run_dir / "config.yaml")
    data = load_sequences(cfg.data)
    test_users, ends, _ = data.eval_split("test")
    long_enough = np.flatnonzero(ends >= cfg.data.sequence.max_len // 2)[:users]
    hist, mask = history_windows(data, test_users[long_enough], ends[long_enough], cfg.data.sequence.max_len)
    items = torch.from_numpy(np.load(run_dir / "embeddings" / "item_embeddings.npy"))
    m = cfg.model
    router = SelfAttentiveRouter(m.dim, m.num_interests, m.hidden_factor, cfg.data.sequence.max_len, m.positional)
    router.load_state_dict(torch.load(run_dir / "embeddings" / "router.pt"))
    with torch.no_grad():
        _, attn = router(items[torch.as_tensor(hist)], torch.as_tensor(mask))
    return attn.numpy(), mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--rr-lambda", type=float, default=3.125)
    p.add_argument("--runs", default="runs/remi_ablation")
    p.add_argument("--out", default="docs/remi_ablation")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    results = [run(name, variant, args) for name, variant in variants(args.beta, args.rr_lambda).items()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    base = results[0]["metrics"]["test"]["64"]
    rows = ["| variant | β | λ | R@20 | R@50 | HR@20 | HR@50 | N@20 | N@50 | HR@50 vs base | R@50 vs base | best epoch | s/epoch | wall s | max routing weight | routing entropy |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["metrics"]["test"]["64"]
        cfg = config.load(Path(r["run_dir"]) / "config.yaml")  # as resolved by the run, with every override
        rt = r["routing"] or {}
        rows.append(f"| {r['name']} | {cfg.train.ihn_beta:g} | {cfg.train.rr_lambda:g} | " + " | ".join(
            f"{t[m]:.4f}" for m in ("recall@20", "recall@50", "hitrate@20", "hitrate@50", "ndcg@20", "ndcg@50"))
            + f" | {100 * (t['hitrate@50'] / base['hitrate@50'] - 1):+.1f}% | {100 * (t['recall@50'] / base['recall@50'] - 1):+.1f}%"
            + f" | {r['metrics']['best_epoch']} | {r['s_per_epoch']:.1f} | {r['wall_s']:.0f} | {rt.get('max_weight', float('nan')):.3f} | {rt.get('entropy', float('nan')):.3f} |")
    rows += ["", "Test metrics of each variant at every matryoshka level (R@50 / HR@50 / N@50):", "",
             "| variant | " + " | ".join(f"d={d}" for d in results[0]["metrics"]["test"]) + " |", "|---|" + "---|" * len(results[0]["metrics"]["test"])]
    for r in results:
        rows.append(f"| {r['name']} | " + " | ".join(
            f"{v['recall@50']:.4f} / {v['hitrate@50']:.4f} / {v['ndcg@50']:.4f}" for v in r["metrics"]["test"].values()) + " |")
    out.with_suffix(".md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pair = [r for r in results if r["name"] in ("IHN only", "IHN + RR (REMI)")]
    mats = [routing_matrices(Path(r["run_dir"])) for r in pair]
    n_users = mats[0][0].shape[0]
    fig, axes = plt.subplots(len(pair), n_users, figsize=(3.2 * n_users, 1.9 * len(pair)), squeeze=False)
    for row, (r, (attn, mask)) in enumerate(zip(pair, mats)):
        for col in range(n_users):
            length = int(mask[col].sum())
            ax = axes[row, col]
            ax.imshow(attn[col, :, :length], aspect="auto", cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"{'without RR' if r['name'] == 'IHN only' else 'with RR'}: user {col + 1}", fontsize=8)
            ax.set_xlabel("history position", fontsize=7)
            ax.set_ylabel("interest", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle("Routing matrices A (interest x position), Amazon Video test users", fontsize=9)
    fig.tight_layout()
    fig.savefig(out.with_name(out.name + "_routing.png"), dpi=120)


if __name__ == "__main__":
    main()
