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


# The least a multi_interest config needs (the file is never read by load()).
MULTI = ["model.task=multi_interest", "train.loss=softmax", "data.format=log", "data.train=/x.txt"]


def test_dropout_defaults_per_router():
    assert config.load(None, [*MULTI, "model.router=sasrec", "model.num_interests=1"]).model.router_dropout == 0.2
    assert config.load(None, [*MULTI, "model.router=self_attentive"]).model.router_dropout == 0.0
    assert config.load(None, [*MULTI, "model.dropout=0.3"]).model.router_dropout == 0.3


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


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "search").glob("*.yaml")), ids=lambda p: p.name)
def test_every_search_space_fits_its_shipped_config(path):
    from distrec.experiments import search
    from distrec.experiments import search_space

    base = {"mf.yaml": "mrl4rec_phones.yaml", "mrl4rec.yaml": "mrl4rec.yaml", "mf_softmax.yaml": "mrl4rec_ml100k.yaml", "remi.yaml": "remi_video.yaml"}
    search_space.check(search_space.load(path), path.name, ROOT / "configs" / base[path.name], search.FORCED, search.RESERVED)


@pytest.mark.parametrize(
    "overrides, message",
    [  # cases users reported: each must be one error naming the key, before any data or epoch
        (["train.lr=nan"], "train.lr must be a finite number"),
        (["train.l2=.inf"], "train.l2 must be a finite number"),
        (["eval.chunk_mb=nan"], "eval.chunk_mb must be a finite number"),
        (["data.synthetic.popularity_exponent=nan"], "data.synthetic.popularity_exponent must be a finite number"),
        (["model.dim=63", "model.levels=[63]"], "model.dim must be a positive multiple of 4"),
        (["eval.select_metric=hitrate@20"], "model.task=mrl4rec computes recall and ndcg only"),
        (["model.level_weights=[1,1,-1,1,1]"], "model.level_weights must be >= 0"),
        (["model.level_weights=[0,0,0,0,0]"], "model.level_weights must be >= 0 with a positive sum"),
        (["train.dense_lr=0"], "train.dense_lr must be positive"),
        (["model.levels=[4,8"], "not valid YAML"),
    ],
)
def test_reported_bad_values_name_the_key(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(None, overrides)


def test_hitrate_is_fine_where_it_is_computed():
    assert config.load(None, [*MULTI, "eval.select_metric=hitrate@20"]).eval.select_metric == "hitrate@20"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.train=/x.txt"], "data.train is read by data.format=user_lines, log, parquet, recbole; this run has "
                                "data.format=synthetic: remove data.train"),
        (["data.format=log", "data.train=/x", "data.synthetic.preset=tiny"], "data.synthetic.preset is read by data.format=synthetic"),
        (["data.delimiter=tab"], "data.delimiter is read by data.format=log"),
        (["train.rr_lambda=3"], "train.rr_lambda is read by model.task=multi_interest; this run has model.task=mrl4rec: "
                                "remove train.rr_lambda (or set it to 0.0)"),
        (["model.num_interests=4"], None),  # the default: never an error
        (["model.num_interests=8"], "model.num_interests is read by model.task=multi_interest"),
        (["model.router=capsule"], "model.router is read by model.task=multi_interest"),
        (["train.loss=softmax", "train.sampler=dns"], "train.sampler is read by model.task=mrl4rec with train.loss=bpr or mrl"),
        (["train.sampler=uniform", "train.num_negs=4"], "train.num_negs is read by"),
        (["train.sampler=dns", "train.mns_pool=shared"], "train.mns_pool is read by"),
        (["train.num_sampled=100"], "train.num_sampled is read by train.loss=softmax"),
        (["train.ihn_beta=1"], "train.ihn_beta is read by train.loss=softmax"),
        (["train.optimizer=sgd", "train.eps=1e-6"], "train.eps is read by train.optimizer=row_wise_adagrad"),
        (["train.dense_lr=0.01"], "train.dense_lr is read by model.task=multi_interest"),
        (["eval.mask_history=false"], "eval.mask_history is read by model.task=multi_interest"),
        ([*MULTI, "train.l2=0.1"], "train.l2 is read by model.task=mrl4rec"),
        ([*MULTI, "train.refit=true"], "train.refit is read by model.task=mrl4rec"),
        ([*MULTI, "model.user_sharding=column_wise"], "model.user_sharding is read by model.task=mrl4rec"),
        ([*MULTI, "data.valid_fraction=0.2"], "data.valid_fraction is read by model.task=mrl4rec"),
        ([*MULTI, "model.num_blocks=3"], "model.num_blocks is read by model.task=multi_interest with model.router=sasrec"),
        (["data.format=log", "data.train=/x", "data.cold_test_users=drop"], "data.cold_test_users is read by"),
        (["data.format=log", "data.train=/x", "data.test=/y", "data.test_fraction=0.3"], "data.test_fraction is read by"),
        (["data.sequence.max_len=50"], "data.sequence.max_len is read by model.task=multi_interest"),
    ],
)
def test_a_key_the_run_does_not_read_is_an_error(overrides, message):
    if message is None:
        config.load(None, overrides)
        return
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config.load(None, overrides)


def test_what_the_run_does_anyway_is_accepted():
    # REMI has no L2 and no refit: asking for none is not a no-op. MF's softmax draws uniformly.
    cfg = config.load(None, [*MULTI, "train.l2=0", "train.refit=false", "train.gramian=0"])
    assert cfg.train.l2 == 0.0
    config.load(None, ["train.loss=softmax", "train.neg_distribution=uniform", "train.rr_lambda=0"])


def test_a_file_key_may_be_switched_off_by_an_override(tmp_path):
    # phones.yaml sets train.num_negs and train.mns_pool; `train.loss=softmax` (an override of what
    # decides them) makes them unused, as the user asked. Set by the same override, they are errors.
    phones = ROOT / "configs" / "mrl4rec_phones.yaml"
    assert config.load(phones, ["train.loss=softmax"]).train.loss == "softmax"
    assert config.load(ROOT / "configs" / "books.yaml", ["data.format=log", "data.train=/x"]).data.format == "log"
    with pytest.raises(config.ConfigError, match="train.num_negs is read by"):
        config.load(phones, ["train.loss=softmax", "train.num_negs=8"])
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  format: synthetic\n  train: /x.txt\n")
    with pytest.raises(config.ConfigError, match="data.train is read by"):
        config.load(p)
    assert config.load(p, check_unused=False).data.train == "/x.txt"


@pytest.mark.parametrize("name", ["mrl4rec_phones.yaml", "remi_video.yaml", "sasrec_video.yaml"])
def test_a_resolved_config_loads_as_a_config_file(name, tmp_path):
    # A run writes every key to config.yaml; `--config <run_dir>/config.yaml` must run it again.
    import yaml

    cfg = config.load(ROOT / "configs" / name, ["train.epochs=7"])
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(config.to_dict(cfg)))
    assert config.load(p) == cfg


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n  lr: [0.1\nmodel:\n  dim: 8\n")
    with pytest.raises(config.ConfigError, match=rf"{p}:\d+: not valid YAML"):
        config.load(p)


def test_every_key_has_a_meaning():
    # --help is generated from the comments in config.py: a new field must say what it means.
    def walk(cls, prefix):
        meanings = config.field_meanings(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                walk(f.default_factory, f"{prefix}{f.name}.")
            else:
                assert meanings.get(f.name), f"{prefix}{f.name} has no comment in distrec/config.py"

    import dataclasses

    walk(config.Config, "")
    lines = config.describe()
    assert any(line.strip().startswith("train.lr (float, 0.2): ") for line in lines)
    assert any(line.strip().startswith("data.synthetic.preset (str, small): ") and "tiny | small | books" in line for line in lines)
    assert all(not line.rstrip().endswith(":") for line in lines)


def test_every_used_key_exists():
    keys = {line.split(" (")[0].strip() for line in config.describe() if line.startswith("  ")}
    for use in config.USES:
        assert use.key in keys or any(k.startswith(use.key) for k in keys if use.key.endswith(".")), use.key
        assert all(d in keys for d in use.decided_by), use.key


def test_check_world(tmp_path):
    cfg = config.load(None, [f"run_dir={tmp_path}/r", "train.batch_size=1"])
    config.check_world(cfg, 1, "cpu")
    assert (tmp_path / "r").is_dir() and not list((tmp_path / "r").iterdir())  # the probe is gone
    with pytest.raises(config.ConfigError, match="train.batch_size=1 is the global batch, split over 2 ranks"):
        config.check_world(cfg, 2, "cpu")
    row_wise = config.load(None, [f"run_dir={tmp_path}/r", "model.item_sharding=row_wise"])
    with pytest.raises(config.ConfigError, match="model.item_sharding=row_wise needs a GPU with model.collection=bag"):
        config.check_world(row_wise, 1, "cpu")
    config.check_world(config.load(None, [f"run_dir={tmp_path}/r", "model.item_sharding=row_wise", "model.collection=sequence"]), 1, "cpu")
    config.check_world(row_wise, 1, "cuda")
    missing = config.load(None, [f"run_dir={tmp_path}/r", "data.format=log", f"data.train={tmp_path}/nope.txt"])
    with pytest.raises(config.ConfigError, match="data.train=.*nope.txt: no such file"):
        config.check_world(missing, 1, "cpu")
    (tmp_path / "file").write_text("")
    with pytest.raises(config.ConfigError, match="run_dir=.* is not writable"):
        config.check_world(config.load(None, [f"run_dir={tmp_path}/file/r"]), 1, "cpu")


def test_the_search_leaves_out_keys_a_point_does_not_read():
    from distrec.experiments import search

    point = {"train.sampler": "uniform", "train.num_negs": 8, "train.mns_pool": "shared", "train.lr": 0.1}
    kept = search._applicable(point, ROOT / "configs" / "mrl4rec_phones.yaml", search.FORCED)
    assert kept == {"train.sampler": "uniform", "train.lr": 0.1}
    config.load(ROOT / "configs" / "mrl4rec_phones.yaml", [*search.FORCED, "train.sampler=uniform", "train.lr=0.1"])


def test_a_config_files_data_paths_start_from_the_file_and_overrides_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "c.yaml").write_text("data:\n  format: user_lines\n  train: ../d/train.txt\n  test: /abs/test.txt\n")
    monkeypatch.chdir(tmp_path / "cfgs")  # anywhere but the file's directory's parent
    cfg = config.load(tmp_path / "cfgs" / "c.yaml")
    assert cfg.data.train == str(tmp_path / "d" / "train.txt") and cfg.data.test == "/abs/test.txt"
    cfg = config.load(tmp_path / "cfgs" / "c.yaml", ["data.test=t.txt"])
    assert cfg.data.test == str(tmp_path / "cfgs" / "t.txt") and cfg.data.train == str(tmp_path / "d" / "train.txt")
    # The shipped configs name ../../shared/data from configs/: the same files from any directory.
    phones = config.load(ROOT / "configs" / "mrl4rec_phones.yaml")
    assert phones.data.train == str((ROOT.parent / "shared" / "data" / "amazon-phones" / "train.txt").resolve())


def test_which_keys_a_run_reads_is_declared_beside_the_key():
    # A key declared with read_when is checked with no table to edit elsewhere: the declaration
    # is all config/reads.py needs, and the resulting error names the key and its setup.
    import dataclasses

    from distrec.config import reads, schema

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Section:
        knob: int = schema.read_when(schema.MULTI, 3, as_if=0)
        always: int = 1

    (use,) = reads._uses(Section, "train.")
    assert (use.key, use.decided_by, use.where, use.as_if) == ("train.knob", ("model.task",), "model.task=multi_interest", 0)
    declared = {u.key for u in config.USES}
    fields = {f"{s}.{f.name}" for s, cls in (("data", config.DataConfig), ("model", config.ModelConfig),
                                              ("train", config.TrainConfig), ("eval", config.EvalConfig))
              for f in dataclasses.fields(cls) if "read_when" in f.metadata}
    assert fields == {k.rstrip(".") for k in declared}
    with pytest.raises(config.ConfigError, match="train.mns_pool is read by .*train.sampler=mns"):
        config.load(None, ["train.sampler=uniform", "train.mns_pool=shared"])
