"""python -m distrec.export: the serving bundle from a checkpoint equals the run's own, bit for bit.

Tiny runs (in this process, ~2 s each): synthetic MF and a string-id log without validation
(the last epoch is tested and exported, checkpoint/last holds it), multi-interest with
validation (the run exports its best epoch, checkpoint/best holds it), and one run on 2 gloo
ranks with column-wise item tables exported by one process. Then the Parquet copies against
the .npy tables, and the errors.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distrec import config, export, train
from distrec.nn import towers
from distrec.serve import bundle
from tests.dist.launch import run_ranks

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = ["data.synthetic.num_users=300", "data.synthetic.num_items=200", "data.synthetic.num_interactions=3000"]
TINY_MF = ["train.epochs=2", "model.dim=16", "model.levels=[4,8,16]", "eval.ks=[5,20]", "eval.select_metric=recall@20",
           "progress=false", "device=cpu", "train.checkpoint_every=1"]
NO_VALID = ["data.valid_fraction=0"]
TABLES = ("item_embeddings", "user_embeddings", "item_ids", "user_ids")


def write_string_log(path: Path, num_users: int = 60, num_items: int = 40, seed: int = 0) -> str:
    """A comma-separated log with string ids (`U0007`, `I0042`), as tests/unit/test_formats.py writes them."""
    rng = np.random.default_rng(seed)
    lines = [f"U{u:04d},I{i:04d}" for u in range(num_users) for i in rng.choice(num_items, size=rng.integers(4, 12), replace=False)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def multi_interest(log: str) -> list[str]:
    """tests/dist/test_multi_interest_dist.py's tiny REMI settings."""
    return [f"data.train={log}", "data.format=log", "data.delimiter=space", "model.task=multi_interest", "train.loss=softmax",
            "model.dim=16", "model.levels=[4,8,16]", "model.num_interests=3", "train.optimizer=sgd", "train.lr=0.5",
            "train.dense_optimizer=sgd", "train.dense_lr=0.5", "eval.ks=[5,10]", "eval.select_metric=recall@10",
            "data.sequence.max_len=6", "eval.chunk_mb=0.0005", "train.epochs=2", "train.checkpoint_every=1",
            "progress=false", "device=cpu"]


def write_space_log(path: Path, num_users: int = 40, num_items: int = 30, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = [f"{u} {i}" for u in range(num_users) for i in rng.integers(0, num_items, size=rng.integers(3, 12))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("export")
    log = write_string_log(tmp / "strings.csv")
    out = {"mf": tmp / "mf", "strings": tmp / "strings", "remi": tmp / "remi"}
    train.main([*SYNTHETIC, *TINY_MF, *NO_VALID, f"run_dir={out['mf']}"])
    train.main([*TINY_MF, *NO_VALID, "data.format=log", f"data.train={log}", f"run_dir={out['strings']}"])
    train.main([*multi_interest(write_space_log(tmp / "seq.txt")), f"run_dir={out['remi']}"])
    return out


def files(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run but its exports: (size, mtime)."""
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*")
            if p.is_file() and p.relative_to(run).parts[0] != "exports"}


def assert_same_bundle(a: Path, b: Path) -> None:
    """The same tables, ids, Parquet and interactions, bit for bit; manifests equal but for origin."""
    for name in TABLES:
        if (a / f"{name}.npy").exists() or (b / f"{name}.npy").exists():
            x, y = np.load(a / f"{name}.npy"), np.load(b / f"{name}.npy")
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    for name in ("items.parquet", "users.parquet", "interactions.parquet"):
        if (a / name).exists() or (b / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma.pop("origin")["written_by"] == "train" and mb.pop("origin")["written_by"] == "export"
    assert ma == mb


# ---------------------------------------------------------------- Parquet copies


@pytest.mark.parametrize("name", ["mf", "strings"])
def test_parquet_tables_equal_the_npy_tables_and_manifest(runs, name):
    emb = runs[name] / "embeddings"
    manifest = json.loads((emb / "manifest.json").read_text())
    for side in ("items", "users"):
        ids, table, meta = bundle.read_embedding_table(emb / manifest["parquet"][side])
        npy_ids = np.load(emb / manifest["ids"][side])
        npy = np.load(emb / manifest["tables"][side])
        assert table.dtype == np.float32 and table.tobytes() == npy.tobytes()
        assert ids.tolist() == npy_ids.tolist()
        assert {k: meta[k] for k in ("levels", "dim", "config_hash")} == {k: manifest[k] for k in ("levels", "dim", "config_hash")}
        if name == "strings":
            assert npy_ids.dtype.kind == "U" and npy_ids[0].startswith("U" if side == "users" else "I")


# ---------------------------------------------------------------- export == the run's own export


@pytest.mark.parametrize("name", ["mf", "strings"])
def test_export_of_the_last_checkpoint_equals_the_end_of_run_export(runs, name, capsys):
    run = runs[name]
    before = files(run)
    out = export.main(["--run", str(run), "--checkpoint", "last"])
    # In-process training (the fixture) and export, as in a notebook, leave no launcher variables
    # behind: a process started afterwards would take them for a rendezvous and fail on a port
    # this process once held (the suite is not run under a launcher).
    assert not [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ]
    assert out == run / "exports" / "last-epoch2"
    assert_same_bundle(run / "embeddings", out)
    origin = json.loads((out / "manifest.json").read_text())["origin"]
    assert origin["epoch"] == 2 and origin["kind"] == "last" and origin["checkpoint"] == str((run / "checkpoint" / "last").resolve())
    assert files(run) == before  # the run's checkpoints and outputs are untouched
    assert not [p for p in (run / "exports").iterdir() if p.name.startswith(".")]  # no temporary left
    printed = capsys.readouterr().out
    assert f"python -m distrec.retrieve --run {out} --dim 16 --k 100 --all" in printed


def test_multi_interest_best_checkpoint_exports_the_run_and_its_router(runs):
    run = runs["remi"]
    out = export.main(["--run", str(run)])  # default: checkpoint/best
    best_epoch = json.loads((run / "metrics.json").read_text())["best_epoch"]
    assert out == run / "exports" / f"best-epoch{best_epoch}"
    assert_same_bundle(run / "embeddings", out)  # no refit: the run exported its best epoch
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "multi_interest" and manifest["tables"]["users"] is None
    router = towers.build_router(manifest["encoder"]["router"])
    router.load_state_dict(torch.load(out / manifest["encoder"]["weights"]), strict=True)


def test_force_replaces_a_bundle_and_other_directories_are_refused(runs, tmp_path):
    run = runs["mf"]
    with pytest.raises(config.ConfigError, match="already holds an export .written by train.*--force"):
        export.main(["--run", str(run), "--out", str(run / "embeddings")])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(config.ConfigError, match="not an export"):
        export.main(["--run", str(run), "--out", str(tmp_path / "mine"), "--force"])
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    target = tmp_path / "bundle"
    shutil.copytree(run / "embeddings", target)
    (target / "stale.npy").write_bytes(b"")
    export.main(["--run", str(run), "--out", str(target), "--force"])
    assert not (target / "stale.npy").exists()  # replaced as a whole
    assert_same_bundle(run / "embeddings", target)


def test_moved_and_changed_data(runs, tmp_path):
    run = runs["strings"]
    resolved = torch.load(run / "checkpoint" / "last" / "loop.pt", weights_only=False)["extra"]["config"]
    log = Path(resolved["data"]["train"])
    moved = tmp_path / "moved.csv"
    shutil.copyfile(log, moved)
    log.rename(tmp_path / "away.csv")
    try:
        with pytest.raises(config.ConfigError, match=f"data.train={log}.*no such file.*data.train=NEW_PATH"):
            export.main(["--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "x")])
        out = export.main(["--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "x"), f"data.train={moved}"])
        assert_same_bundle(run / "embeddings", out)  # the manifest keeps the run's settings
        assert json.loads((out / "manifest.json").read_text())["origin"]["overrides"] == [f"data.train={moved}"]
        with moved.open("a") as f:
            f.write("U9999,I0001\nU9999,I0002\nU9999,I0003\nU9999,I0004\nU9999,I0005\n")
        with pytest.raises(config.ConfigError, match="was written for num_users=60, .* num_users=61"):
            export.main(["--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "y"), f"data.train={moved}"])
    finally:
        (tmp_path / "away.csv").rename(log)


def test_a_checkpoint_replaced_while_it_is_read_is_read_again(runs, tmp_path, monkeypatch):
    run = tmp_path / "copy"
    shutil.copytree(runs["mf"], run, ignore=shutil.ignore_patterns("exports"))
    real, reads = export.dcp.load, []

    def load(state, checkpoint_id):
        reads.append(checkpoint_id)
        if len(reads) == 1:  # a training job swaps a new checkpoint/last in meanwhile (a new loop.pt)
            loop = run / "checkpoint" / "last" / "loop.pt"
            (loop.parent / "new").write_bytes(loop.read_bytes())
            os.replace(loop.parent / "new", loop)
        return real(state, checkpoint_id=checkpoint_id)

    monkeypatch.setattr(export.dcp, "load", load)
    out = export.main(["--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "bundle")])
    assert len(reads) == 2
    assert_same_bundle(run / "embeddings", out)


# ---------------------------------------------------------------- 2 ranks written, 1 process reads


def _train(argv):
    return train.main(argv)


def test_two_rank_checkpoint_exported_by_one_process_equals_the_two_rank_export(tmp_path):
    run = tmp_path / "two"
    run_ranks(_train, 2, tmp_path, [*SYNTHETIC, *TINY_MF, *NO_VALID, "model.item_sharding=column_wise", f"run_dir={run}"])
    out = export.main(["--run", str(run), "--checkpoint", "last", "--out", str(tmp_path / "bundle")])
    assert_same_bundle(run / "embeddings", out)


# ---------------------------------------------------------------- the command line


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distrec.export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_errors_are_one_line_exit_2(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "config.yaml").write_text("run_dir: x\n")
    result = cli("--run", str(run), "--checkpoint", "last")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {run / 'checkpoint' / 'last'}: no complete checkpoint (no loop.pt); a run writes them with "
                     "train.checkpoint_every=N, checkpoint_every_steps=N or checkpoint_every_minutes=M"], result.stderr
    assert result.stdout == ""
    for args, message in ((["--run", str(run)], f"{run / 'checkpoint'}: no complete checkpoint .best or last."),
                          (["--run", str(tmp_path / "nowhere")], f"--run {tmp_path / 'nowhere'}: no such run directory"),
                          (["--run", str(run), "model.dim=8"], "only data.KEY=VALUE overrides")):
        with pytest.raises(config.ConfigError, match=message):
            export.main(args)
