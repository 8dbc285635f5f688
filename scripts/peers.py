"""Peer baselines: `implicit` ALS and BPR, and EASE, on distrec's own splits, scored by distrec's own evaluation.

The library teams already use (https://github.com/benfred/implicit), side by side with distrec:
the same InteractionData (same loader, seed and validation split), the same exact full-ranking
metrics (`distrec.eval.evaluate.evaluate`, one process) and the same protocol as distrec's trainer:
settings are searched on validation only (seeded Optuna TPE), then the best setting is refit on
train + valid and test is scored once, with train and valid items masked.

EASE (Steck 2019, "Embarrassingly Shallow Autoencoders") is the closed-form item x item
model B = I - P / diag(P), P = (X^T X + lam I)^-1: one matrix inversion per lam, so lam is
searched on a deterministic log grid instead of TPE (`search_ease`). It needs neither
`implicit` nor `optuna` (both are imported only by the functions that use them), and
`--peers ease --out X.json` merges into an existing X.json, keeping its other peers' entries.

`implicit` and `optuna` are tools of this script, never dependencies of the package:

    .venv/bin/pip install implicit==0.7.3 optuna

    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/peers.py --config configs/mrl4rec_phones.yaml --out docs/peers/phones.json
    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/peers.py --config configs/mrl4rec_ml100k.yaml --out docs/peers/ml100k.json
    OPENBLAS_NUM_THREADS=1 .venv/bin/python scripts/peers.py --config configs/mrl4rec_video.yaml --out docs/peers/video.json
    ... --config configs/mrl4rec_phones.yaml --peers ease --out docs/peers/phones.json   # EASE only, merged into the file
    ... --config configs/mrl4rec_phones.yaml --peers als --factors 16 --out docs/peers/factors/phones_als16.json   # ALS at another size
    ... --config configs/mrl4rec_phones.yaml data.train=/x/train.txt data.test=/x/test.txt   # any split distrec reads
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from distrec import config
from distrec.data import load_dataset
from distrec.data.dataset import InteractionData
from distrec.data.csr import ranges
from distrec.distributed import ONE_PROCESS
from distrec.eval.evaluate import EvalSpec, EvalSplit, evaluate

FACTORS = 64  # distrec's model.dim in every mrl4rec config
KS = (10, 20, 50)
SELECT = "recall@20"  # distrec's eval.select_metric
# world_size=1 makes every collective in distrec.distributed a no-op, so no process group is needed.


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


PEERS = {"als": suggest_als, "bpr": suggest_bpr}  # the TPE-searched `implicit` peers
ALL_PEERS = (*PEERS, "ease")

# EASE's lam grid: decades, then one more decade past an edge that wins, then steps of 10^0.5
# and 10^0.25 on each side of the best so far: at most 5 + 1 + 4 = 10 fits.
EASE_GRID = (1.0, 10.0, 100.0, 1000.0, 10000.0)
EASE_REFINE = (10**0.5, 10**0.25)
# Precision of EASE's inversion: float64 while the dense matrix is small (Phones, 10.4k items:
# 0.87 GB a copy, 19 s a fit on one thread), float32 above (Video, 23.7k items: 2.25 GB a copy
# instead of 4.5 GB, two copies at the peak, and ~0.57x the time). Checked on Phones: at lam
# 10, 178 and 1000 (valid) and 178 (test refit), float32 and float64 B differ by <= 2.4e-7
# (|B| <= 0.39) and every R@K / N@K agrees to 7e-8 (float32 fit 10.7 s vs 18.8 s).
EASE_FLOAT64_MAX_ITEMS = 12_000
EASE_CHUNK_MB = 16.0  # each evaluation chunk's queries are dense rows of X (num_items wide)


def make_model(peer: str, params: dict, seed: int):
    # implicit.cpu explicitly: implicit.als would pick the GPU model where CUDA is visible.
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    cls = AlternatingLeastSquares if peer == "als" else BayesianPersonalizedRanking
    return cls(num_threads=1, random_state=seed, **{"factors": FACTORS, **params})


def user_items(data: InteractionData, split: str = "train") -> "scipy.sparse.csr_matrix":
    """The binary user x item matrix of `split` (implicit >= 0.5 expects user x item in fit())."""
    import scipy.sparse as sp  # installed with implicit; EASE does without it

    users, items = data.pairs(split)
    ones = np.ones(len(users), dtype=np.float32)
    return sp.csr_matrix((ones, (users, items)), shape=(data.num_users, data.num_items))


def fit(peer: str, params: dict, seed: int, matrix: "scipy.sparse.csr_matrix"):
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
        num_items=num_items, env=ONE_PROCESS, split=EvalSplit(targets, tuple(exclude)), spec=EvalSpec(levels=(dim,), ks=KS),
    )
    return metrics[str(dim)]


class Rows:
    """A sparse user x item matrix by rows (EASE's X), in numpy and torch only: scipy comes
    with `implicit`, which EASE does not need. Entries sorted by (row, column), no duplicates.
    (A plain class, not a dataclass: this file is also loaded by path, outside sys.modules.)"""

    def __init__(self, indptr: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]) -> None:
        self.indptr = indptr  # [num_rows + 1] int64
        self.cols = cols  # [nnz] int64
        self.values = values  # [nnz] float64
        self.shape = shape

    @classmethod
    def of(cls, X) -> "Rows":
        """From a scipy sparse matrix (duck-typed: `.tocoo()`), a torch tensor (sparse or dense) or a dense array."""
        if isinstance(X, Rows):
            return X
        if hasattr(X, "tocoo"):
            coo = X.tocoo()
            rows, cols, values, shape = coo.row, coo.col, coo.data, coo.shape
        else:
            t = X if isinstance(X, torch.Tensor) else torch.as_tensor(np.asarray(X))
            t = (t if t.is_sparse else t.to_sparse()).coalesce()
            (rows, cols), values, shape = t.indices().numpy(), t.values().numpy(), tuple(t.shape)
        rows, cols, values = (np.asarray(a) for a in (rows, cols, values))
        keys, inverse = np.unique(rows.astype(np.int64) * int(shape[1]) + cols, return_inverse=True)  # sorted, duplicates summed
        summed = np.bincount(inverse.reshape(-1), weights=values.astype(np.float64), minlength=len(keys))
        keep = summed != 0
        keys, summed = keys[keep], summed[keep]
        indptr = np.zeros(int(shape[0]) + 1, np.int64)
        np.cumsum(np.bincount(keys // int(shape[1]), minlength=int(shape[0])), out=indptr[1:])
        return cls(indptr, keys % int(shape[1]), summed, (int(shape[0]), int(shape[1])))

    @classmethod
    def binary(cls, data: InteractionData, split: str = "train") -> "Rows":
        indptr, items = data.csr(split)  # sorted by (user, item), duplicate free
        return cls(indptr, items, np.ones(len(items)), (data.num_users, data.num_items))

    def dense(self, rows: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows `rows` as a dense `[len(rows), num_items]` tensor."""
        rows = np.asarray(rows, np.int64)
        starts, counts = self.indptr[rows], np.diff(self.indptr)[rows]
        at = np.repeat(starts, counts) + ranges(counts)
        out = torch.zeros((len(rows), self.shape[1]), dtype=dtype)
        out[torch.as_tensor(np.repeat(np.arange(len(rows)), counts)), torch.as_tensor(self.cols[at])] = \
            torch.as_tensor(self.values[at]).to(dtype)
        return out

    def gram(self) -> torch.Tensor:
        """X^T X as a sparse (COO) `[num_items, num_items]` float64 tensor."""
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        with warnings.catch_warnings():  # torch's notes that sparse support is in beta
            warnings.simplefilter("ignore", UserWarning)
            x = torch.sparse_coo_tensor(torch.as_tensor(np.stack([rows, self.cols])), torch.as_tensor(self.values), self.shape)
            return torch.sparse.mm(x.t().coalesce(), x.coalesce()).coalesce()


def ease_dtype(num_items: int, choice: str = "auto") -> torch.dtype:
    if choice == "auto":
        return torch.float64 if num_items <= EASE_FLOAT64_MAX_ITEMS else torch.float32
    return {"float32": torch.float32, "float64": torch.float64}[choice]


def ease_from_gram(G: torch.Tensor, lam: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """EASE's B = I - P / diag(P), P = (G + lam I)^-1, as a dense `[n, n]` tensor of `dtype`;
    G = X^T X, sparse (kept between values of lam: only the diagonal changes) or dense.

    Two n x n buffers at the peak: the Cholesky factor overwrites G + lam I in place, and the
    inverse is turned into B in place (B_ij = -P_ij / P_jj, B_jj = 0)."""
    a = G.to(dtype).to_dense() if G.is_sparse else G.to(dtype, copy=True)
    a.diagonal().add_(float(lam))
    torch.linalg.cholesky(a, out=a)
    p = torch.cholesky_inverse(a)
    del a
    p.div_(p.diagonal().neg())  # column j divided by -P_jj (the divisor is a copy of the diagonal)
    p.fill_diagonal_(0.0)
    return p


def ease_weights(X, lam: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """EASE (Steck 2019) on the binary user x item matrix X (scipy sparse, torch, dense array or
    `Rows`): the item x item B minimising ||X - X B||^2 + lam ||B||^2 subject to diag(B) = 0,
    i.e. B = I - P / diag(P) with P = (X^T X + lam I)^-1. A user's scores are their row of X times B."""
    return ease_from_gram(Rows.of(X).gram(), lam, dtype)


def score_ease(B: torch.Tensor, X, targets, exclude, chunk_mb: float = EASE_CHUNK_MB) -> dict[str, float]:
    """distrec's metrics for EASE: user u's vector is row u of X (the matrix B was fit on), item
    i's is column i of B, so the score is X_u B_:,i; one level, the full width num_items."""
    n = B.shape[0]
    X = Rows.of(X)
    assert X.shape[1] == n, (X.shape, B.shape)
    table = B.T.to(torch.float32)  # a view when B is float32: evaluate's sorted copy is then the only one
    every = torch.arange(n)

    def items(ids: torch.Tensor) -> torch.Tensor:
        return table if ids.numel() == n and torch.equal(ids, every) else table[ids]

    metrics = evaluate(
        encode=X.dense, items=items, num_items=n, env=ONE_PROCESS,
        split=EvalSplit(targets, tuple(exclude)), spec=EvalSpec(levels=(n,), ks=KS, chunk_mb=chunk_mb),
    )
    return metrics[str(n)]


def search_ease(data: InteractionData, dtype: torch.dtype, grid=EASE_GRID, refine=EASE_REFINE) -> tuple[list[dict], float]:
    """lam on a deterministic log grid, fit on train and scored on valid (train masked): the
    grid, one more step past an edge that wins, then each refinement step on both sides of the
    best so far. Only train and valid are read. Returns (trial log in order of fitting, seconds)."""
    X = Rows.binary(data, "train")
    G = X.gram()
    targets, exclude = data.csr("valid"), [data.csr("train")]
    log: list[dict] = []

    def trial(lam: float) -> None:
        if any(np.isclose(t["params"]["lam"], lam, rtol=1e-9) for t in log):
            return
        t0 = time.perf_counter()
        try:
            B = ease_from_gram(G, lam, dtype)
        except torch.linalg.LinAlgError:  # not positive definite in this precision: a failed trial
            log.append({"params": {"lam": lam}, SELECT: None, "fit_seconds": time.perf_counter() - t0, "failed": True})
            print(f"  ease trial {len(log) - 1:2d} lam {lam:.4g} failed (Cholesky)", flush=True)
            return
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        metrics = score_ease(B, X, targets, exclude)
        del B
        log.append({"params": {"lam": lam}, SELECT: metrics[SELECT], "fit_seconds": seconds,
                    "eval_seconds": time.perf_counter() - t1, "valid": metrics})
        print(f"  ease trial {len(log) - 1:2d} lam {lam:.4g} valid {SELECT} {metrics[SELECT]:.4f} "
              f"ndcg@20 {metrics['ndcg@20']:.4f} fit {seconds:.1f}s eval {log[-1]['eval_seconds']:.1f}s", flush=True)

    def best() -> float:
        done = [t for t in log if t[SELECT] is not None]
        return max(done, key=lambda t: t[SELECT])["params"]["lam"]  # the first fitted wins a tie

    t0 = time.perf_counter()
    grid = sorted(float(g) for g in grid)
    for lam in grid:
        trial(lam)
    if len(grid) > 1:
        if best() == grid[0]:
            trial(grid[0] * grid[0] / grid[1])
        elif best() == grid[-1]:
            trial(grid[-1] * grid[-1] / grid[-2])
    for step in refine:
        lam = best()
        trial(lam / step)
        trial(lam * step)
    return log, time.perf_counter() - t0


def run_ease(data: InteractionData, dtype: torch.dtype, grid=EASE_GRID) -> dict:
    log, search_seconds = search_ease(data, dtype, grid)
    best = max((t for t in log if t[SELECT] is not None), key=lambda t: t[SELECT])
    lam = best["params"]["lam"]
    # Refit on train + valid; the user vectors are rows of that matrix; train and valid masked.
    X = Rows.binary(data.merge_valid_into_train(), "train")
    t0 = time.perf_counter()
    B = ease_weights(X, lam, dtype)
    fit_seconds = time.perf_counter() - t0
    test = score_ease(B, X, data.csr("test"), [data.csr("train"), data.csr("valid")])
    del B
    return {
        "params": {"lam": lam},
        "valid": best["valid"],
        "best_trial_fit_seconds": best["fit_seconds"],  # on train only
        "test": test,
        "fit_seconds": fit_seconds,
        "search_seconds": search_seconds,
        "trials": len(log),
        "failed_trials": sum(bool(t.get("failed")) for t in log),
        "trial_log": [{k: v for k, v in t.items() if k != "valid"} for t in log],
        "precision": str(dtype).removeprefix("torch."),
        "protocol": f"lam on a log grid {list(grid)} (one more decade past a winning edge, then steps of "
                    f"{', '.join(f'{s:.4g}' for s in EASE_REFINE)} around the best) on valid {SELECT} "
                    "(fit on train, train masked); best refit on train+valid; test scored once (train+valid masked) "
                    "by distrec.eval.evaluate.evaluate with user vector = row of the fitted-on X, item vector = column of B",
    }


def search(peer: str, data: InteractionData, n_trials: int, seed: int, factors: int = FACTORS) -> tuple["optuna.Study", float]:
    """Seeded TPE over the peer's settings, fit on train and scored on valid (train masked)."""
    import optuna
    from implicit.recommender_base import ModelFitError

    matrix = user_items(data)
    targets, exclude = data.csr("valid"), [data.csr("train")]

    def objective(trial: optuna.Trial) -> float:
        model, seconds = fit(peer, {**PEERS[peer](trial), "factors": factors}, seed, matrix)
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
    from implicit.evaluation import ranking_metrics_at_k

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


def run_peer(peer: str, data: InteractionData, n_trials: int, seed: int, check_implicit: bool,
             factors: int = FACTORS) -> dict:
    import optuna

    study, search_seconds = search(peer, data, n_trials, seed, factors)
    best = study.best_trial
    final = refit_and_test(peer, {**best.params, "factors": factors}, data, seed, check_implicit)
    return {
        "params": {"factors": factors, **best.params},
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
    p.add_argument("--peers", nargs="+", choices=sorted(ALL_PEERS), default=["als", "bpr"])
    p.add_argument("--als-trials", type=int, default=30)
    p.add_argument("--bpr-trials", type=int, default=20)
    p.add_argument("--factors", type=int, default=FACTORS,
                   help="ALS / BPR factors (64 = distrec's d; 16 / 32: what a dedicated small model reaches)")
    p.add_argument("--seed", type=int, default=0, help="seeds the TPE sampler and every model's initialisation")
    p.add_argument("--check-implicit", action="store_true", help="also report implicit's own test ndcg@20")
    p.add_argument("--ease-dtype", choices=("auto", "float32", "float64"), default="auto",
                   help=f"EASE's inversion precision (auto: float64 up to {EASE_FLOAT64_MAX_ITEMS} items, else float32)")
    p.add_argument("--ease-grid", type=float, nargs="+", default=list(EASE_GRID), help="EASE's coarse lam grid")
    p.add_argument("overrides", nargs="*", help="distrec config overrides, e.g. data.train=...")
    args = p.parse_args()
    torch.set_num_threads(1)  # a shared 2-core machine; implicit runs with num_threads=1 as well
    if any(peer in PEERS for peer in args.peers):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("implicit").setLevel(logging.ERROR)

    cfg = config.load(args.config, args.overrides)
    data = load_dataset(cfg.data, out_dir=None, drop_cold_test_users=cfg.data.cold_test_users == "drop")
    print(f"{args.config}: {data.num_users} users, {data.num_items} items, "
          f"{len(data.train_users)}/{len(data.valid_users)}/{len(data.test_users)} train/valid/test pairs", flush=True)
    trials = {"als": args.als_trials, "bpr": args.bpr_trials}
    results = {}
    for peer in args.peers:
        if peer == "ease":
            results[peer] = run_ease(data, ease_dtype(data.num_items, args.ease_dtype), args.ease_grid)
        else:
            results[peer] = run_peer(peer, data, trials[peer], args.seed, args.check_implicit, args.factors)

    name = Path(args.out).stem if args.out else Path(args.config).stem
    print(markdown(name, results))
    if args.out:
        write_record(Path(args.out), args, data, results)


def write_record(out: Path, args: argparse.Namespace, data: InteractionData, results: dict) -> None:
    """Write the results to `out`, or merge them into it: an existing file keeps its top-level
    record and its other peers' entries; the peers run now are added or replaced, each with
    the command and date of this run."""
    command = shlex.join(["OPENBLAS_NUM_THREADS=1", ".venv/bin/python", *sys.argv])
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    versions = {"numpy": np.__version__, "torch": torch.__version__}
    for module in ("implicit", "scipy", "optuna"):  # only where this run imported them
        if module in sys.modules:
            versions[module] = sys.modules[module].__version__
    described = {"config": args.config, "overrides": args.overrides, "num_users": int(data.num_users),
                 "num_items": int(data.num_items), "pairs": {s: len(data.pairs(s)[0]) for s in ("train", "valid", "test")}}
    if out.exists():
        record = json.loads(out.read_text())
        old = record.get("data", {})
        same = all(old.get(key) == described[key] for key in ("num_users", "num_items", "pairs"))
        if not same:
            raise SystemExit(f"{out} holds results on other data ({old}); not merging results on {described}")
        record["versions"] = {**record.get("versions", {}), **versions}
    else:
        record = {
            "command": command, "date": date, "versions": versions, "machine": "2-core CPU (shared), 1 thread",
            "data": described,
            "protocol": f"seeded TPE (seed {args.seed}) on valid {SELECT} (train masked); best refit on train+valid; "
                        "test scored once (train+valid masked) by distrec.eval.evaluate.evaluate (EASE: its own protocol)",
            "peers": {},
        }
    for peer, result in results.items():
        record["peers"][peer] = {**result, "command": command, "date": date}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
