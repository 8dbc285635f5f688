"""Exact full-ranking evaluation against the machine's own matrix-multiply speed, on a finished
run's embeddings (a trained model: how early targets drop out depends on how good it is).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_eval.py --run runs/books [--users 20000]
    .venv/bin/torchrun --nproc_per_node 2 scripts/bench_eval.py --run-dir runs/books --users 0   # every test user, 2 ranks

Evaluation runs as in training (`distrec.eval.evaluate.evaluate`, each rank holding one slice of
the items); `--users 0` scores every test user. Measures, one after the other:
- the best float32 `torch.mm` throughput over block shapes (users x items x 64), on rank 0 with
  every core of the machine while the other ranks wait;
- distrec's evaluation of `--users` test users (every level, the metrics included), counted as
  the FLOPs of one full-dimension product, 2 x users x items x 64, and its ratio to that best;
- the same users through a plain reference: one d = 64 product per block and a top-k pass
  per level (what evaluation did before rank counting).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distrec import distributed  # noqa: E402
from distrec.eval import evaluate  # noqa: E402
from distrec.data import read_cache  # noqa: E402

LEVELS = (4, 8, 16, 32, 64)


def best_mm(items: torch.Tensor, repeats: int = 3) -> dict:
    """Best GFLOP/s of `u @ items_block.T` over a few block shapes (the score matrix written)."""
    out = {}
    for users in (256, 1024, 4096):
        for block in (4096, 32768, items.shape[0]):
            u = torch.randn(users, items.shape[1])
            blk = items[:block].contiguous()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                torch.mm(u, blk.T)
                times.append(time.perf_counter() - t)
            out[f"{users}x{block}"] = 2 * users * block * items.shape[1] / min(times) / 1e9
    return out


def topk_reference(users_emb, items, rows, targets, exclude, ks) -> float:
    """Seconds for the old way: per block of users, one product per level and a top-k pass."""
    t = time.perf_counter()
    for chunk in np.array_split(rows, max(1, len(rows) // 256)):
        u = users_emb[chunk]
        for d in LEVELS:
            scores = u[:, :d] @ items[:, :d].T
            for csr in exclude:
                r, c = evaluate._pairs(csr, chunk)
                scores[torch.as_tensor(r), torch.as_tensor(c)] = -torch.inf
            scores.topk(max(ks), dim=1)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", "--run-dir", dest="run", required=True)
    p.add_argument("--users", type=int, default=20000, help="a seeded sample of test users; 0: every one")
    p.add_argument("--ks", type=int, nargs="+", default=[20, 50])
    p.add_argument("--reference-users", type=int, default=2048, help="users for the top-k reference (slow; 0: skip)")
    args = p.parse_args()
    run = Path(args.run)
    data = read_cache(run / "data")
    users_emb = torch.from_numpy(np.load(run / "embeddings" / "user_embeddings.npy")).float()
    items = torch.from_numpy(np.load(run / "embeddings" / "item_embeddings.npy")).float()
    targets, exclude = data.csr("test"), [data.csr("train"), data.csr("valid")]
    rows = evaluate.sample_rows(targets, args.users or None, seed=0)
    env = distributed.init("cpu")
    threads = torch.get_num_threads()
    mm = {}
    if env.is_main:
        torch.set_num_threads(os.cpu_count() or 1)
        mm = best_mm(items)
        torch.set_num_threads(threads)
    distributed.barrier(env)
    t = time.perf_counter()
    metrics = evaluate.evaluate(lambda r: users_emb[torch.as_tensor(r)], lambda ids: items[ids], items.shape[0], env,
                                evaluate.EvalSplit(targets, tuple(exclude)), evaluate.EvalSpec(levels=LEVELS, ks=tuple(args.ks)),
                                rows=rows)
    eval_s = time.perf_counter() - t
    if not env.is_main:
        distributed.shutdown()
        return
    best = max(mm.values())
    flops = 2 * len(rows) * items.shape[0] * items.shape[1]
    ref_rows = rows[: args.reference_users]
    torch.set_num_threads(os.cpu_count() or 1)
    ref_s = topk_reference(users_emb, items, ref_rows, targets, exclude, args.ks) if len(ref_rows) else float("nan")
    print(json.dumps({
        "run": str(run), "users": int(len(rows)), "items": int(items.shape[0]), "ranks": env.world_size, "threads_per_rank": threads,
        "mm_gflops": {k: round(v, 1) for k, v in mm.items()}, "mm_best_gflops": round(best, 1),
        "eval_seconds": round(eval_s, 2), "eval_users_per_s": round(len(rows) / eval_s, 1),
        "eval_effective_gflops": round(flops / eval_s / 1e9, 1), "eval_gemm_ratio": round(flops / eval_s / 1e9 / best, 3),
        "topk_reference_users_per_s": round(len(ref_rows) / ref_s, 1),
        "speedup_vs_topk": round((len(rows) / eval_s) / (len(ref_rows) / ref_s), 2),
        "recall@20_d64": round(metrics["64"]["recall@20"], 4),
    }))
    distributed.shutdown()


if __name__ == "__main__":
    main()
