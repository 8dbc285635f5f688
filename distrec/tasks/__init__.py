"""The training tasks, by `model.task`: each module builds the run's `Workload` (data, model,
batches, evaluation sets, exports) from the config.

    mrl4rec          matryoshka MF over user / item tables (tasks/mrl4rec.py)
    multi_interest   REMI / ComiRec-SA / SASRec over behaviour sequences (tasks/multi_interest.py)

A new task is a module with a `workload(cfg, env, data_dir) -> Workload` and a line in TASKS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from distrec.config import Config
from distrec.distributed import DistEnv
from distrec.tasks import mrl4rec, multi_interest
from distrec.tasks.workload import Workload

TASKS: dict[str, Callable[[Config, DistEnv, Path | None], Workload]] = {
    "mrl4rec": mrl4rec.workload,
    "multi_interest": multi_interest.workload,
}


def build_workload(cfg: Config, env: DistEnv, data_dir: Path | None) -> Workload:
    """The run's workload; `data_dir` (rank 0 only) receives the data report and Parquet copy."""
    return TASKS[cfg.model.task](cfg, env, data_dir)
