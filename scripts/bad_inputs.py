"""Run `python -m distrec.train` on a fixed set of bad configs and data files and sort the outcomes.

    .venv/bin/python scripts/bad_inputs.py            # docs/reliability.md, "Bad inputs through the command line"

Each case is one command line on the `tiny` preset or on small files this script writes. An
outcome is `clean` (exit code 2, exactly one line on stderr, no traceback), `ok` (exit 0: the
input was accepted; the case list says which of those are legitimate), `traceback`, or
`rc<N>/<lines>` (anything else). Prints one line per case and a JSON summary.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCEPTED = {"levels_scalar": "one level, equal to model.dim: a valid model",
            "ul_test_unknown": "3 test pairs all on untrained items: under 10 pairs, warned about, not refused"}


def write_files(S: Path) -> None:
    rng = random.Random(0)
    (S / "train.txt").write_text("\n".join(f"{u} " + " ".join(str(i) for i in rng.sample(range(50), 8)) for u in range(60)) + "\n")
    (S / "test.txt").write_text("\n".join(f"{u} " + " ".join(str(i) for i in rng.sample(range(50), 2)) for u in range(60)) + "\n")
    files = {
        "empty.txt": b"", "garbage.bin": bytes(range(256)) * 4, "header_only.csv": b"user,item\n",
        "neg.txt": b"0 1 2\n1 -3 4\n", "huge.txt": b"0 1234567890123456789012 3\n", "ws.txt": b"   \n\t\n  \n",
        "utf16.txt": "0 1 2\n1 2 3\n".encode("utf-16"), "bom.txt": b"\xef\xbb\xbf0 1 2 3\n1 2 3 4\n2 3 4 5\n",
        "crlf_log.csv": b"u,i\r\n1,2\r\n1,3\r\n2,3\r\n2,4\r\n", "onecol.txt": b"1\n2\n3\n",
        "floats.csv": b"1.5,2\n2,3\n", "nul.txt": b"0 1\x00 2\n", "test_unknown_items.txt": b"0 999 998\n1 997\n",
    }
    for name, data in files.items():
        (S / name).write_bytes(data)
    (S / "adir").mkdir(exist_ok=True)


def main() -> None:
    S = Path(tempfile.mkdtemp(prefix="distrec_bad_inputs_"))
    write_files(S)
    base = ["data.synthetic.preset=tiny", "train.epochs=1", "progress=false"]
    ul = lambda tr, te: ["data.format=user_lines", f"data.train={S}/{tr}", f"data.test={S}/{te}", "train.epochs=1", "progress=false"]  # noqa: E731
    log = lambda f: ["data.format=log", f"data.train={S}/{f}", "train.epochs=1", "progress=false"]  # noqa: E731
    cases = {
     "epochs0": base + ["train.epochs=0"], "batch0": base + ["train.batch_size=0"], "levels_dec": base + ["model.levels=[8,4,64]"],
     "levels_big": base + ["model.levels=[4,8,128]"], "levels_empty": base + ["model.levels=[]"], "dim0": base + ["model.dim=0"],
     "ks0": base + ["eval.ks=[0]"], "ks_empty": base + ["eval.ks=[]"], "patience0": base + ["eval.patience=0"],
     "valid_users0": base + ["eval.valid_users=0"], "negs0": base + ["train.num_negs=0"], "test_frac1": base + ["data.test_fraction=1.0"],
     "valid_neg": base + ["data.valid_fraction=-0.1"], "device_tpu": base + ["device=tpu"], "run_dir_empty": base + ["run_dir="],
     "run_dir_proc": base + ["run_dir=/proc/x/y"], "lr_neg": base + ["train.lr=-1"], "opt_foo": base + ["train.optimizer=foo"],
     "shard_foo": base + ["model.item_sharding=foo"], "format_foo": base + ["data.format=foo"], "unknown": base + ["x.y=1"],
     "epochs_abc": base + ["train.epochs=abc"], "noconfig": ["--config", "/nonexistent.yaml"], "config_missing_arg": ["--config"],
     "bare": base + ["foo"], "seed_float": base + ["train.seed=1.5"], "levels_scalar": base + ["model.levels=4", "model.dim=4"],
     "lw_len": base + ["model.level_weights=[1,1]"], "syn_users1": base + ["data.synthetic.num_users=1"],
     "syn_items1": base + ["data.synthetic.num_items=1"], "syn_inter5": base + ["data.synthetic.num_interactions=5"],
     "syn_toofew": base + ["data.synthetic.num_users=1000", "data.synthetic.num_interactions=100"],
     "ul_empty": ul("empty.txt", "test.txt"), "ul_garbage": ul("garbage.bin", "test.txt"), "ul_neg": ul("neg.txt", "test.txt"),
     "ul_huge": ul("huge.txt", "test.txt"), "ul_ws": ul("ws.txt", "test.txt"), "ul_utf16": ul("utf16.txt", "test.txt"),
     "ul_bom": ul("bom.txt", "test.txt"), "ul_onecol": ul("onecol.txt", "test.txt"), "ul_nul": ul("nul.txt", "test.txt"),
     "ul_dir": ul("adir", "test.txt"), "ul_test_unknown": ul("train.txt", "test_unknown_items.txt"), "ul_same": ul("train.txt", "train.txt"),
     "log_header_only": log("header_only.csv"), "log_floats": log("floats.csv"), "log_crlf_tiny": log("crlf_log.csv"),
     "log_garbage": log("garbage.bin"), "remi_synth": base + ["model.task=multi_interest", "train.loss=softmax"],
     "remi_tiny_log": log("crlf_log.csv") + ["model.task=multi_interest", "train.loss=softmax"],
     "parquet_txt": ["data.format=parquet", f"data.train={S}/train.txt", "train.epochs=1", "progress=false"],
     "recbole_txt": ["data.format=recbole", f"data.train={S}/train.txt", "train.epochs=1", "progress=false"],
     "ckpt_nan": base + ["train.checkpoint_every_minutes=nan"], "ckpt_neg": base + ["train.checkpoint_every_steps=-1"],
     "resume_foo": base + ["train.resume=foo"], "must_nockpt": base + ["train.resume=must"],
    }
    res = {}
    for name, args in cases.items():
        extra = [] if args[:1] == ["--config"] or any(a.startswith("run_dir=") for a in args) else [f"run_dir={S}/runs/{name}"]
        p = subprocess.run([sys.executable, "-m", "distrec.train", *args, *extra], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
        err = p.stderr.strip().splitlines()
        if "Traceback" in p.stderr:
            kind = "traceback"
        elif p.returncode == 2 and len(err) == 1:
            kind = "clean"
        else:
            kind = "ok" if p.returncode == 0 else f"rc{p.returncode}/{len(err)}lines"
        res[name] = kind
        note = f"  [{ACCEPTED[name]}]" if kind == "ok" and name in ACCEPTED else ""
        print(f"{name:22s} {kind:10s} {err[-1][:140] if err else ''}{note}", flush=True)
    summary = {k: sum(v == k for v in res.values()) for k in sorted(set(res.values()))}
    summary["accepted_not_listed_as_legitimate"] = sorted(k for k, v in res.items() if v == "ok" and k not in ACCEPTED)
    print(json.dumps({"cases": len(res), **summary}))


if __name__ == "__main__":
    main()
