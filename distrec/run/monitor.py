"""TensorBoard scalars of a training run, per epoch, under <attempt>/tb, from rank 0.

Each phase is a TensorBoard run of its own (tb/select, tb/train, tb/refit), so that a refit's
curves lie over the selection's instead of continuing its steps. The step is the epoch. Tags:

    loss/train                       mean training loss (the weighted sum over matryoshka levels)
    loss/train/dim<d>                each level's own mean loss, unweighted (not for BPR)
    valid/<metric>/dim<d>            validation metrics at each level (test/... with eval.track_test)
    throughput/samples_per_second    training samples per second of training time
    time/epoch_seconds, time/eval_seconds
    routing/<name>, routing/<name>/interest<k>
                                     multi-interest routing diagnostics (losses.routing_diagnostics)

Without the tensorboard package (the distrec[tensorboard] extra) nothing is written and the
run says how to get it. Imports: stdlib; torch.utils.tensorboard on rank 0.
"""

from __future__ import annotations

from pathlib import Path

DIR = "tb"
EXTRA = 'pip install -e ".[tensorboard]" (the distrec[tensorboard] extra)'


def _summary_writer():
    """torch's SummaryWriter class, or None without a working tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class Scalars:
    """One run's scalars into `log_dir` (None: write nothing, as on ranks other than 0)."""

    def __init__(self, log_dir: Path | None):
        self.log_dir = log_dir
        self._writer_class = _summary_writer() if log_dir is not None else None
        self._writers: dict = {}  # phase -> SummaryWriter, opened at the phase's first epoch
        self._purge: dict[str, int] = {}

    def where(self, run_dir: Path) -> str:
        """The log line that says where the scalars are (rank 0)."""
        if self._writer_class is None:
            return f"no TensorBoard scalars: the tensorboard package is not installed; {EXTRA} enables them"
        return (f"TensorBoard scalars in {self.log_dir} ({run_dir / DIR} once the run finishes): "
                f"tensorboard --logdir {run_dir}")

    def resumed(self, phase: str, epoch: int) -> None:
        """`phase` goes on after `epoch`: TensorBoard hides what the interrupted attempt logged
        after that epoch (the resumed run logs those epochs again)."""
        self._purge[phase] = epoch + 1

    def epoch(self, record: dict, samples_per_second: float) -> None:
        """The scalars of one epoch's record (run.loop.fit's, as in metrics.jsonl)."""
        writer = self._writer(record["phase"])
        if writer is None:
            return
        step = record["epoch"]
        writer.add_scalar("loss/train", record["loss"], step)
        for dim, value in record.get("level_loss", {}).items():
            writer.add_scalar(f"loss/train/dim{dim}", value, step)
        writer.add_scalar("throughput/samples_per_second", samples_per_second, step)
        writer.add_scalar("time/epoch_seconds", record["epoch_seconds"], step)
        if "eval_seconds" in record:
            writer.add_scalar("time/eval_seconds", record["eval_seconds"], step)
        for split in ("valid", "test"):
            for dim, metrics in record.get(split, {}).items():
                for name, value in metrics.items():
                    writer.add_scalar(f"{split}/{name}/dim{dim}", value, step)
        for key, values in record.items():  # diagnostics (workload.diagnostics), e.g. routing
            if key in ("valid", "test", "level_loss") or not isinstance(values, dict):
                continue
            for name, value in values.items():
                if isinstance(value, list):  # one value per interest
                    for k, v in enumerate(value):
                        writer.add_scalar(f"{key}/{name.removesuffix('_per_interest')}/interest{k}", v, step)
                else:
                    writer.add_scalar(f"{key}/{name}", value, step)
        writer.flush()  # a TensorBoard watching the run shows each epoch as it ends

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _writer(self, phase: str):
        if self._writer_class is None:
            return None
        if phase not in self._writers:
            self._writers[phase] = self._writer_class(str(self.log_dir / phase), purge_step=self._purge.get(phase))
        return self._writers[phase]
