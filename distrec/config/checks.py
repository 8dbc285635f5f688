"""Checks that need the launch (world size, device, run directory, input files): called by every
rank right after the process group is up, before any data is read. Imports: stdlib.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distrec.config.reads import get
from distrec.config.schema import Config, ConfigError, ModelConfig


def check_world(cfg: Config, world_size: int, device: Any) -> None:
    """What the config alone cannot tell: checks against the world size and the device (a
    torch.device or its type), the run directory and the input files. Called by every rank
    right after the process group is up, before any data is read or generated."""
    kind = getattr(device, "type", device)
    if cfg.train.batch_size < world_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is the global batch, split over {world_size} "
                          f"ranks: it must be at least the world size; set train.batch_size >= {world_size}")
    if cfg.train.optimizer == "adam" and kind != "cuda":
        raise ConfigError("train.optimizer=adam needs a GPU: fbgemm's fused Adam is not supported in CPU mode; "
                          "use train.optimizer=row_wise_adagrad (the CPU default) or adagrad")
    check_sharding_device(cfg.model, kind, ("user_sharding", "item_sharding") if cfg.model.task == "mrl4rec" else ("item_sharding",))
    for key in ("data.train", "data.test"):
        path = get(cfg, key)
        if path is not None and cfg.data.format != "synthetic" and not Path(path).exists():
            raise ConfigError(f"{key}={path}: no such file or directory")
    check_run_dir(cfg.run_dir)


def check_sharding_device(cfg: ModelConfig, device_type: str, fields: tuple[str, ...]) -> None:
    """Row-wise sharding of a bag collection needs a GPU. `fields`: the ModelConfig sharding
    fields of the tables this run has (check_world; parallel.shard for callers outside train)."""
    if device_type == "cuda" or cfg.collection != "bag":
        return
    for field in fields:
        if getattr(cfg, field) == "row_wise":
            # TorchRec's planner would stop with "No available sharding type and compute kernel
            # combination": its EmbeddingBagCollection has row-wise kernels on GPUs only.
            raise ConfigError(f"model.{field}=row_wise needs a GPU with model.collection=bag; on CPU use "
                              f"model.collection=sequence, or table_wise / column_wise")


def check_run_dir(run_dir: str) -> None:
    """Create `run_dir` and write a probe file in it: a run that cannot write its outputs should
    say so before it spends anything on data or training."""
    path = Path(run_dir)
    probe = path / f".write_probe.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run_dir={run_dir} is not writable ({err.strerror}: {err.filename}); "
                          f"set run_dir to a directory this user may create and write") from None
