"""The one typed config of distrec, in four parts, each importing only those before it:

    schema.py   the dataclass tree (Config and its sections), choices, ConfigError
    reads.py    which keys a run reads (a key the run would ignore is an error)
    load.py     YAML files and `a.b=value` overrides -> Config; to_dict
    checks.py   checks that need the launch: world size, device, run_dir, input files
    help.py     --help's key list, generated from the schema's comments

Callers import from here (`from distrec.config import Config`, `config.load(...)`).
Imports: stdlib, yaml.
"""

from distrec.config.checks import check_run_dir, check_sharding_device, check_world
from distrec.config.help import describe, field_meanings
from distrec.config.load import build, load, to_dict
from distrec.config.reads import USES, Use, get, unused, use_of
from distrec.config.schema import (
    CHOICES, DATA_FORMATS, LOSSES, METRICS, NAMED_COLUMN_FORMATS, OPTIMIZERS, RESUME_MODES, SAMPLERS,
    SHARDING_TYPES, SYNTHETIC_PRESETS, TIME_FORMATS, ColumnsConfig, Config, ConfigError, DataConfig, EvalConfig,
    ModelConfig, SequenceConfig, SyntheticConfig, TrainConfig,
)

__all__ = [
    "CHOICES", "DATA_FORMATS", "LOSSES", "METRICS", "NAMED_COLUMN_FORMATS", "OPTIMIZERS", "RESUME_MODES", "SAMPLERS",
    "SHARDING_TYPES", "SYNTHETIC_PRESETS", "TIME_FORMATS", "USES", "ColumnsConfig", "Config", "ConfigError",
    "DataConfig", "EvalConfig", "ModelConfig", "SequenceConfig", "SyntheticConfig", "TrainConfig", "Use", "build",
    "check_run_dir", "check_sharding_device", "check_world", "describe", "field_meanings", "get", "load", "to_dict",
    "unused", "use_of",
]
