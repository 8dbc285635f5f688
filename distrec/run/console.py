"""The run's console: the "distrec" logger that a training run writes its lines to.

`start(rank, path)` sends rank 0's INFO lines, with time and level, to stdout and to `path`
(train.log in the live attempt, published with the run's other files); `stop()` removes and
closes the handlers, so that a process that trains many times (tests, searches) neither
repeats lines nor keeps files open. Imports: stdlib only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

NAME = "distrec"
FILE = "train.log"
DATE = "%Y-%m-%d %H:%M:%S"


def start(rank: int, path: Path | None = None) -> logging.Logger:
    """Point the logger at this rank's streams (and `path`, on rank 0); returns it."""
    log = stop()  # handlers left by a run that never reached stop() would print every line twice
    # Our handlers only: a root handler set up by a host program (or a library) would repeat each line.
    log.propagate = False
    if rank == 0:
        log.setLevel(logging.INFO)
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", DATE)
        # stdout, as the plain prints were: scheduler logs, runner's stdout.log and tests read it there.
        handlers = [logging.StreamHandler(sys.stdout)]
        if path is not None:  # appended to: a resumed attempt continues its log
            handlers.append(logging.FileHandler(path, encoding="utf-8"))
    else:
        # Every rank runs the same code and would print the same lines: rank 0 speaks for all.
        # A warning or error may be one rank's own, so the others keep those, on stderr, named.
        log.setLevel(logging.WARNING)
        fmt = logging.Formatter(f"%(asctime)s %(levelname)s rank {rank}: %(message)s", DATE)
        handlers = [logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


def stop() -> logging.Logger:
    """Remove and close the logger's handlers (closing a stream handler leaves stdout open)."""
    log = logging.getLogger(NAME)
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    return log


def metrics_table(metrics: dict, heading: str) -> str:
    """`metrics` ({dim: {name: value}}) as aligned rows under `heading`: one log record, so that
    the rows stay aligned under the heading's time stamp."""
    names = list(next(iter(metrics.values())))
    rows = [heading, "dim  " + " ".join(f"{n:>10}" for n in names)]
    rows += [f"{dim:>3}  " + " ".join(f"{row[n]:10.4f}" for n in names) for dim, row in metrics.items()]
    return "\n".join(rows)
