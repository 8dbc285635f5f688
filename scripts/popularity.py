"""Popularity ranking, the floor every recommender must clear, scored by distrec's own exact
evaluation on a finished run's data: every user gets the items ranked by their number of
training interactions (train + validation for test, both masked), ties broken by item id.

    .venv/bin/python scripts/popularity.py --run runs/books [--split test] [--ks 20 50]

Prints one JSON line: recall / NDCG at each K over every user with a target.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distrec.eval import evaluate  # noqa: E402
from distrec.data import read_cache  # noqa: E402
from distrec.distributed import ONE_PROCESS  # noqa: E402


def popularity_scores(counts: np.ndarray) -> torch.Tensor:
    """Counts made a strict order: among equal counts the lower id ranks first (float32 keeps
    the half-step exact for counts below 2**22)."""
    order = np.arange(len(counts), dtype=np.float64) / max(len(counts), 1)
    return torch.as_tensor(counts + 0.5 * (1.0 - order), dtype=torch.float32)[:, None]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished run directory (its data/ is read)")
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--ks", type=int, nargs="+", default=[20, 50])
    args = p.parse_args()
    start = time.perf_counter()
    data = read_cache(Path(args.run) / "data")
    seen = ["train"] if args.split == "valid" else ["train", "valid"]
    counts = sum(np.bincount(data.csr(s)[1], minlength=data.num_items) for s in seen).astype(np.float64)
    items = popularity_scores(counts)
    targets, exclude = data.csr(args.split), [data.csr(s) for s in seen]
    # Every user's query is the 1-d vector 1, so an item's score is its popularity.
    metrics = evaluate.evaluate(lambda rows: torch.ones(len(rows), 1), lambda ids: items[ids], data.num_items, ONE_PROCESS,
                                evaluate.EvalSplit(targets, tuple(exclude)), evaluate.EvalSpec(levels=(1,), ks=tuple(args.ks)))["1"]
    users = len(evaluate.rows_with_targets(targets))
    print(json.dumps({"model": "popularity", "run": args.run, "split": args.split, "users": users,
                      "seconds": round(time.perf_counter() - start, 1), **metrics}))


if __name__ == "__main__":
    main()
