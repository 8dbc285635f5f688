"""Write the serving bundle (embeddings, ids, Parquet copies, router, manifest) from any checkpoint of a run.

    python -m distrec.export --run RUN_DIR [--checkpoint best|last|PATH] [--out DIR] [--force] [data.KEY=VALUE ...]

A run exports its tables once, at its end (RUN_DIR/embeddings). This writes the same bundle,
file for file (serve.bundle.write), from a checkpoint: the best validation epoch, the
latest checkpoint of a run still training, one that was stopped or failed, or any saved
checkpoint directory. One CPU process of world size 1 rebuilds the run's data and model and
loads the checkpoint's tables and towers (DCP reshards whatever world size and sharding wrote
them; the optimizer state is not read, so a GPU run exports on a CPU machine).

  --checkpoint  `best` (the best validation epoch so far), `last` (the latest checkpoint), or a
                checkpoint directory. Default: best if the run has one, else last. A checkpoint
                left between the two renames of an interrupted save is read where it lies; one
                that a training job replaces while it is read is read again (the newer one).
  --out         Default RUN_DIR/exports/<checkpoint>-epoch<N>, N the epochs it completed (a mid-
                epoch checkpoint adds -batch<B>: B batches into the next).
                Written as a whole: into a hidden temporary directory beside it, renamed into
                place when complete. An existing bundle (one with a manifest.json, e.g. the
                end-of-run RUN_DIR/embeddings) is replaced only with --force; a non-empty
                directory that is not a bundle is never touched.
  data.KEY=VALUE  The run's data files moved: point at the new place (data.train=PATH). The
                checkpoint's data fingerprint still has to match.

The settings are the ones the checkpoint records (a checkpoint/best records none: those of the
run's checkpoint/last, else its config.yaml). The manifest's origin says
{"written_by": "export", "checkpoint": ..., "epoch": ...}. Nothing in the run directory is
modified besides the new export. A refit model (train.refit) is not checkpointed: only the
run's own end-of-run export holds it.

Errors (no such run, no complete checkpoint, a checkpoint of another model or data set, data
files that moved, an existing --out) are one line on stderr and exit status 2.
Imports: torch, distrec.config / distributed / run / serve / tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import yaml

from distrec import config, distributed
from distrec.config import ConfigError
from distrec.data import DataError
from distrec.run import checkpoint, rundir
from distrec.serve.manifest import ManifestError
from distrec.tasks import build_workload

ATTEMPTS = 3  # reads of a checkpoint that a running training job keeps replacing


def parse_args(argv: list[str]) -> argparse.Namespace:
    doc = __doc__.split("\n\n", 2)
    parser = argparse.ArgumentParser(
        prog="python -m distrec.export", description=doc[2].split("\n  --checkpoint")[0],
        epilog="options in detail:\n  --checkpoint" + doc[2].split("\n  --checkpoint", 1)[1].split("\nImports:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="the run directory (the run's run_dir)")
    parser.add_argument("--checkpoint", default=None, metavar="best|last|PATH",
                        help="which checkpoint (default: best if the run has one, else last)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where to write the bundle (default: RUN/exports/<checkpoint>-epoch<N>)")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="new places of the run's data files (data.train=PATH, data.test=PATH)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    """Export; returns the bundle's directory."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for item in args.overrides:
        if not item.startswith("data.") or "=" not in item:
            raise ConfigError(f"{item!r}: only data.KEY=VALUE overrides are accepted (new places of the run's data files)")
    run = Path(args.run)
    if not run.is_dir():
        raise ConfigError(f"--run {run}: no such run directory")
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError("python -m distrec.export runs as one process, not under a launcher (WORLD_SIZE="
                          f"{os.environ['WORLD_SIZE']})")
    kind, locate = _checkpoint(run, args.checkpoint)
    path = locate()
    stamp, extra = _stamp(path), checkpoint.read_loop(path)
    recorded = _recorded(run, path, extra)
    resolved = recorded.get("config") or _config_file(run, path)
    cfg = _rebuild_config(resolved, args.overrides)
    out = Path(args.out) if args.out else run / "exports" / _label(kind, run, path, extra)
    _check_out(out, args.force, run)

    env = distributed.init("cpu")
    try:
        work = build_workload(cfg, env, None)
        _check_fingerprint(path, recorded.get("fingerprint", {}), checkpoint.fingerprint(cfg, work))
        torch.manual_seed(0)  # the towers' initial weights, overwritten by the checkpoint
        model, _ = work.build()
        path, extra = _load(locate, path, stamp, extra, model)
        if not args.out:  # replaced by a newer one while read: name the export after the one read
            out = run / "exports" / _label(kind, run, path, extra)
            _check_out(out, args.force, run)
        epoch = _epoch(kind, run, path, extra)
        origin = {"written_by": "export", "checkpoint": str(path.resolve()), "kind": kind, "epoch": epoch}
        if kind != "best" and extra.get("batch"):
            origin["batch"] = extra["batch"]  # a mid-epoch checkpoint: `batch` batches of epoch `epoch + 1`
        if args.overrides:
            origin["overrides"] = list(args.overrides)
        # The run's own settings (not the CPU rebuild's) go into the manifest and config hash.
        _write(out, lambda tmp: work.write_bundle(model, env, out.parent, resolved=resolved, origin=origin, out_dir=tmp))
    finally:
        distributed.shutdown()

    levels = list(cfg.model.levels)
    where = "epoch unknown" if epoch is None else f"epoch {epoch}"
    if "batch" in origin:
        where += f" + {origin['batch']} batches"
    print(f"exported {path} ({where}) to {out}: {work.num_items} items"
          + (f", {work.num_users} users" if work.num_users else "") + f", dim {cfg.model.dim}, levels {levels}")
    print(f"retrieve from it: python -m distrec.retrieve --run {shlex.quote(str(out))} --dim {levels[-1]} --k 100 --all"
          f"  (--dim: any of {levels})")
    return out


# ------------------------------------------------------------------ which checkpoint, which settings


def _complete(path: Path) -> Path | None:
    """`path`, or the copy that checkpoint.recover would put back there, read where it lies."""
    for candidate in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        if checkpoint.complete(candidate):
            return candidate
    return None


def _checkpoint(run: Path, which: str | None):
    """(kind: "best" | "last" | the directory's name, a function finding the checkpoint now)."""
    ckpt = run / "checkpoint"
    how = "a run writes them with train.checkpoint_every=N, checkpoint_every_steps=N or checkpoint_every_minutes=M"
    if which is None:
        for name in ("best", "last"):
            if _complete(ckpt / name) is not None:
                return name, _finder(ckpt / name)
        raise ConfigError(f"{ckpt}: no complete checkpoint (best or last) to export; {how}")
    if which in ("best", "last"):
        if _complete(ckpt / which) is None:
            other = {"best": "last", "last": "best"}[which]
            hint = f" (checkpoint/{other} is there: --checkpoint {other})" if _complete(ckpt / other) else f"; {how}"
            raise ConfigError(f"{ckpt / which}: no complete checkpoint (no loop.pt){hint}")
        return which, _finder(ckpt / which)
    path = Path(which)
    if not checkpoint.complete(path):
        raise ConfigError(f"--checkpoint {path}: not a complete checkpoint (no loop.pt in it)")
    return ("best" if path.name.split(".")[0] == "best" else path.name), _finder(path)


def _finder(path: Path):
    def locate() -> Path:
        found = _complete(path)
        if found is None:
            raise ConfigError(f"{path}: the checkpoint is gone (removed while it was read: a new run in this run_dir?)")
        return found
    return locate


def _recorded(run: Path, path: Path, extra: dict) -> dict:
    """The loop state that holds this checkpoint's config and fingerprint: its own, or (a
    checkpoint/best, saved without one) that of the run's checkpoint/last."""
    if "config" in extra:
        return extra
    last = _complete(run / "checkpoint" / "last")
    return checkpoint.read_loop(last) if last is not None and last != path else {}


def _config_file(run: Path, path: Path) -> dict:
    file = rundir.live_file(run, "config.yaml")
    if not file.is_file():
        raise ConfigError(f"{path} records no settings and {run} has no config.yaml: not a distrec run directory?")
    return yaml.safe_load(file.read_text())


def _rebuild_config(resolved: dict, overrides: list[str]) -> config.Config:
    """The run's settings, for one CPU process: tables unsharded (table_wise), and a CPU
    optimizer in place of Adam (only the weights are loaded, never the optimizer state)."""
    model, train = resolved.get("model", {}), resolved.get("train", {})
    cpu = []
    for field in ("user_sharding", "item_sharding"):
        if model.get(field, "table_wise") != "table_wise":
            cpu.append(f"model.{field}=table_wise")
    if train.get("optimizer") == "adam":
        cpu.append("train.optimizer=row_wise_adagrad")
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.yaml"
        file.write_text(yaml.safe_dump(resolved, sort_keys=False))
        cfg = config.load(file, [*overrides, *cpu], check_unused=False)
    for key in ("data.train", "data.test"):
        value = config.get(cfg, key)
        if value is not None and cfg.data.format != "synthetic" and not Path(value).exists():
            raise ConfigError(f"{key}={value} (from the run's settings): no such file or directory; if the data "
                              f"moved, add {key}=NEW_PATH to the command")
    return cfg


def _check_fingerprint(path: Path, saved: dict, current: dict) -> None:
    for key in checkpoint.FINGERPRINT_KEYS:
        if key in saved and saved[key] != current[key]:
            hint = (" (the data files changed since the run: pass data.train=PATH for the data it was trained on)"
                    if key == "data" else "")
            raise ConfigError(f"{path} was written for {key}={saved[key]}, but the run's settings now give "
                              f"{key}={current[key]}: it cannot be exported with them{hint}")


def _stamp(path: Path) -> tuple | None:
    try:
        st = (path / "loop.pt").stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _load(locate, path: Path, stamp, extra: dict, model) -> tuple[Path, dict]:
    """Load the checkpoint's weights (tables and towers, not the optimizer) into `model`. A
    training job may replace checkpoint/last while it is read: then read the new one."""
    for _ in range(ATTEMPTS):
        failure = None
        try:
            state = {"model": model.state_dict()}
            with warnings.catch_warnings():  # DCP's notice that ShardedTensor is deprecated, at every read
                warnings.simplefilter("ignore", FutureWarning)
                dcp.load(state, checkpoint_id=str(path))  # in place, into this process's shards
            model.load_state_dict(state["model"])
        except Exception as err:  # noqa: BLE001 - reported in one line below, or retried
            failure = err
        if _stamp(path) == stamp:  # the same checkpoint from start to end
            if failure is None:
                return path, extra
            first = str(failure).strip().splitlines()[0] if str(failure).strip() else ""
            raise ManifestError(f"{path}: cannot be loaded into the run's model ({type(failure).__name__}: {first})") from None
        path = locate()
        stamp, extra = _stamp(path), checkpoint.read_loop(path)
    raise ManifestError(f"{path} was replaced {ATTEMPTS} times while it was read (a run writes it often): "
                        "try again, or export --checkpoint best")


def _epoch(kind: str, run: Path, path: Path, extra: dict) -> int | None:
    """The epoch whose weights the checkpoint holds (None when nothing says)."""
    if kind != "best":
        return extra.get("epoch")
    if "best" in extra:  # a best checkpoint saved at a preemption carries the loop state
        return extra["best"].get("epoch")
    last = _complete(run / "checkpoint" / "last")
    if last is not None and last != path:
        loop = checkpoint.read_loop(last)
        # checkpoint/best is saved before checkpoint/last of the same epoch; a newer best than
        # the last checkpoint is an improvement that last does not know about yet.
        if "best" in loop and (path / "loop.pt").stat().st_mtime_ns <= (last / "loop.pt").stat().st_mtime_ns:
            return loop["best"].get("epoch")
    if (run / "checkpoint" / "finished").exists() and (run / "metrics.json").is_file():
        return json.loads((run / "metrics.json").read_text()).get("best_epoch")
    return None


def _label(kind: str, run: Path, path: Path, extra: dict) -> str:
    epoch = _epoch(kind, run, path, extra)
    if epoch is None:
        return kind
    batch = extra.get("batch") if kind != "best" else 0
    return f"{kind}-epoch{epoch}" + (f"-batch{batch}" if batch else "")


# ------------------------------------------------------------------ writing


def _check_out(out: Path, force: bool, run: Path) -> None:
    """Refuse an --out that would overwrite something: a bundle without --force, any other
    non-empty directory, a file, or a place inside the checkpoints."""
    if out.resolve().is_relative_to((run / "checkpoint").resolve()):
        raise ConfigError(f"--out {out} is inside the run's checkpoints; choose another directory")
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if (out / "manifest.json").is_file():
        if not force:
            try:
                origin = json.loads((out / "manifest.json").read_text()).get("origin") or {}
            except (OSError, ValueError):
                origin = {}
            what = f" (written by {origin.get('written_by', '?')}, epoch {origin.get('epoch', '?')})" if origin else ""
            raise ConfigError(f"{out} already holds an export{what}: pass --force to replace it, or --out DIR")
    elif any(out.iterdir()):
        raise ConfigError(f"--out {out} is a non-empty directory that is not an export (no manifest.json); "
                          "choose an empty or new directory")


def _write(out: Path, write) -> None:
    """`write(tmp)` into a temporary directory beside `out`, then swap it in whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, DataError, ManifestError) as err:  # one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
