"""The refit trained beside the selection (train.refit_alongside=auto, distrec/concurrent_refit.py)
tests the same model as the refit trained after it: same best epoch, same tables, same metrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from distrec import train
from distrec.run.concurrent_refit import RefitAlongside

TINY = ["data.synthetic.preset=tiny", "train.batch_size=256", "progress=false", "eval.ks=[5,20]",
        "eval.select_metric=recall@20", "model.dim=16", "model.levels=[4,8,16]", "train.refit=true"]


def _run(run: Path, threads: int, extra: list[str]) -> tuple[dict, dict]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = train.main([*TINY, *extra, f"run_dir={run}"])
        assert torch.get_num_threads() == threads  # the split is undone after the selection
    finally:
        torch.set_num_threads(before)
    emb = run / "embeddings"
    return result, {n: np.load(emb / f"{n}.npy") for n in ("user_embeddings", "item_embeddings")}


@pytest.mark.parametrize("extra", [
    ["train.epochs=4"],  # the selected epoch is the last
    # A large learning rate over-fits the tiny preset: validation peaks and early stopping ends
    # the selection after the peak, so the refit must hand back an earlier epoch than its last.
    ["train.epochs=12", "train.lr=2.0", "eval.every_epochs=1", "eval.patience=2"],
])
def test_the_refit_beside_the_selection_is_the_refit_after_it(tmp_path, extra):
    # Two threads: the refit runs beside the selection, each on one. One thread: after it.
    beside, beside_tables = _run(tmp_path / "beside", 2, extra)
    after, after_tables = _run(tmp_path / "after", 1, extra)
    assert beside["refit_alongside"] is True and after["refit_alongside"] is False
    assert beside["refit"] is True and after["refit"] is True
    assert beside["best_epoch"] == after["best_epoch"]
    for name in after_tables:
        np.testing.assert_allclose(beside_tables[name], after_tables[name], rtol=0, atol=1e-6)
    assert json.dumps(beside["test"]) == json.dumps(after["test"])
    assert "refit" in beside["seconds"]


def test_the_stopped_case_stops_before_the_last_epoch(tmp_path):
    """The second case above really exercises an earlier epoch: otherwise it tests nothing new."""
    result, _ = _run(tmp_path / "r", 2, ["train.epochs=12", "train.lr=2.0", "eval.every_epochs=1", "eval.patience=2"])
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert result["best_epoch"] < records[-1]["epoch"]


def test_never_refits_after_the_selection(tmp_path):
    result, _ = _run(tmp_path / "r", 2, ["train.epochs=2", "train.refit_alongside=never"])
    assert result["refit"] is True and result["refit_alongside"] is False


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))


def test_an_error_in_the_refit_thread_reaches_the_selection():
    def one_epoch(model, opts, epoch, after_step):
        raise FloatingPointError(f"non-finite loss at epoch {epoch}")

    beside = RefitAlongside(None, lambda: (_Model(), []), one_epoch, 1)
    beside.start(3)
    with pytest.raises(FloatingPointError, match="epoch 3"):
        beside.finish(3, keep=True)
    assert beside.kept is None


def test_close_stops_a_running_epoch_at_its_next_step():
    started, steps = threading.Event(), []

    def one_epoch(model, opts, epoch, after_step):
        started.set()
        for step in range(10_000):  # far longer than the test: only the stop ends it
            time.sleep(0.001)
            steps.append(step)
            after_step(step + 1, None)
        return 0.0, None

    beside = RefitAlongside(None, lambda: (_Model(), []), one_epoch, 1)
    beside.start(1)
    started.wait(5)
    beside.close()  # a preemption or an error in the selection
    assert 0 < len(steps) < 10_000


def test_result_is_the_kept_epoch_not_the_last():
    def one_epoch(model, opts, epoch, after_step):
        with torch.no_grad():
            model.w.fill_(float(epoch))
        return 1.0, None

    beside = RefitAlongside(None, lambda: (_Model(), []), one_epoch, 1)
    for epoch, improved in [(1, True), (2, True), (3, False)]:
        beside.start(epoch)
        assert beside.finish(epoch, keep=improved)["epoch"] == epoch
    model, _ = beside.result(2)
    assert model.w.tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="not the selected epoch 3"):
        beside.result(3)
