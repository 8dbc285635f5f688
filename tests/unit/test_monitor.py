"""Watching a run: train.log with time-stamped epoch lines, TensorBoard scalars under tb/, no
progress-bar fragments in logs that are not a terminal, and nothing left behind between runs
(distrec.run.console, distrec.run.monitor, train.py). The runs are in this process, as a test or a
search calling train.main several times would be."""

from __future__ import annotations

import json
import math
import logging
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distrec import train
from distrec.run import console, loop, monitor

TINY = ["data.synthetic.preset=tiny", "train.epochs=2", "train.batch_size=256", "model.dim=16", "model.levels=[4,8,16]",
        "eval.ks=[5,20]", "eval.select_metric=recall@20", "eval.patience=10", "device=cpu"]  # progress left on
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO "


@pytest.fixture
def one_process(monkeypatch):
    """A process group of one, its variables removed again afterwards (parallel.init sets them)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(port)), ("RANK", "0"), ("WORLD_SIZE", "1"),
                        ("LOCAL_RANK", "0"), ("OMP_NUM_THREADS", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _open_files(path: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    return [os.readlink(fd) for fd in fds.iterdir() if str(path) in os.path.realpath(fd)] if fds.is_dir() else []


def test_a_run_logs_time_stamped_epoch_lines_and_tensorboard_scalars_without_bar_fragments(tmp_path, capsys, one_process):
    run = tmp_path / "r"
    train.main([*TINY, f"run_dir={run}"])
    out = capsys.readouterr()
    text = (run / "train.log").read_text()  # published with the run's other files
    assert re.search(f"^{STAMP}epoch 1/2 \\| loss [0-9.]+ \\| .* \\| best epoch 1 \\| ETA ≤ [0-9]+ s$", text, re.M), text
    assert re.search(f"^{STAMP}epoch 2/2 \\| loss .* \\| best epoch [12]$", text, re.M), text  # nothing left: no ETA
    assert re.search(f"^{STAMP}test metrics at every matryoshka dimension", text, re.M)
    assert re.search(f"^{STAMP}best epoch [12]; ", text, re.M)
    assert f"tensorboard --logdir {run}" in text
    # stdout carries the same lines (scheduler logs read it); stderr (not a terminal) no bar.
    assert text in out.out
    assert "\r" not in out.out + out.err and "it/s" not in out.out + out.err, out.err[-2000:]
    assert not (run / "attempts").exists() and not _open_files(run)

    scalars = _scalars(run / "tb" / "select")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for dim in ("4", "8", "16"):
        for name in ("recall@5", "ndcg@5", "recall@20", "ndcg@20"):
            assert scalars[f"valid/{name}/dim{dim}"] == [(r["epoch"], pytest.approx(r["valid"][dim][name])) for r in records]
    assert scalars["loss/train"] == [(r["epoch"], pytest.approx(r["loss"])) for r in records]
    for dim in ("4", "8", "16"):  # each level's own loss, as metrics.jsonl's level_loss records it
        assert scalars[f"loss/train/dim{dim}"] == [(r["epoch"], pytest.approx(r["level_loss"][dim])) for r in records]
    assert all(0 < v < math.inf for r in records for v in r["level_loss"].values())
    for tag in ("throughput/samples_per_second", "time/epoch_seconds", "time/eval_seconds"):
        assert [step for step, _ in scalars[tag]] == [1, 2] and min(v for _, v in scalars[tag]) > 0
    assert not any(tag.startswith("test/") for tag in scalars)  # eval.track_test is off


def test_a_second_run_in_the_same_process_prints_each_line_once(tmp_path, capsys, one_process):
    train.main([*TINY, "train.epochs=1", f"run_dir={tmp_path / 'a'}"])
    capsys.readouterr()
    train.main([*TINY, "train.epochs=1", "eval.track_test=true", f"run_dir={tmp_path / 'b'}"])
    out = capsys.readouterr().out
    assert out.count("INFO epoch 1/1 ") == 1 and out.count("INFO data: ") == 1, out
    assert (tmp_path / "a" / "train.log").read_text().count("epoch 1/1") == 1
    assert (tmp_path / "b" / "train.log").read_text().count("epoch 1/1") == 1
    assert logging.getLogger(console.NAME).handlers == [] and not _open_files(tmp_path)
    assert "test/recall@20/dim16" in _scalars(tmp_path / "b" / "tb" / "select")


def test_multi_interest_runs_log_their_routing_diagnostics(tmp_path, capsys, one_process):
    rng = np.random.default_rng(2)
    log = tmp_path / "log.txt"
    log.write_text("\n".join(f"{u} {i}" for u in range(80) for i in rng.integers(0, 40, size=rng.integers(4, 12))) + "\n")
    train.main(["--config", "configs/remi_video.yaml", f"data.train={log}", "train.epochs=1", "train.batch_size=32",
                "eval.ks=[5,20]", "eval.select_metric=recall@20", "device=cpu", f"run_dir={tmp_path / 'r'}"])
    scalars = _scalars(tmp_path / "r" / "tb" / "select")
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[0])
    assert scalars["routing/max_weight"] == [(1, pytest.approx(record["routing"]["max_weight"]))]
    k = len(record["routing"]["max_weight_per_interest"])
    assert {f"routing/entropy/interest{i}" for i in range(k)} <= set(scalars) and k > 1


def test_without_tensorboard_the_run_says_how_to_get_it_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor, "_summary_writer", lambda: None)
    scalars = monitor.Scalars(tmp_path / "tb")
    assert "pip install" in scalars.where(tmp_path) and "distrec[tensorboard]" in scalars.where(tmp_path)
    scalars.epoch({"phase": "select", "epoch": 1, "loss": 0.5, "epoch_seconds": 1.0}, 100.0)
    scalars.close()
    assert not (tmp_path / "tb").exists()


def test_durations_read_as_seconds_minutes_and_hours():
    assert [loop.duration(s) for s in (4.4, 190, 7500)] == ["4 s", "3 min 10 s", "2 h 5 min"]
