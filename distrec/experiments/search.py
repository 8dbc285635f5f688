"""Seeded hyper-parameter search over `distrec.train` runs, selected on validation only.

    python -m distrec.search --config configs/mrl4rec_phones.yaml --space configs/search/mf.yaml \\
        --trials 20 --nproc 1 --out runs/search_phones [key.sub=value ...]

Optuna's TPE sampler (seeded) proposes a point of the space file (`search_space.py`); each trial
is one `runner.launch` with `train.refit=false eval.track_test=false` forced, and its objective
is the run's best validation value `valid[<full dim>][<eval.select_metric>]`. Every validation
evaluation is reported to a median pruner as it is written, and a trial below the median of
earlier trials at the same epoch is stopped. Test metrics of trials are never read: after the
trials, one final run with the best point and `train.refit=true` (unless --no-refit) is the
only run whose test metrics are read. Writes to --out: trials.csv, trials.md, best.json,
best_overrides.txt, and one run directory per trial (trials/NNNN) plus final/.
Imports: config, runner, search_space, optuna, stdlib.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from distrec import config
from distrec.experiments import runner, search_space
from distrec.experiments.search_space import SpaceError

# Every trial runs with these; the search owns them, so a space may not search them. Refit and
# test tracking are off because a trial must see nothing of test; select_metric is the objective.
FORCED = ["train.refit=false", "eval.track_test=false"]
RESERVED = ["run_dir", "train.refit", "eval.track_test", "eval.select_metric"]
# The space searched when --space is not given: the knobs that matter for each task.
DEFAULT_SPACES = {"mrl4rec": runner.ROOT / "configs" / "search" / "mrl4rec.yaml",
                  "multi_interest": runner.ROOT / "configs" / "search" / "remi.yaml"}
HYPERBAND_MIN_EPOCHS = 4  # the smallest rung: a trial's first evaluations are too noisy to rank on
PRUNER_STARTUP_TRIALS = 5  # trials that run to the end before the median means anything
PRUNER_WARMUP_EPOCHS = 1  # a first evaluation is too noisy to stop on
STATES = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
          optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running"}


class TrialFailed(RuntimeError):
    """A trial's run exited without a validation result; the study records it and goes on."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m distrec.search", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="base YAML config (default: the built-in defaults)")
    p.add_argument("--space", default=None,
                   help="search space YAML (default: configs/search/mrl4rec.yaml or remi.yaml, by model.task)")
    p.add_argument("--trials", type=int, default=None, help="most trials (default 20; unlimited with --budget)")
    p.add_argument("--budget", type=parse_duration, default=None,
                   help="wall-clock budget for the whole search, final run included: 90s, 20m, 1.5h")
    p.add_argument("--valid-users", type=int, default=None,
                   help="trials score a fixed sample of this many validation users (eval.valid_users)")
    p.add_argument("--pruner", choices=("median", "hyperband", "none"), default=None,
                   help="stops weak trials early (default: hyperband with --budget, else median)")
    p.add_argument("--nproc", type=int, default=1, help="processes per run")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (each run keeps its config's train.seed)")
    p.add_argument("--no-refit", action="store_true", help="skip the final refit run (no test metrics)")
    p.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    p.add_argument("--timeout-s", type=float, default=None, help="stop a trial after this many seconds (failed)")
    p.add_argument("--verbose", action="store_true", help="show every run's own output")
    p.add_argument("overrides", nargs="*", help="key.sub=value, applied to every run")
    args = p.parse_args(argv)
    if args.trials is None and args.budget is None:
        args.trials = 20
    if (args.trials is not None and args.trials < 1) or args.nproc < 1:
        p.error("--trials and --nproc must be >= 1")
    if args.valid_users is not None and args.valid_users < 1:
        p.error("--valid-users must be >= 1")
    if args.no_prune:
        args.pruner = "none"
    args.pruner = args.pruner or ("hyperband" if args.budget else "median")
    return args


def parse_duration(text: str) -> float:
    """'90', '90s', '20m', '1.5h' -> seconds (a bare number is seconds)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (write e.g. 90s, 20m or 1.5h)") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"the budget must be positive, got {text!r}")
    return seconds


class Budget:
    """Wall-clock budget of a search: each trial may use what is left after the final run's share,
    and no trial starts that could not end in time. The final run (selection + refit on the best
    point) is reserved `final_share` x the longest complete trial (1.5 when the refit continues
    the selected model: its extra epochs, test, export and start-up; 2.5 when it retrains from
    scratch); half the budget until one completes."""

    def __init__(self, seconds: float | None, clock=time.monotonic, final_share: float = 1.5):
        self.seconds, self.clock, self.start = seconds, clock, clock()
        self.final_share = final_share
        self.longest = 0.0  # wall seconds of the longest complete trial

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (self.clock() - self.start)

    def reserve(self) -> float:
        if self.seconds is None:
            return 0.0
        return self.final_share * self.longest if self.longest else self.seconds / 2

    def trial_timeout(self) -> float | None:
        """Seconds the next trial may run (None: no budget); <= 0: start none."""
        return None if self.seconds is None else self.left() - self.reserve()

    def done(self, wall_seconds: float, complete: bool) -> None:
        if complete:
            self.longest = max(self.longest, wall_seconds)

    def exhausted(self) -> bool:
        """No further trial fits: less left than a tenth of the longest trial (or 5 s)."""
        timeout = self.trial_timeout()
        return timeout is not None and timeout < max(5.0, 0.1 * self.longest)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the search; returns what best.json holds."""
    args = parse_args(argv)
    budget = Budget(args.budget)  # the clock starts before any data or config is read
    config_path = runner.resolve_path(args.config) if args.config else None
    forced = [*FORCED, *([f"eval.valid_users={args.valid_users}"] if args.valid_users else [])]
    base = config.load(config_path, [*args.overrides, *forced])  # the base config alone must load
    if config.use_of("train.refit").reads(base) and base.train.refit_from == "scratch":
        # The final run trains twice: selection, then a fresh refit; beside it in one process
        # with 2+ threads (train.refit_alongside), in 1.2-1.3x a trial's time on Phones.
        alongside = base.train.refit_alongside == "auto" and args.nproc == 1 and torch.get_num_threads() >= 2
        budget.final_share = 1.5 if alongside else 2.5
    space_arg = args.space or str(DEFAULT_SPACES[base.model.task])
    space_path = runner.resolve_path(space_arg)
    space = search_space.load(space_path)
    search_space.check(space, space_arg, config_path, [*args.overrides, *forced], RESERVED)
    if not _has_validation(base):
        raise config.ConfigError("the search selects on validation, but this config holds no validation split "
                                 "(data.valid_fraction or data.sequence.split[1] is 0)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metric = base.eval.select_metric

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial below instead
    if args.pruner == "hyperband":  # successive halving over epochs, several brackets
        pruner = optuna.pruners.HyperbandPruner(min_resource=min(HYPERBAND_MIN_EPOCHS, base.train.epochs),
                                                max_resource=base.train.epochs, reduction_factor=3)
    elif args.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed), pruner=pruner)
    # The config's own point is the first trial (when the space holds it), so that the search
    # starts from the shipped settings and can only end at or above them on validation.
    own = {p.key: config.get(base, p.key) for p in space}
    if all(p.holds(own[p.key]) for p in space):
        study.enqueue_trial(own)

    def objective(trial: optuna.Trial) -> float:
        point = search_space.suggest(space, trial)
        try:
            # A searched key that this point's setup does not read (train.mns_pool where the point
            # has train.sampler=dns) is left out of its run, which would refuse it as unused.
            point = _applicable(point, config_path, [*args.overrides, *forced])
            overrides = [*args.overrides, *search_space.to_overrides(point), *forced]
            cfg = config.load(config_path, overrides)  # a point can break a rule that spans keys
        except config.ConfigError as err:
            trial.set_user_attr("error", str(err))
            raise TrialFailed(str(err)) from None
        dim = str(cfg.model.levels[-1])

        def on_metrics(record: dict[str, Any]) -> bool:
            if record.get("phase") != "select" or "valid" not in record:
                return False
            trial.report(record["valid"][dim][metric], record["epoch"])
            return trial.should_prune()

        limits = [t for t in (args.timeout_s, budget.trial_timeout()) if t is not None]
        run = runner.launch(config_path, overrides, args.nproc, out / "trials" / f"{trial.number:04d}",
                            timeout_s=min(limits) if limits else None, on_metrics=on_metrics, echo=args.verbose)
        trial.set_user_attr("wall_seconds", run.wall_seconds)
        trial.set_user_attr("epochs_run", max((r["epoch"] for r in run.records), default=0))
        budget.done(run.wall_seconds, complete=run.ok and run.stopped_by is None)
        if run.stopped_by == "callback":
            raise optuna.TrialPruned()
        if run.stopped_by == "timeout" and budget.exhausted() and any("valid" in r for r in run.records):
            trial.set_user_attr("error", "stopped by the search budget")
            raise optuna.TrialPruned()  # its reports stand, as a pruned trial's do
        if not run.ok or run.metrics.get("valid") is None:
            why = "timed out" if run.stopped_by == "timeout" else f"exit code {run.returncode}"
            last = run.stderr_tail.strip().splitlines()[-1:] or [""]
            trial.set_user_attr("error", f"{why}: {last[0]}")
            raise TrialFailed(trial.user_attrs["error"])
        # The objective: the best validation epoch's value. Only "valid" and "best_epoch" are read.
        trial.set_user_attr("best_epoch", run.metrics["best_epoch"])
        return float(run.metrics["valid"][dim][metric])

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        print(_trial_line(trial, metric), flush=True)
        write_tables(out, study.trials, [p.key for p in space], metric)
        if budget.exhausted():
            study.stop()

    if not budget.exhausted():
        study.optimize(objective, n_trials=args.trials, catch=(TrialFailed,), callbacks=[after_trial])
    write_tables(out, study.trials, [p.key for p in space], metric)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise SystemExit(f"error: no trial completed; see {out / 'trials.md'} and the trials' stderr.log")
    best = study.best_trial
    best_overrides = search_space.to_overrides(
        _applicable({p.key: best.params[p.key] for p in space}, config_path, [*args.overrides, *FORCED]))
    (out / "best_overrides.txt").write_text("\n".join(best_overrides) + "\n")
    print(f"best: trial {best.number}, valid {metric} {best.value:.4f}: {' '.join(best_overrides)}", flush=True)

    final = None
    if not args.no_refit:
        # The one run whose test metrics are read: the chosen point, refit on train + validation.
        # REMI has no refit (train.refit is read by model.task=mrl4rec only): it tests the selected model.
        refit = ["train.refit=true"] if config.use_of("train.refit").reads(base) else []
        left = budget.left()
        run = runner.launch(config_path, [*args.overrides, *best_overrides, *refit, "eval.track_test=false"],
                            args.nproc, out / "final", timeout_s=None if math.isinf(left) else max(left, 1.0),
                            echo=args.verbose)
        # "refit" is the run's own word: REMI runs ignore train.refit today and test the selected model.
        final = {"test": run.metrics["test"] if run.ok else None, "refit": run.metrics.get("refit") if run.ok else None,
                 "wall_seconds": run.wall_seconds, "returncode": run.returncode, "run_dir": str(run.run_dir), "command": shlex.join(run.command)}
        if not run.ok:
            final["stderr_tail"] = run.stderr_tail
    result = {
        "params": best.params, "overrides": best_overrides, "trial": best.number,
        "valid": {"metric": metric, "value": best.value, "best_epoch": best.user_attrs.get("best_epoch")},
        "final": final,
        "study": {"sampler": f"TPE(seed={args.seed})", "pruner": args.pruner,
                  "trials": len(study.trials), **_counts(study.trials),
                  "budget_seconds": args.budget, "seconds": budget.clock() - budget.start,
                  "valid_users": args.valid_users},
        "config": str(config_path) if config_path else None, "space": str(space_path),
        "command": shlex.join([sys.executable, "-m", "distrec.experiments.search", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_text(out / "best.json", json.dumps(result, indent=2) + "\n")
    if final is not None:
        if final["test"] is None:
            why = "ran out of the budget" if run.stopped_by == "timeout" else f"failed (exit code {final['returncode']})"
            raise SystemExit(f"error: the final refit run {why}; see {out / 'final'}")
        dim = max(final["test"], key=int)
        print(f"final refit run: test@{dim} {metric} {final['test'][dim][metric]:.4f} in {final['wall_seconds']:.0f} s")
    print(f"search outputs in {out}")
    return result


def _applicable(point: dict[str, Any], config_path: Path | None, overrides: list[str]) -> dict[str, Any]:
    """`point` without the searched keys that its own setup does not read (config.unused)."""
    full = config.load(config_path, [*overrides, *search_space.to_overrides(point)], check_unused=False)
    return {key: value for key, value in point.items() if config.unused(full, key) is None}


def _has_validation(cfg: config.Config) -> bool:
    if cfg.model.task == "multi_interest":
        return cfg.data.sequence.split[1] > 0
    return cfg.data.valid_fraction > 0


def _counts(trials: list[optuna.trial.FrozenTrial]) -> dict[str, int]:
    states = [STATES.get(t.state, "other") for t in trials]
    return {name: states.count(name) for name in ("complete", "pruned", "failed")}


def _trial_line(trial: optuna.trial.FrozenTrial, metric: str) -> str:
    state = STATES.get(trial.state, str(trial.state))
    value = f"valid {metric} {trial.value:.4f}" if trial.value is not None else trial.user_attrs.get("error", "")
    wall = trial.user_attrs.get("wall_seconds", math.nan)
    params = " ".join(search_space.to_overrides(trial.params))
    return f"trial {trial.number} {state} after {trial.user_attrs.get('epochs_run', 0)} epochs, {wall:.0f} s: {value} | {params}"


def table_rows(trials: list[optuna.trial.FrozenTrial], keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial: number, state, each searched key, validation value, best epoch, wall seconds."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": STATES.get(t.state, str(t.state))}
        row.update({key: t.params.get(key) for key in keys})
        row.update(value=t.value, best_epoch=t.user_attrs.get("best_epoch"), epochs_run=t.user_attrs.get("epochs_run"),
                   wall_seconds=t.user_attrs.get("wall_seconds"), error=t.user_attrs.get("error"))
        rows.append(row)
    return rows


def write_tables(out: Path, trials: list[optuna.trial.FrozenTrial], keys: list[str], metric: str) -> None:
    """trials.csv and trials.md, rewritten after every trial so an interrupted search keeps its table."""
    rows = table_rows(trials, keys)
    columns = ["number", "state", *keys, "value", "best_epoch", "epochs_run", "wall_seconds", "error"]
    tmp = out / "trials.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    os.replace(tmp, out / "trials.csv")
    header = ["trial", "state", *keys, f"valid {metric}", "best epoch", "epochs run", "wall s", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        value = _cell(row["value"], ".4f")
        if value and row["state"] != "complete":  # a pruned trial's value is its last report, not its best
            value = f"({value})"
        cells = [row["number"], row["state"], *(_cell(row[k]) for k in keys), value,
                 _cell(row["best_epoch"]), _cell(row["epochs_run"]), _cell(row["wall_seconds"], ".0f"),
                 (row["error"] or "").replace("|", "/")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", f"valid {metric}: the best validation epoch's value at the full dimension; "
              "in parentheses, a pruned trial's last value before it was stopped."]
    _write_text(out / "trials.md", "\n".join(lines) + "\n")


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float) and not spec:
        return f"{value:.4g}"
    return format(value, spec)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cli() -> None:
    """`python -m distrec.search`: main() with one-line errors for bad input."""
    try:
        main()
    except (config.ConfigError, SpaceError) as err:  # one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    cli()
