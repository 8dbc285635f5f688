"""The `python -m distrec.train` command line: --help, --print-config, and input errors as one
line with exit code 2, before any data is read or generated (also under torchrun)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distrec import config

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args, launcher=(sys.executable, "-m", "distrec.train"), env=None):
    return subprocess.run([*launcher, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


def test_help_lists_the_shipped_configs_and_every_key():
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    for path in (ROOT / "configs").glob("*.yaml"):
        assert f"configs/{path.name}: " in out.stdout
    for line in config.describe():
        assert line in out.stdout
    assert "--print-config" in out.stdout.splitlines()[0]


def test_print_config_is_the_resolved_config(tmp_path):
    out = run_cli("--config", "configs/mrl4rec_phones.yaml", "--print-config", "train.epochs=3", f"run_dir={tmp_path}/r")
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["train"]["epochs"] == 3 and resolved["data"]["format"] == "user_lines"
    assert config.build(config.Config, resolved, "") == config.load(ROOT / "configs" / "mrl4rec_phones.yaml",
                                                                    ["train.epochs=3", f"run_dir={tmp_path}/r"])
    assert not (tmp_path / "r").exists()  # printing runs nothing


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.lr=nan"], "config key train.lr must be a finite number"),
        (["model.dim=63"], "model.dim must be a positive multiple of 4"),
        (["eval.select_metric=hitrate@20"], "model.task=mrl4rec computes recall and ndcg only"),
        (["data.train=/x.txt"], "data.train is read by data.format=user_lines, log, parquet, recbole"),
        (["--config", "BAD_YAML"], "not valid YAML"),
        (["run_dir=UNWRITABLE"], "is not writable"),
        (["device=cuda"], "device=cuda, but no GPU is visible"),
        (["model.item_sharding=row_wise"], "model.item_sharding=row_wise needs a GPU with model.collection=bag"),
        (["--nope"], "unexpected argument '--nope'"),
    ],
)
def test_input_errors_are_one_line_and_exit_2(args, message, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [3\n")
    (tmp_path / "file").write_text("")
    args = [a.replace("BAD_YAML", str(bad)).replace("UNWRITABLE", str(tmp_path / "file" / "r")) for a in args]
    run_dir = [] if any(a.startswith("run_dir=") for a in args) else [f"run_dir={tmp_path}/r"]
    # No GPU visible, also on a GPU machine: the cuda and row-wise cases are about a CPU-only host.
    out = run_cli("data.synthetic.preset=tiny", "progress=false", *run_dir, *args, env={"CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert not (tmp_path / "r" / "data").exists()  # stopped before any data


def test_under_torchrun_rank_0_alone_says_it(tmp_path):
    # batch 1 on 2 ranks: known only once the world size is; still one line, and a non-zero exit.
    out = run_cli("-m", "distrec.train", "data.synthetic.preset=tiny", "train.batch_size=1", "progress=false",
                  f"run_dir={tmp_path}/r",
                  launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: train.batch_size=1 is the global batch, split over 2 ranks: it must be at least the "
                      "world size; set train.batch_size >= 2"], out.stderr
    assert not (tmp_path / "r" / "data").exists()
