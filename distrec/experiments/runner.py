"""One way to run an experiment: `launch()` starts `distrec.train` in a child process and returns a `RunResult`.

The scripts and the hyper-parameter search (`search.py`) use it instead of building launch
commands and reading run directories themselves; `train.py` does not know it exists. While the
run is live, each new metrics.jsonl record is handed to an optional callback that may stop the
run (pruning, time to quality). Imports: stdlib only.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[2]  # the repository root: relative paths in configs start here
POLL_S = 0.2
STDERR_TAIL_LINES = 40
KILL_GRACE_S = 5.0
LIVE = Path("attempts") / "live"  # distrec.run.rundir.LIVE: where a run in progress writes (stdlib-only module)

OnMetrics = Callable[[dict[str, Any]], bool]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What one launch left behind. `metrics` is None when the run wrote no metrics.json (it
    failed, or was stopped); `stopped_by` is "callback", "timeout" or None (ran to its end)."""

    run_dir: Path
    returncode: int
    wall_seconds: float  # from just before the child starts until it has exited
    metrics: dict[str, Any] | None
    records: tuple[dict[str, Any], ...]  # metrics.jsonl, one dict per evaluated epoch
    stderr_tail: str
    command: tuple[str, ...]
    stopped_by: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.metrics is not None


def command(config: str | Path | None, overrides: list[str], nproc: int, run_dir: str | Path) -> list[str]:
    """The argv that `launch` runs. One process needs no rendezvous, so it skips torchrun's start-up."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if nproc == 1:
        cmd = [sys.executable, "-m", "distrec.train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "distrec.train"]
    if config is not None:
        cmd += ["--config", str(resolve_path(config))]
    if any(o.partition("=")[0] == "run_dir" for o in overrides):
        raise ValueError("pass the run directory as run_dir, not as an override: launch() reads that directory")
    # progress comes before the overrides so that a caller can still turn the progress bar on.
    return [*cmd, f"run_dir={run_dir}", "progress=false", *overrides]


def launch(
    config: str | Path | None,
    overrides: list[str],
    nproc: int,
    run_dir: str | Path,
    timeout_s: float | None = None,
    on_metrics: OnMetrics | None = None,
    *,
    echo: bool = True,
) -> RunResult:
    """Run `distrec.train --config CONFIG run_dir=RUN_DIR progress=false *overrides` on `nproc`
    processes from the repository root and wait for it.

    `on_metrics(record)` sees every metrics.jsonl record once, in order, as the run writes it
    (polled every 0.2 s); returning True ends the run (its whole process group). `timeout_s`
    ends it the same way. `echo` copies the child's output to this process's; it is always
    kept in RUN_DIR/stdout.log and RUN_DIR/stderr.log. Relative `run_dir` and `config` paths
    are the caller's; paths inside the config and overrides are relative to the repository root.
    """
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    # A run writes into run_dir/attempts/live and publishes metrics.json only when it succeeds
    # (distrec.run.rundir): an earlier run's result must not pass for this one's, so it counts
    # only if this launch exited 0 and the file is new.
    before = _stamp(run_dir / "metrics.json")
    argv = command(config, overrides, nproc, run_dir)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    reader = _RecordReader(run_dir / LIVE / "metrics.jsonl")
    stopped_by = None
    with open(run_dir / "stdout.log", "w") as out_log, open(run_dir / "stderr.log", "w") as err_log:
        t0 = time.perf_counter()
        # A new session makes the child a process-group leader, so stopping it also stops the
        # ranks torchrun started (they would otherwise hold the rendezvous port and the CPUs).
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
        pumps = [
            _pump(proc.stdout, [out_log.write, *([sys.stdout.write] if echo else [])]),
            _pump(proc.stderr, [err_log.write, tail.append, *([sys.stderr.write] if echo else [])]),
        ]
        try:
            while True:
                done = proc.poll() is not None  # read after the poll: an exited run's last records are on disk
                for record in reader.new_records():
                    if stopped_by is None and on_metrics is not None and on_metrics(record):
                        stopped_by = "callback"
                        _stop(proc)
                if done or stopped_by is not None:
                    break
                if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                    stopped_by = "timeout"
                    _stop(proc)
                    break
                time.sleep(POLL_S)
        finally:
            if proc.poll() is None:  # KeyboardInterrupt or a failing callback: leave no ranks behind
                _stop(proc)
        returncode = proc.wait()
        wall = time.perf_counter() - t0
        for thread in pumps:
            thread.join()
    reader.new_records()  # a stopped run may have written more before it died
    metrics_path = run_dir / "metrics.json"
    metrics = None
    if returncode == 0 and metrics_path.exists() and _stamp(metrics_path) != before:
        metrics = json.loads(metrics_path.read_text())
        # Published with the results: the records the last polls may have missed.
        reader.records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
            if (run_dir / "metrics.jsonl").exists() else reader.records
    return RunResult(run_dir=run_dir, returncode=returncode, wall_seconds=wall, metrics=metrics,
                     records=tuple(reader.records), stderr_tail="".join(tail), command=tuple(argv),
                     stopped_by=stopped_by)


class _RecordReader:
    """The complete lines appended to metrics.jsonl since the last call, parsed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.records: list[dict[str, Any]] = []

    def new_records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self.offset:
            # A resumed run dropped the records of the epochs it redoes: what is left was seen.
            kept = self.path.read_bytes()
            self.offset = kept.rfind(b"\n") + 1
            self.records = [json.loads(line) for line in kept[: self.offset].splitlines() if line.strip()]
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        # A line is appended by one write, but a read can still land in the middle of it:
        # leave an unterminated last line for the next poll.
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        new = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
        self.records += new
        return new


def _pump(stream: TextIO, sinks: list[Callable[[str], Any]]) -> threading.Thread:
    """Drain a child's pipe on a thread: an undrained pipe fills up and blocks the child."""
    def run() -> None:
        live = list(sinks)
        for line in stream:
            for sink in list(live):
                try:
                    sink(line)
                except (OSError, ValueError):  # e.g. our own stdout piped into a closed `head`
                    live.remove(sink)
        stream.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the run's process group, SIGKILL if it is still there after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of a file, None if absent: publishing replaces the file, so either changes."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def resolve_path(path: str | Path) -> Path:
    """A config-like file: the caller's relative path if it exists from the caller's directory,
    else the repository's (`configs/x.yaml` works from anywhere)."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return ROOT / path
