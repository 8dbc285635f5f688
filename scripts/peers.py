"""Peer baselines: `implicit` ALS and BPR on distrec's own splits, scored by distrec's own evaluation.

The library teams already use (https://github.com/benfred/implicit), side by side with distrec:
the same InteractionData (same loader, seed and validation split), the same exact full-ranking
metrics (`distrec.evaluate.evaluate`, one process) and the same protocol as distrec's trainer:
settings are searched on validation only (seeded Optuna TPE), then the best setting is refit on
train + valid and test is scored once, with train and valid items masked.

`implicit` and `optuna` are tools of this script, never dependencies of the package:

    .venv/bin/pip install implicit==0.7.3 optuna

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/peers.py --config configs/mrl4rec_phones.yaml --out docs/peers/phones.json
    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/peers.py --config configs/mrl4rec_ml100k.yaml --out docs/peers/ml100k.json
    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/peers.py --config configs/mrl4rec_video.yaml --out docs/peers/video.json
    ... --config configs/mrl4rec_phones.yaml data.train=/x/train.txt data.test=/x/test.txt   # any split distrec reads
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import implicit
import numpy as np
import optuna
import scipy
import scipy.sparse as sp
import torch
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.evaluation import ranking_metrics_at_k
from implicit.recommender_base import ModelFitError

from distrec import config
from distrec.data import load_dataset
from distrec.data.dataset import InteractionData
from distrec.evaluate import evaluate
from distrec.parallel import ONE_PROCESS

FACTORS = 64  # distrec's model.dim in every mrl4rec config
KS = (10, 20, 50)
SELECT = "recall@20"  # distrec's eval.select_metric
# world_size=1 makes every collective in distrec.parallel a no-op, so no process group is needed.


def suggest_als(trial: optuna.Trial) -> dict:
    return {
        "iterations": trial.suggest_int("iterations", 15, 50),
        "regularization": trial.suggest_float("regularization", 1e-3, 10.0, log=True),
        "alpha": trial.suggest_float("alpha", 0.1, 100.0, log=True),  # confidence = 1 + alpha on observed pairs
    }


def suggest_bpr(trial: optuna.Trial) -> dict:
    return {
        "iterations": trial.suggest_int("iterations", 50, 400, step=25),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.5, log=True),
        "regularization": trial.suggest_float("regularization", 1e-5, 0.1, log=True),
    }


PEERS = {"als": suggest_als, "bpr": suggest_bpr}


def make_model(peer: str, params: dict, seed: int):
    # implicit.cpu explicitly: implicit.als would pick the GPU model where CUDA is visible.
    cls = AlternatingLeastSquares if peer == "als" else BayesianPersonalizedRanking
    return cls(factors=FACTORS, num_threads=1, random_state=seed, **params)


def user_items(data: InteractionData, split: str = "train") -> sp.csr_matrix:
    """The binary user x item matrix of `split` (implicit >= 0.5 expects user x item in fit())."""
    users, items = data.pairs(split)
    ones = np.ones(len(users), dtype=np.float32)
    return sp.csr_matrix((ones, (users, items)), shape=(data.num_users, data.num_items))


def fit(peer: str, params: dict, seed: int, matrix: sp.csr_matrix):
    model = make_model(peer, params, seed)
    t0 = time.perf_counter()
    model.fit(matrix, show_progress=False)
    return model, time.perf_counter() - t0


def score(model, num_items: int, targets, exclude) -> dict[str, float]:
    """distrec's metrics on all factor columns (BPR: 64 + one item-bias column, users hold 1 there)."""
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    assert users.shape[1] == items.shape[1], (users.shape, items.shape)
    dim = users.shape[1]
    metrics = evaluate(
        encode=lambda rows: torch.as_tensor(users[rows]), items=lambda ids: torch.as_tensor(items)[ids],
        num_items=num_items, env=ONE_PROCESS, targets=targets, exclude=exclude, levels=(dim,), ks=KS,
    )
    return metrics[str(dim)]


def search(peer: str, data: InteractionData, n_trials: int, seed: int) -> tuple[optuna.Study, float]:
    """Seeded TPE over the peer's settings, fit on train and scored on valid (train masked)."""
    matrix = user_items(data)
    targets, exclude = data.csr("valid"), [data.csr("train")]

    def objective(trial: optuna.Trial) -> float:
        model, seconds = fit(peer, PEERS[peer](trial), seed, matrix)
        metrics = score(model, data.num_items, targets, exclude)
        trial.set_user_attr("valid", metrics)
        trial.set_user_attr("fit_seconds", seconds)
        print(f"  {peer} trial {trial.number:2d} {trial.params} valid {SELECT} {metrics[SELECT]:.4f} fit {seconds:.1f}s", flush=True)
        return metrics[SELECT]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    t0 = time.perf_counter()
    # A setting that diverges (BPR at a high learning rate: NaN factors) is a failed trial, not a crash.
    study.optimize(objective, n_trials=n_trials, catch=(ModelFitError,))
    return study, time.perf_counter() - t0


def refit_and_test(peer: str, params: dict, data: InteractionData, seed: int, check_implicit: bool) -> dict:
    """Fit on train + valid, score test once with train and valid masked (as distrec/workload.py)."""
    merged = data.merge_valid_into_train()
    matrix = user_items(merged)
    model, seconds = fit(peer, params, seed, matrix)
    result = {"test": score(model, data.num_items, data.csr("test"), [data.csr("train"), data.csr("valid")]),
              "fit_seconds": seconds}
    if check_implicit:
        # implicit's own ndcg@20 (it masks what the model was fit on, here train + valid) as a cross-check.
        implicit_metrics = ranking_metrics_at_k(model, matrix, user_items(data, "test"), K=20, show_progress=False)
        result["implicit_ndcg@20"] = float(implicit_metrics["ndcg"])
    return result


def run_peer(peer: str, data: InteractionData, n_trials: int, seed: int, check_implicit: bool) -> dict:
    study, search_seconds = search(peer, data, n_trials, seed)
    best = study.best_trial
    final = refit_and_test(peer, best.params, data, seed, check_implicit)
    return {
        "params": {"factors": FACTORS, **best.params},
        "valid": best.user_attrs["valid"],
        "best_trial_fit_seconds": best.user_attrs["fit_seconds"],  # on train only: the validation-side time to quality
        **final,
        "search_seconds": search_seconds,
        "trials": n_trials,
        "failed_trials": sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials),
        "trial_log": [{"params": t.params, SELECT: t.value, "fit_seconds": t.user_attrs.get("fit_seconds")} for t in study.trials],
    }


def markdown(name: str, results: dict) -> str:
    rows = [f"### {name}", "", "| peer | settings | val R@20 | val N@20 | test R@20 | test N@20 | refit s | search s (trials) |",
            "|---|---|---|---|---|---|---|---|"]
    for peer, r in results.items():
        settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        rows.append(f"| {peer} | {settings} | {r['valid']['recall@20']:.4f} | {r['valid']['ndcg@20']:.4f} | "
                    f"{r['test']['recall@20']:.4f} | {r['test']['ndcg@20']:.4f} | {r['fit_seconds']:.1f} | "
                    f"{r['search_seconds']:.0f} ({r['trials']}) |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", default=None, help="write the results as JSON here (docs/peers/<name>.json)")
    p.add_argument("--peers", nargs="+", choices=sorted(PEERS), default=["als", "bpr"])
    p.add_argument("--als-trials", type=int, default=30)
    p.add_argument("--bpr-trials", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seeds the TPE sampler and every model's initialisation")
    p.add_argument("--check-implicit", action="store_true", help="also report implicit's own test ndcg@20")
    p.add_argument("overrides", nargs="*", help="distrec config overrides, e.g. data.train=...")
    args = p.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine; implicit runs with num_threads=1 as well
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("implicit").setLevel(logging.ERROR)

    cfg = config.load(args.config, args.overrides)
    data = load_dataset(cfg.data, out_dir=None, drop_cold_test_users=cfg.data.cold_test_users == "drop")
    print(f"{args.config}: {data.num_users} users, {data.num_items} items, "
          f"{len(data.train_users)}/{len(data.valid_users)}/{len(data.test_users)} train/valid/test pairs", flush=True)
    trials = {"als": args.als_trials, "bpr": args.bpr_trials}
    results = {peer: run_peer(peer, data, trials[peer], args.seed, args.check_implicit) for peer in args.peers}

    name = Path(args.out).stem if args.out else Path(args.config).stem
    print(markdown(name, results))
    if args.out:
        record = {
            "command": shlex.join(["OPENBLAS_NUM_THREADS=1", ".venv/bin/python", *sys.argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"implicit": implicit.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
                         "optuna": optuna.__version__, "torch": torch.__version__},
            "machine": "2-core CPU (shared), 1 thread",
            "data": {"config": args.config, "overrides": args.overrides, "num_users": int(data.num_users),
                     "num_items": int(data.num_items), "pairs": {s: len(data.pairs(s)[0]) for s in ("train", "valid", "test")}},
            "protocol": f"seeded TPE (seed {args.seed}) on valid {SELECT} (train masked); best refit on train+valid; "
                        "test scored once (train+valid masked) by distrec.evaluate.evaluate",
            "peers": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
