"""One run directory: one run at a time in it, and results only from runs that finished.

    <run_dir>/.lock                  held by rank 0 of the run in progress (pid, host, start)
    <run_dir>/attempts/live/         where the run in progress writes: config.yaml, metrics.jsonl,
                                     resumes.jsonl, train.log, tb/, data/, metrics.json, embeddings/
    <run_dir>/attempts/failed-<UTC>/ a run that stopped with an error, kept for its files
    <run_dir>/config.yaml, metrics.json, metrics.jsonl, resumes.jsonl, train.log, tb/, data/, embeddings/
                                     the last run that finished, published together
    <run_dir>/checkpoint/            resumable state, shared by the attempts (checkpoint.py)

A failed run therefore never touches the published results of an earlier one. Publishing
removes the old metrics.json first and moves the new one in last: whatever moment a publish is
interrupted at, a metrics.json that exists belongs with the files beside it. A lock whose
process is gone (a crashed or killed run on this host) is taken over; a lock held by a live
process, or by another host, refuses the new run. Rank 0 only. Imports: stdlib, distrec.config.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from distrec.config import ConfigError

LIVE = Path("attempts") / "live"
LOCK = ".lock"
PUBLISHED = ("config.yaml", "metrics.jsonl", "resumes.jsonl", "train.log", "tb", "data", "embeddings")  # then metrics.json
LOGS = ("metrics.jsonl", "resumes.jsonl", "train.log", "tb")  # what a resumed finished run goes on writing


def acquire(run_dir: Path) -> None:
    """Take `run_dir`'s lock, or raise ConfigError naming the run that holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None and _age(path) < 5.0:  # being written by a run that is taking it now
                holder = {"pid": "?", "host": "?", "since": "just now"}
            elif holder is None or (holder.get("host") == me["host"] and not _alive(holder.get("pid", 0))):
                path.unlink(missing_ok=True)  # left by a run that crashed or was killed
                continue
            raise ConfigError(
                f"run_dir {run_dir} is in use by another run (pid {holder.get('pid')} on {holder.get('host')} since "
                f"{holder.get('since')}): wait for it, choose another run_dir, or delete {path} if that run is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return
    raise ConfigError(f"could not take the lock {path}: other runs keep taking it")


def release(run_dir: Path) -> None:
    """Drop the lock if this process holds it."""
    path = run_dir / LOCK
    holder = _read(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


def begin(run_dir: Path, resuming: bool) -> Path:
    """The live attempt directory. A resumed run continues the attempt its checkpoint came from
    (or, for a finished run resumed to train on, a copy of the published logs); a fresh run
    shelves what an earlier unfinished attempt left and starts an empty one."""
    live = run_dir / LIVE
    if live.exists() and not resuming:
        shelve(run_dir)
    if not live.exists():
        live.mkdir(parents=True)
        if resuming:
            for name in LOGS:
                if (run_dir / name).is_dir():  # tb/: TensorBoard's event files
                    shutil.copytree(run_dir / name, live / name)
                elif (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, live / name)
    return live


def shelve(run_dir: Path) -> Path:
    """Move the live attempt aside as attempts/failed-<UTC time>; returns where it went."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = run_dir / LIVE.parent / f"failed-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir / LIVE.parent / f"failed-{stamp}-{n}"
    (run_dir / LIVE).rename(dest)
    return dest


def publish(run_dir: Path) -> None:
    """Replace the published results with the live attempt's, metrics.json last."""
    live = run_dir / LIVE
    (run_dir / "metrics.json").unlink(missing_ok=True)  # from here on, no stale result looks valid
    for name in PUBLISHED:
        _remove(run_dir / name)
        if (live / name).exists():
            (live / name).rename(run_dir / name)
    (live / "metrics.json").rename(run_dir / "metrics.json")
    shutil.rmtree(live)
    if not any(live.parent.iterdir()):  # no failed attempts kept: no attempts/ left behind
        live.parent.rmdir()


def live_file(run_dir: Path, name: str) -> Path:
    """`name` of the run in progress if there is one, else of the published run (for readers
    that follow a run from outside, e.g. metrics.jsonl)."""
    live = run_dir / LIVE / name
    return live if live.exists() else run_dir / name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # vanished, or half-written by a process killed while taking it
        return None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _alive(pid: int) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # not a pid we can check: assume it is in use
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
