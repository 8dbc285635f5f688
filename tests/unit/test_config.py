from pathlib import Path

import pytest

from distrec import config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_loads(path):
    cfg = config.load(path)
    assert cfg.model.levels[-1] == cfg.model.dim


def test_default_yaml_is_the_no_config_default():
    assert config.load(ROOT / "configs" / "default.yaml") == config.load(None)


def test_overrides_are_typed():
    cfg = config.load(None, ["train.lr=1e-3", "model.levels=[8,16]", "model.dim=16", "eval.ks=[5]", "eval.select_metric=ndcg@5",
                             "data.format=log", "data.train=/x.txt", "data.delimiter=tab"])
    assert cfg.train.lr == 0.001 and cfg.model.levels == (8, 16) and cfg.eval.ks == (5,) and cfg.data.delimiter == "\t"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.nope=1"], "unknown config key train.nope"),
        (["nope.x=1"], "unknown config key nope"),
        (["train.epochs=two"], "train.epochs must be int"),
        (["train.epochs=1.5"], "train.epochs must be int"),
        (["model.levels=[4,4,64]"], "strictly increasing"),
        (["model.levels=[0,64]"], "strictly increasing"),
        (["model.levels=[4,128]"], "must end at model.dim=64"),
        (["model.user_sharding=diagonal"], "model.user_sharding must be one of"),
        (["train.sampler=hard"], "train.sampler must be one of"),
        (["data.format=user_lines"], "needs data.train and data.test"),
        (["eval.select_metric=recall@7"], "eval.select_metric"),
        (["train"], "not of the form key=value"),
        (["model.router=sasrec"], "set model.num_interests=1"),
        (["model.router=sasrec", "model.num_interests=1", "model.num_heads=3"], "dividing model.dim=64"),
        (["model.router=sasrec", "model.num_interests=1", "model.dropout=1.0"], "model.dropout must be in"),
        (["model.dropout=-0.1"], "model.dropout must be in"),
        (["eval.valid_users=0"], "eval.valid_users must be positive"),
        (["model.router=capsule", "model.dropout=0.2"], "not capsule"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        config.load(None, overrides)


def test_dropout_defaults_per_router():
    assert config.load(None, ["model.router=sasrec", "model.num_interests=1"]).model.router_dropout == 0.2
    assert config.load(None, ["model.router=self_attentive"]).model.router_dropout == 0.0
    assert config.load(None, ["model.dropout=0.3"]).model.router_dropout == 0.3


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n  learning_rate: 0.1\n")
    with pytest.raises(config.ConfigError, match="train.learning_rate"):
        config.load(p)


def test_resolved_config_round_trips(tmp_path):
    import yaml

    cfg = config.load(ROOT / "configs" / "mrl4rec_phones.yaml", ["train.epochs=7"])
    again = config.build(config.Config, yaml.safe_load(yaml.safe_dump(config.to_dict(cfg))), "")
    assert again == cfg


def test_tasks_and_losses_must_match():
    with pytest.raises(config.ConfigError, match="model.task=multi_interest trains with train.loss=softmax"):
        config.load(None, ["model.task=multi_interest"])
    assert config.load(None, ["train.loss=softmax"]).train.loss == "softmax"  # MF with a softmax is fine
    with pytest.raises(config.ConfigError, match="data.format must be log"):
        config.load(None, ["model.task=multi_interest", "train.loss=softmax"])
    with pytest.raises(config.ConfigError, match="data.sequence.split"):
        config.load(None, ["data.sequence.split=[0.5,0.5,0.5]"])
