"""The TorchRec sharding plan for tables of any size, computed on the meta device: nothing is
allocated, so a plan for 1e9 users x 1e8 items on 256 GPUs takes seconds on a laptop.

    .venv/bin/python scripts/plan.py --users 1e9 --items 1e8 --world-size 256 --hbm-gb 80
    .venv/bin/python scripts/plan.py --users 603668 --items 367982 --world-size 8 --hbm-gb 80   # Books on 8 GPUs
    .venv/bin/python scripts/plan.py ... --sharding row_wise        # impose one sharding type on both tables

Prints the plan (sharding type, kernel, ranks per table), the bytes each rank holds (table
rows plus the fused optimizer's state, as the planner reserves them) and the planner's own
cost estimate per rank; `--json` prints the same as one JSON line. The planner sees the tables
exactly as `distrec.train` builds them (same collections, same fused optimizer).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology  # noqa: E402
from torchrec.distributed.sharding_plan import get_default_sharders  # noqa: E402
from torchrec.distributed.types import ShardingType  # noqa: E402

from distrec import config  # noqa: E402
from distrec.nn.embeddings import TABLE_SHARDING_FIELDS, Tables, attach_fused_optimizer  # noqa: E402

AUTO = ("table_wise", "row_wise", "column_wise", "table_row_wise")


def plan(users: int, items: int, dim: int, world_size: int, local_world_size: int, device: str,
         hbm_gb: float | None, ddr_gb: float | None, sharding: str, optimizer: str, batch_size: int) -> dict:
    levels = [d for d in (4, 8, 16, 32) if d < dim] + [dim]
    cfg = config.load(None, [f"model.dim={dim}", f"model.levels={levels}", f"train.optimizer={optimizer}"])
    tables = Tables(users, items, cfg.model)  # meta device: shapes only
    attach_fused_optimizer(tables, cfg.train, cfg.model)
    kinds = AUTO if sharding == "auto" else (sharding,)
    if world_size // max(local_world_size, 1) < 2:  # table-row-wise needs several hosts
        kinds = tuple(k for k in kinds if k != "table_row_wise") or kinds
    constraints = {name: ParameterConstraints(sharding_types=[ShardingType[k.upper()].value for k in kinds],
                                              compute_kernels=["fused"]) for name in TABLE_SHARDING_FIELDS}
    logging.getLogger("torchrec.distributed.planner").setLevel(logging.ERROR)  # estimates' chatter, not errors
    gb = 1 << 30
    topology = Topology(world_size=world_size, compute_device=device, local_world_size=local_world_size,
                        hbm_cap=None if hbm_gb is None else int(hbm_gb * gb), ddr_cap=None if ddr_gb is None else int(ddr_gb * gb))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints, batch_size=batch_size)
        sharding_plan = planner.plan(tables, get_default_sharders())
    per_rank = defaultdict(lambda: {"hbm_bytes": 0, "ddr_bytes": 0, "cost": 0.0, "shards": 0})
    tables_out = []
    for option in planner._best_plan:  # the chosen ShardingOption of each table
        ranks = sorted({s.rank for s in option.shards})
        tables_out.append({"table": option.name, "rows": option.tensor.shape[0], "dim": option.tensor.shape[1],
                           "sharding": option.sharding_type, "kernel": option.compute_kernel,
                           "shards": len(option.shards), "ranks": f"{ranks[0]}..{ranks[-1]}" if len(ranks) > 2 else ranks})
        for s in option.shards:
            r = per_rank[s.rank]
            r["hbm_bytes"] += s.storage.hbm
            r["ddr_bytes"] += s.storage.ddr
            r["cost"] += s.perf.total
            r["shards"] += 1
    ranks = [per_rank[r] for r in range(world_size)]
    memory = "hbm_bytes" if device == "cuda" else "ddr_bytes"
    return {
        "users": users, "items": items, "dim": dim, "world_size": world_size, "device": device, "optimizer": optimizer,
        "tables": tables_out,
        "bytes_per_rank": {"min": min(r[memory] for r in ranks), "max": max(r[memory] for r in ranks)},
        "cost_per_rank": {"min": min(r["cost"] for r in ranks), "max": max(r["cost"] for r in ranks)},
        "table_bytes_total": sum(r[memory] for r in ranks),
        "planner_proposals": planner._num_proposals,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "plan": str(sharding_plan),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=float, required=True)
    p.add_argument("--items", type=float, required=True)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--local-world-size", type=int, default=8, help="ranks per host")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--hbm-gb", type=float, default=None, help="GPU memory per rank (default: the planner's)")
    p.add_argument("--ddr-gb", type=float, default=None, help="host memory per rank (default: the planner's)")
    p.add_argument("--sharding", default="auto", choices=("auto", *AUTO))
    p.add_argument("--optimizer", default="row_wise_adagrad")
    p.add_argument("--batch-size", type=int, default=2048, help="per rank")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    out = plan(int(a.users), int(a.items), a.dim, a.world_size, min(a.local_world_size, a.world_size), a.device,
               a.hbm_gb, a.ddr_gb, a.sharding, a.optimizer, a.batch_size)
    if a.json:
        print(json.dumps(out))
        return
    gib = 1 << 30
    print(f"{out['users']:,} users x {out['items']:,} items x {out['dim']} on {out['world_size']} {out['device']} ranks "
          f"({out['optimizer']}; {out['planner_proposals']} proposals)")
    for t in out["tables"]:
        print(f"  {t['table']:5} {t['rows']:>14,} rows: {t['sharding']}, {t['kernel']}, {t['shards']} shards on ranks {t['ranks']}")
    b, c = out["bytes_per_rank"], out["cost_per_rank"]
    print(f"  memory per rank (tables + optimizer state): {b['min'] / gib:.2f} .. {b['max'] / gib:.2f} GiB; "
          f"all ranks {out['table_bytes_total'] / gib:.1f} GiB")
    print(f"  planner cost estimate per rank: {c['min']:.3g} .. {c['max']:.3g} (its units: ms per step)")
    print(f"  this process: peak RSS {out['peak_rss_mb']:.0f} MB (nothing was allocated for the tables)")


if __name__ == "__main__":
    main()
