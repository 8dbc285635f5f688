"""Where a training phase stands, typed: what the loop reads and changes, and what
checkpoint/last stores as its loop record (run/checkpoint_manager.py). Imports: stdlib.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class Best:
    """The best validation epoch so far (select phase); `epoch` is the phase's last epoch until
    one is evaluated, so a phase without validation reports its last epoch."""

    epoch: int
    score: float = -math.inf
    valid: dict | None = None  # its validation metrics
    snapshot: dict | None = None  # its weights, in memory (checkpoint.snapshot)

    def record(self) -> dict[str, Any]:
        """As checkpoint/last stores it (the weights go to checkpoint/best)."""
        return {"score": self.score, "epoch": self.epoch, "valid": self.valid}

    def load(self, record: dict[str, Any]) -> None:
        self.score, self.epoch, self.valid = record["score"], record["epoch"], record["valid"]


@dataclasses.dataclass
class TrainState:
    """One phase's loop: "select" (validation, early stopping, the best epoch kept), "refit"
    (train + valid, every epoch) or "train" (no validation split, every epoch)."""

    phase: str
    epochs: int  # the most this phase runs
    best: Best
    epoch: int = 0  # epochs closed: trained and evaluated
    batch: int = 0  # batches of epoch + 1 already trained (a mid-epoch checkpoint)
    totals: list[float] | None = None  # their [loss sum, pairs, level sums...], summed over ranks
    stopped: bool = False  # early stopping ended the phase
    seconds: float = 0.0  # training seconds (waiting for the refit beside the selection included)
    eval_seconds: float = 0.0

    @property
    def select(self) -> bool:
        return self.phase == "select"

    @property
    def resumable(self) -> bool:
        return self.phase != "refit"  # a refit is short and restarts from scratch

    def loop_record(self, closed: int, batch: int = 0, totals: list | None = None, *, stopped: bool = False) -> dict:
        return {"epoch": closed, "batch": batch, "totals": totals, "stopped": stopped, "seconds": self.seconds,
                "best": self.best.record()}
