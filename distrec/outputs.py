"""What a run leaves in its run directory: resolved config, metrics, exported embeddings.

Every file is written to a temporary name and renamed, so an interrupted or failed run never
leaves a half-written metrics.json or embedding file. Only rank 0 writes. Imports: stdlib,
numpy, torch, yaml.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    append_record(run_dir / "metrics.jsonl", record)


def append_record(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, after_epoch: int) -> None:
    """Drop the metrics.jsonl records of epochs after `after_epoch`: a resumed run redoes them
    (they were written after its checkpoint), and must not log them twice."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("epoch", 0) <= after_epoch]
    _atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in keep)))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def export_embeddings(run_dir: Path, users, items, user_raw, item_raw, model=None) -> None:
    """Full-dimension tables (`users` may be None: no user table), their raw ids, and any dense
    tower (the router) as a torch state dict. The first d columns are the model at level d.

    Raw ids are int64, or unicode strings (saved as `<U..`, which np.load reads without pickle)."""
    out = run_dir / "embeddings"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"user_embeddings": users, "item_embeddings": items, "user_ids": user_raw, "item_ids": item_raw}
    for name, arr in arrays.items():
        if arr is not None:
            arr = arr.cpu().numpy() if hasattr(arr, "cpu") else arr
            if arr.dtype == object:  # string ids: an object array would need allow_pickle to load
                arr = arr.astype(str)
            _atomic_write(out / f"{name}.npy", lambda p, a=arr: _save_npy(p, a))
    router = getattr(model, "router", None)
    if router is not None:
        state = {k: v.detach().cpu() for k, v in router.state_dict().items()}
        _atomic_write(out / "router.pt", lambda p: torch.save(state, p))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, array)
