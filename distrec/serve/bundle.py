"""The serving bundle: the one writer (and Parquet reader) of `<run_dir>/embeddings`.

Training (`Workload.write_bundle`), `distrec.export` and tests write bundles through `write`;
`distrec.serve.retrieve` reads them back. Every file goes to a temporary name and is renamed
(`atomic_write`), and manifest.json comes last, so a half-written bundle never reads as whole.
Imports: numpy, pyarrow, torch, distrec.serve.manifest; no training code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from distrec.serve import manifest


def atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename `tmp` to `path`: a reader sees the old file or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write(run_dir: Path, users, items, user_raw, item_raw, *, resolved: dict[str, Any],
                      interactions: dict[str, np.ndarray] | None = None, encoder: tuple[dict, dict] | None = None,
                      origin: dict | None = None, out_dir: Path | None = None) -> None:
    """The serving bundle in `run_dir/embeddings` (or `out_dir`): full-dimension tables (`users` may be None: no
    user table), their raw ids, the same as Parquet, the run's interactions, the router (multi-
    interest: (router_spec, state dict)) and `manifest.json`, written last (serve.manifest).
    The first d columns are the model at level d.

    Raw ids are int64, or unicode strings (saved as `<U..`, which np.load reads without pickle)."""
    out = Path(out_dir) if out_dir is not None else run_dir / "embeddings"
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # a bundle without its manifest reads as incomplete
    arrays = {"user_embeddings": users, "item_embeddings": items, "user_ids": user_raw, "item_ids": item_raw}
    for name, arr in list(arrays.items()):
        if arr is not None:
            arr = arr.detach().cpu().numpy() if hasattr(arr, "cpu") else np.asarray(arr)
            if arr.dtype == object:  # string ids: an object array would need allow_pickle to load
                arr = arr.astype(str)
            arrays[name] = arr
            atomic_write(out / f"{name}.npy", lambda p, a=arr: _save_npy(p, a))
    meta = {"format": manifest.FORMAT, "task": resolved["model"].get("task", "mrl4rec"),
            "dim": int(resolved["model"]["dim"]), "levels": [int(d) for d in resolved["model"]["levels"]],
            "config_hash": manifest.config_hash(resolved)}
    atomic_write(out / "items.parquet", lambda p: pq.write_table(
        embedding_table("item", arrays["item_ids"], arrays["item_embeddings"], meta), p))
    if users is not None:
        atomic_write(out / "users.parquet", lambda p: pq.write_table(
            embedding_table("user", arrays["user_ids"], arrays["user_embeddings"], meta), p))
    if interactions is not None:
        atomic_write(out / "interactions.parquet", lambda p: pq.write_table(pa.table(interactions), p))
    if encoder is not None:
        spec, state = encoder
        state = {k: v.detach().cpu() for k, v in state.items()}
        atomic_write(out / "router.pt", lambda p: torch.save(state, p))
    manifest.write(out, manifest.build(
        resolved, num_users=0 if user_raw is None else len(arrays["user_ids"]), num_items=arrays["item_embeddings"].shape[0], has_user_table=users is not None,
        has_user_ids=user_raw is not None, interactions="interactions.parquet" if interactions is not None else None,
        encoder=None if encoder is None else {"weights": "router.pt", "router": encoder[0]},
        origin=origin or {"written_by": "train"}), atomic_write)


def embedding_table(id_name: str, raw: np.ndarray, table: np.ndarray, meta: dict) -> pa.Table:
    """Columns `id_name` (raw id) and `embedding` (fixed-size list of float32), `meta` as JSON
    under the schema metadata key `distrec` (levels, dim, config hash)."""
    table = np.ascontiguousarray(table, dtype=np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(table.reshape(-1)), table.shape[1])
    out = pa.table({id_name: pa.array(raw), "embedding": vectors})
    return out.replace_schema_metadata({b"distrec": json.dumps(meta).encode()})


def read_embedding_table(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(raw ids, float32 [n, dim] table, metadata) of a Parquet file written by embedding_table."""
    table = pq.read_table(path)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy().reshape(-1, dim)
    meta = json.loads((table.schema.metadata or {}).get(b"distrec", b"{}"))
    return table.column(0).to_numpy(zero_copy_only=False), vectors, meta


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, array)
