"""Run a module-level function on N gloo CPU ranks (spawned processes) and collect results."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import traceback
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank: int, world_size: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1",
    )
    try:
        result = fn(*args)
        Path(out).write_bytes(pickle.dumps(("ok", result)))
    except BaseException:  # noqa: BLE001 - the parent re-raises with the child's traceback
        Path(out).write_bytes(pickle.dumps(("error", traceback.format_exc())))
        raise


def run_ranks(fn, world_size: int, tmp_path: Path, *args, timeout_s: float = 300) -> list:
    """fn(*args) on every rank; returns each rank's return value, in rank order."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    outs = [str(tmp_path / f"rank{r}-{port}.pkl") for r in range(world_size)]
    procs = [ctx.Process(target=_entry, args=(fn, r, world_size, port, outs[r], args)) for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    for p in procs:
        if p.is_alive():
            p.kill()
    results = []
    for r, out in enumerate(outs):
        if not Path(out).exists():
            raise RuntimeError(f"rank {r} died without a result (exit code {procs[r].exitcode})")
        status, value = pickle.loads(Path(out).read_bytes())
        if status != "ok":
            raise RuntimeError(f"rank {r} failed:\n{value}")
        results.append(value)
    return results
