"""The trainer's configuration: schema (`schema`), loading with overrides and validation
(`load`), trial identity (`identity`) and the one YAML reader (`yamlfile`).

The names below are the layer's public face: `from bilma.config import Config, load_config`.
"""

from bilma.config.identity import canonical, differences, trial_id
from bilma.config.load import (
    ConfigError,
    apply_values,
    describe_keys,
    dump_yaml,
    flatten,
    from_dict,
    load_config,
    load_yaml_chain,
    parse_override,
    suggest,
    to_dict,
    validate,
)
from bilma.config.schema import (
    LEAF_FIELDS,
    VALID_KEYS,
    Config,
    DataConfig,
    EvalConfig,
    LossConfig,
    MIMConfig,
    MLMConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    TrackingConfig,
    TrainConfig,
)
from bilma.config.yamlfile import safe_load_unique

__all__ = [
    "LEAF_FIELDS",
    "VALID_KEYS",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "MIMConfig",
    "MLMConfig",
    "ModelConfig",
    "OptimConfig",
    "PathsConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_values",
    "canonical",
    "describe_keys",
    "differences",
    "dump_yaml",
    "flatten",
    "from_dict",
    "load_config",
    "load_yaml_chain",
    "parse_override",
    "safe_load_unique",
    "suggest",
    "to_dict",
    "trial_id",
    "validate",
]
