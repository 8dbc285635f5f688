"""runner.launch: one tiny training run end to end, and a callback that stops a run early."""

from __future__ import annotations

import pytest

from distrec.experiments.runner import command, launch

pytestmark = pytest.mark.slow  # each test starts a training process (~10 s)

TINY = ["data.synthetic.preset=tiny", "train.batch_size=256", "eval.ks=[5,20]", "eval.select_metric=recall@20",
        "model.dim=16", "model.levels=[4,8,16]", "eval.every_epochs=1"]


def test_launch_returns_the_runs_metrics_and_records(tmp_path):
    run = launch(None, [*TINY, "train.epochs=2"], 1, tmp_path / "r", echo=False)
    assert run.ok and run.returncode == 0 and run.stopped_by is None, run.stderr_tail
    assert run.run_dir == (tmp_path / "r").resolve() and run.wall_seconds > 0
    assert set(run.metrics["test"]) == {"4", "8", "16"} and 1 <= run.metrics["best_epoch"] <= 2
    assert [(r["phase"], r["epoch"]) for r in run.records] == [("select", 1), ("select", 2)]
    assert run.records[0]["valid"]["16"]["recall@20"] > 0
    assert run.command[1:3] == ("-m", "distrec.train") and f"run_dir={run.run_dir}" in run.command
    assert (run.run_dir / "stdout.log").read_text().count("epoch") >= 2


def test_on_metrics_returning_true_stops_the_run(tmp_path):
    seen = []

    def stop_at_first(record) -> bool:
        seen.append(record["epoch"])
        return True

    run = launch(None, [*TINY, "train.epochs=20"], 1, tmp_path / "r", on_metrics=stop_at_first, echo=False)
    assert run.stopped_by == "callback" and run.returncode != 0 and not run.ok
    assert seen == [1]  # the callback is not asked again once it said stop
    assert 1 <= len(run.records) < 20 and run.metrics is None


def test_one_process_skips_torchrun_and_more_use_it():
    assert command(None, [], 1, "/r")[1:3] == ["-m", "distrec.train"]
    many = command("configs/default.yaml", ["train.epochs=1"], 2, "/r")
    assert many[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert many[-3:] == ["run_dir=/r", "progress=false", "train.epochs=1"]
    with pytest.raises(ValueError, match="run_dir"):
        command(None, ["run_dir=/elsewhere"], 1, "/r")
