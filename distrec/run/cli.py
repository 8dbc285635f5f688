"""The command line of `python -m distrec.train`: arguments, --help, and the one-line report of
an input error. Imports: stdlib, distrec.config.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from distrec import config

USAGE = "usage: python -m distrec.train [--config configs/NAME.yaml] [--print-config] [key.sub=value ...]"
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TRAIN = ROOT / "distrec" / "train.py"


def help_text() -> str:
    """--help: usage, the shipped configs and every key, generated from distrec/config/schema.py."""
    shipped = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        shipped.append(f"  configs/{path.name}: {first}")
    return "\n".join([
        USAGE, "",
        "Without --config the built-in defaults (configs/default.yaml) are used; each key.sub=value",
        "override (a YAML value: lists as [4,8,16]) is applied on top. Every value is checked before",
        "any data is read; a key that this run would not read (e.g. data.train with",
        "data.format=synthetic) is an error. --print-config prints the resolved config and exits.", "",
        "shipped configs:", *shipped, "",
        "keys (type, default): meaning [choices]:", *config.describe(),
    ])


def parse_args(argv: list[str]) -> tuple[str | None, list[str], bool]:
    """`--config PATH`, `--print-config` and dotted overrides. A leading path to this very
    script is ignored: the users' `torchx run ... dist.ddp -j 1x8 distrec/train.py` passes it
    as an argument."""
    args = list(argv)
    if args and args[0].endswith(".py") and Path(args[0]).resolve() == TRAIN:
        args = args[1:]
    path = None
    overrides = []
    print_config = False
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            print(help_text())
            raise SystemExit(0)
        if arg == "--print-config":
            print_config = True
        elif arg == "--config":
            if not args:
                raise config.ConfigError("--config needs a path")
            path = args.pop(0)
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise config.ConfigError(f"unexpected argument {arg!r} (--help lists every key); {USAGE}")
    return path, overrides, print_config


def report_input_error(err: Exception) -> None:
    """One line on stderr, from rank 0 only (every rank checks the same input). Under torchrun,
    also into the worker's error file, so that the launcher's failure summary (which it always
    prints for a non-zero exit) names the cause instead of "To enable traceback see ..."."""
    if os.environ.get("RANK", "0") != "0":
        return
    line = f"error: {err}"
    print(line, file=sys.stderr)
    if os.environ.get("TORCHELASTIC_ERROR_FILE"):
        info = {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}
        try:
            Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps({"message": info}))
        except OSError:
            pass
