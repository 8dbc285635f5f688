"""Compare the test metrics of two runs level by level; exit 1 when any differs by more than --tol.

    python scripts/compare_metrics.py RUN_A/metrics.json RUN_B/metrics.json --tol 0.02 [--names cpu gpu]

scripts/gpu_check.sh uses it for "the GPU trains the same model as the CPU".
"""

from __future__ import annotations

import argparse
import json
import sys


def largest_difference(a: dict, b: dict, metrics: tuple[str, ...]) -> float:
    """The largest |a - b| over every level of both runs' test metrics named in `metrics`."""
    if a.keys() != b.keys():
        raise ValueError(f"the runs have different levels: {sorted(a)} and {sorted(b)}")
    return max(abs(a[d][m] - b[d][m]) for d in a for m in metrics)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--tol", type=float, required=True)
    p.add_argument("--metrics", nargs="+", default=["recall@20", "ndcg@20"])
    p.add_argument("--names", nargs=2, default=["a", "b"])
    args = p.parse_args(argv)
    a, b = (json.load(open(path))["test"] for path in (args.a, args.b))
    print(f"test {' / '.join(args.metrics)} per level: {args.names[0]} | {args.names[1]} (tolerance {args.tol})")
    for d in sorted(a, key=int):
        print(d, *(" / ".join(f"{m[d][k]:.4f}" for k in args.metrics) for m in (a, b)), sep="  |  ")
    worst = largest_difference(a, b, tuple(args.metrics))
    agree = worst <= args.tol
    print(f"largest difference {worst:.4f}: {'they agree' if agree else 'they DISAGREE'}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
