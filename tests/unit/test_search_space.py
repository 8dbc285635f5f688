"""search_space: parsing, one-line errors that name the key, and values that round-trip through config."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrec import config
from distrec.experiments import search_space
from distrec.experiments.search_space import SpaceError

ROOT = Path(__file__).resolve().parents[2]
# Each shipped space and the config it is meant for.
SPACES = {
    "mf.yaml": "configs/mrl4rec_phones.yaml",
    "mrl4rec.yaml": "configs/mrl4rec.yaml",
    "mf_softmax.yaml": "configs/mrl4rec_ml100k.yaml",
    "remi.yaml": "configs/remi_video.yaml",
}


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs" / "search").glob("*.yaml")))
def test_every_shipped_space_checks_against_its_config(name):
    space = search_space.load(ROOT / "configs" / "search" / name)
    search_space.check(space, name, ROOT / SPACES[name], [], ["train.refit"])


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return search_space.load(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.lr: {loguniform: [0.1, 1]}", "train.lr: must be one of"),
        ("train.lr: {log_uniform: [0, 1]}", "train.lr: log_uniform needs low > 0"),
        ("train.lr: {uniform: [1, 0.5]}", "train.lr: uniform needs numbers low < high"),
        ("eval.patience: {int: [2.5, 6]}", "eval.patience: int needs numbers low < high (integers)"),
        ("train.loss: {choice: []}", "train.loss: choice needs a non-empty list"),
        ("model.levels: {choice: [[4, 8]]}", "model.levels: choice values must be scalars"),
        ("- train.lr", "must map config keys to distributions"),
    ],
)
def test_bad_space_is_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(SpaceError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _space(tmp_path, text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train.lrr: {log_uniform: [0.1, 1]}", "space.yaml: train.lrr: unknown config key train.lrr"),
        ("train.sampler: {choice: [mns, nope]}", "train.sampler: train.sampler must be one of"),
        ("train.epochs: {uniform: [1, 5]}", "train.epochs: config key train.epochs must be int"),
        ("train.refit: {choice: [true, false]}", "train.refit: set by the search itself"),
        ("train.lr: {log_uniform: [0.1, 1]}", "train.lr: is both searched and fixed"),
    ],
)
def test_every_key_and_value_is_checked_against_the_config(tmp_path, text, message):
    space = _space(tmp_path, text)
    with pytest.raises(SpaceError, match=message):
        search_space.check(space, "space.yaml", None, ["train.lr=0.3"], ["train.refit"])


def test_overrides_read_back_as_the_same_values():
    point = {"train.lr": 1e-5, "train.l2": 0.25, "train.loss": "bpr", "train.num_negs": 8, "train.refit": True}
    cfg = config.load(None, search_space.to_overrides(point))
    assert (cfg.train.lr, cfg.train.l2, cfg.train.loss, cfg.train.num_negs, cfg.train.refit) == (1e-5, 0.25, "bpr", 8, True)
    assert search_space.to_override("x", "true") == 'x="true"'  # a string YAML would read as a bool stays a string
