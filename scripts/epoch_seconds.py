"""Seconds per training epoch of a config, split into batch building, forward and backward, in
one process (no evaluation, no outputs): what a setting costs per epoch, compared in one run.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/epoch_seconds.py --config configs/mrl4rec.yaml --epochs 3 train.gramian_every=8

Prints one line per epoch and a JSON line with the medians.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distrec import config, distributed  # noqa: E402
from distrec.data import load_dataset  # noqa: E402
from distrec.tasks import mrl4rec  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=None)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = config.load(args.config, args.overrides)
    env = distributed.init(cfg.device)
    data = load_dataset(cfg.data, drop_cold_test_users=cfg.data.cold_test_users == "drop")
    work = mrl4rec.from_data(cfg, env, data)
    model, dense = work.build()
    model.train()
    rows = []
    for epoch in range(1, args.epochs + 1):
        parts = {"batches": 0.0, "forward": 0.0, "backward": 0.0}
        start, steps = time.perf_counter(), 0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt  # pages the kernel had to map and zero
        batches = work.batches(epoch)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            parts["batches"] += t1 - t0
            if batch is None:
                break
            loss, _ = model(batch)
            t2 = time.perf_counter()
            loss.backward()  # the fused tables step inside the backward
            for opt in dense:
                opt.step()
                opt.zero_grad()
            parts["forward"] += t2 - t1
            parts["backward"] += time.perf_counter() - t2
            steps += 1
        rows.append({"epoch": epoch, "seconds": time.perf_counter() - start, "steps": steps, **parts,
                     "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})
        if env.is_main:
            print(" ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    if env.is_main:
        medians = {k: float(np.median([r[k] for r in rows])) for k in ("seconds", "batches", "forward", "backward", "page_faults")}
        print(json.dumps({"threads": torch.get_num_threads(), "overrides": args.overrides, **medians}))
    distributed.shutdown()


if __name__ == "__main__":
    main()
