"""What a run leaves in its run directory besides the serving bundle: resolved config and metrics.

Every file is written to a temporary name and renamed (serve.bundle.atomic_write), so an
interrupted or failed run never leaves a half-written metrics.json. Only rank 0 writes.
The embeddings are written by distrec.serve.bundle, the one writer of what serving reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from distrec.serve.bundle import atomic_write


def write_config(run_dir: Path, resolved: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "config.yaml", lambda p: p.write_text(yaml.safe_dump(resolved, sort_keys=False)))


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    append_record(run_dir / "metrics.jsonl", record)


def append_record(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: Path, after_epoch: int) -> None:
    """Drop the metrics.jsonl records of epochs after `after_epoch`: a resumed run redoes them
    (they were written after its checkpoint), and must not log them twice."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("epoch", 0) <= after_epoch]
    atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in keep)))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))
