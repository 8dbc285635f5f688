"""What a run leaves in its run directory: resolved config, metrics, exported embeddings.

Every file is written to a temporary name and renamed, so an interrupted or failed run never
leaves a half-written metrics.json or embedding file. Only rank 0 writes. Imports: stdlib,
numpy, yaml.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, obj: dict[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def export_embeddings(run_dir: Path, users: np.ndarray, items: np.ndarray, user_raw: np.ndarray, item_raw: np.ndarray) -> None:
    """Full-dimension tables; the first d columns are the model at level d (truncate to deploy)."""
    out = run_dir / "embeddings"
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in (("user_embeddings", users), ("item_embeddings", items), ("user_ids", user_raw), ("item_ids", item_raw)):
        _atomic_write(out / f"{name}.npy", lambda p, a=arr: _save_npy(p, a))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, array)
