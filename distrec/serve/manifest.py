"""The manifest of a run's exported embeddings: what serving needs to use them without the trainer.

`embeddings/manifest.json` names the task, the full dimension and the matryoshka levels, the
files holding the tables and their raw ids, the run's interactions (for `--exclude-seen` and
multi-interest histories), and for multi-interest runs the router's kind and settings, so that
`towers.build_router` rebuilds it from `router.pt` alone. `distrec.retrieve` and
`distrec.export` read it; exports written before manifests existed are read from the run's
`config.yaml` instead (`read`). Imports: stdlib, numpy, yaml, distrec.config.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from distrec.config import ModelConfig, SequenceConfig

FORMAT = "distrec-embeddings/1"
# Settings that do not change what a run learns: left out of the config hash.
UNHASHED = ("run_dir", "progress", "device")
# The model keys that build a router (and those its checks need: levels end at dim).
ROUTER_KEYS = ("router", "dim", "levels", "num_interests", "hidden_factor", "positional", "num_blocks", "num_heads", "dropout")


class ManifestError(ValueError):
    """An embeddings directory that cannot be served: missing or inconsistent files."""


def config_hash(resolved: dict[str, Any]) -> str:
    """A short hash of the resolved config, less the settings in UNHASHED: two exports with the
    same hash were trained with the same settings."""
    kept = {k: v for k, v in resolved.items() if k not in UNHASHED}
    return hashlib.blake2b(json.dumps(kept, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def build(resolved: dict[str, Any], *, num_users: int, num_items: int, has_user_table: bool, has_user_ids: bool,
          interactions: str | None, encoder: dict | None, origin: dict) -> dict[str, Any]:
    """The manifest of an export of a run with resolved config `resolved`."""
    model = resolved["model"]
    return {
        "format": FORMAT,
        "task": model.get("task", "mrl4rec"),
        "dim": int(model["dim"]),
        "levels": [int(d) for d in model["levels"]],
        "config_hash": config_hash(resolved),
        "num_users": int(num_users),
        "num_items": int(num_items),
        "tables": {"items": "item_embeddings.npy", "users": "user_embeddings.npy" if has_user_table else None},
        "ids": {"items": "item_ids.npy", "users": "user_ids.npy" if has_user_ids else None},
        "parquet": {"items": "items.parquet", "users": "users.parquet" if has_user_table else None},
        # Columns user and item are table rows (row i is ids.users[i] / ids.items[i]); mrl4rec adds
        # split (0 train, 1 validation, 2 test), multi_interest adds position (time order).
        "interactions": interactions,
        "encoder": encoder,  # multi_interest: {"weights": "router.pt", "router": towers.router_spec}
        "origin": origin,  # {"written_by": "train" | "export", ...}: where the tables came from
    }


def write(embeddings_dir: Path, manifest: dict[str, Any], atomic_write) -> None:
    atomic_write(embeddings_dir / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))


def read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(embeddings directory, manifest) of a run directory or an embeddings directory."""
    path = Path(path)
    directory = path / "embeddings" if (path / "embeddings").is_dir() else path
    file = directory / "manifest.json"
    if file.is_file():
        try:
            manifest = json.loads(file.read_text())
        except json.JSONDecodeError as err:
            raise ManifestError(f"{file}: not valid JSON ({err.msg} at line {err.lineno})") from None
        if manifest.get("format") != FORMAT:
            raise ManifestError(f"{file}: format {manifest.get('format')!r}, this distrec reads {FORMAT!r}")
    else:
        manifest = _from_config(directory)
    for key in ("tables", "ids"):
        for name, rel in manifest[key].items():
            if rel is not None and not (directory / rel).is_file():
                raise ManifestError(f"{directory}: {rel} is missing (named by the manifest's {key}.{name})")
    return directory, manifest


def _from_config(directory: Path) -> dict[str, Any]:
    """A manifest for an export written before manifests: from the run's config.yaml beside it."""
    cfg_file = directory.parent / "config.yaml"
    if not (directory / "item_embeddings.npy").is_file() or not cfg_file.is_file():
        raise ManifestError(f"{directory}: no manifest.json, and no item_embeddings.npy with a config.yaml beside "
                            "it: not a distrec run or embeddings directory (python -m distrec.export writes one "
                            "from a checkpoint)")
    resolved = yaml.safe_load(cfg_file.read_text())
    items = np.load(directory / "item_embeddings.npy", mmap_mode="r")
    has_users = (directory / "user_embeddings.npy").is_file()
    users = np.load(directory / "user_embeddings.npy", mmap_mode="r") if has_users else None
    encoder = None
    if (directory / "router.pt").is_file():
        from distrec.nn.towers import router_spec  # torch-free here otherwise

        # A key an older config.yaml lacks takes today's default, from the config's one definition.
        model = dataclasses.replace(ModelConfig(), **{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in resolved["model"].items() if k in ROUTER_KEYS})
        max_len = resolved["data"].get("sequence", {}).get("max_len", SequenceConfig().max_len)
        encoder = {"weights": "router.pt", "router": router_spec(
            model.router, model.dim, model.num_interests, max_len, hidden_factor=model.hidden_factor,
            positional=model.positional, num_blocks=model.num_blocks, num_heads=model.num_heads,
            dropout=model.router_dropout)}
    return build(resolved, num_users=0 if users is None else users.shape[0], num_items=items.shape[0],
                 has_user_table=has_users, has_user_ids=(directory / "user_ids.npy").is_file(),
                 interactions=_data_interactions(directory), encoder=encoder, origin={"written_by": "train", "manifest": "from config.yaml"})


def _data_interactions(directory: Path) -> str | None:
    """mrl4rec runs keep their interactions (user, item, split) in data/ beside embeddings/."""
    return "../data/interactions.parquet" if (directory.parent / "data" / "interactions.parquet").is_file() else None
