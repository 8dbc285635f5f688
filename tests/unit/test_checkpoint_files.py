"""Checkpoint bookkeeping on disk: recovery from a write killed at any moment, and config diffs.
(The tables themselves round-trip in tests/dist/test_train_e2e.py.)"""

from pathlib import Path

import pytest

from distrec.config import ConfigError
from distrec.run import checkpoint


def _ckpt(path: Path, tag: str) -> None:
    path.mkdir(parents=True)
    (path / "shard.distcp").write_text(tag)
    (path / "loop.pt").write_text(tag)  # written last by save(): marks a complete checkpoint


def _tag(path: Path) -> str:
    return (path / "loop.pt").read_text()


def test_a_kill_between_the_two_renames_resumes_from_the_newer_checkpoint(tmp_path):
    last = tmp_path / "last"
    _ckpt(tmp_path / "last.old", "epoch 2")
    _ckpt(tmp_path / "last.tmp", "epoch 3")  # complete, but never renamed into place
    assert checkpoint.recover(last)
    assert _tag(last) == "epoch 3"


def test_a_kill_while_writing_keeps_the_previous_checkpoint(tmp_path):
    last = tmp_path / "last"
    _ckpt(last, "epoch 2")
    (tmp_path / "last.tmp").mkdir()
    (tmp_path / "last.tmp" / "shard.distcp").write_text("half")  # no loop.pt: incomplete
    assert checkpoint.recover(last)
    assert _tag(last) == "epoch 2"


def test_only_the_old_checkpoint_left_is_used(tmp_path):
    last = tmp_path / "last"
    _ckpt(tmp_path / "last.old", "epoch 2")
    (tmp_path / "last.tmp").mkdir()  # incomplete
    assert checkpoint.recover(last)
    assert _tag(last) == "epoch 2"


def test_nothing_to_recover(tmp_path):
    (tmp_path / "last.tmp").mkdir()
    assert not checkpoint.recover(tmp_path / "last")
    assert not checkpoint.complete(tmp_path / "last")


def test_an_incompatible_checkpoint_is_one_clear_error():
    saved = {"fingerprint": {"task": "mrl4rec", "dim": 64, "levels": [8, 64], "num_interests": 4, "num_users": 10,
                             "num_items": 20, "data": "abc"}}
    same = dict(saved["fingerprint"])
    checkpoint.check_compatible(Path("ck"), saved, same)
    for key, value in (("dim", 32), ("data", "def"), ("num_items", 21), ("levels", [4, 64])):
        with pytest.raises(ConfigError, match=f"written for {key}="):
            checkpoint.check_compatible(Path("ck"), saved, {**same, key: value})


def test_config_changes_name_every_changed_key():
    old = {"train": {"lr": 0.2, "epochs": 4, "sampler": "mns"}, "run_dir": "r"}
    new = {"train": {"lr": 0.1, "epochs": 4, "sampler": "dns"}, "run_dir": "r"}
    assert checkpoint.config_changes(old, new) == ["train.lr: 0.2 -> 0.1", "train.sampler: mns -> dns"]
