"""Config: the one place that reads YAML (loader), every key's default (schema), the checks (validate)."""

from mtl.config.loader import (
    DEFAULT_CONFIG,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
    yaml_load,
)
from mtl.config.schema import DEFAULTS, TASK_DEFAULTS

__all__ = [
    "DEFAULTS",
    "DEFAULT_CONFIG",
    "TASK_DEFAULTS",
    "config_from_dict",
    "load_config",
    "save_config",
    "to_dict",
    "yaml_load",
]
