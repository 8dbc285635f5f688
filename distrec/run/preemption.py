"""Preemption: SIGTERM asks the run to stop at the next step boundary with a checkpoint.

Slurm and Kubernetes send SIGTERM before they kill a job (after KillWait / the pod's grace
period, 30 s by default). The handler only raises a flag; the training loop agrees on it across
ranks (`checkpoint.Schedule`), every rank finishes its step, the checkpoint is written, and
the process exits with `EXIT_CODE` (128 + SIGTERM), which the schedulers count as a failure to
retry: with retries (`--max-restarts`, torchx `max_retries`, Slurm `--requeue`) the job comes
back and `train.resume=auto` continues from that step. Imports: stdlib only.
"""

from __future__ import annotations

import signal
import threading

EXIT_CODE = 128 + signal.SIGTERM

_requested = threading.Event()


class Preempted(Exception):
    """Raised on every rank once a preemption checkpoint is written (or none could be)."""


def install():
    """Turn SIGTERM into a request; returns the previous handler, for `restore`. Main thread
    only (Python delivers signals there); elsewhere a no-op that returns None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _requested.clear()
    return signal.signal(signal.SIGTERM, lambda signum, frame: _requested.set())


def restore(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def requested() -> bool:
    return _requested.is_set()
