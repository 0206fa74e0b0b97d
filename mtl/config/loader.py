"""The one place that reads YAML: defaults, `key.sub=value` overrides, validation up front.

    cfg = load_config("configs/default.yaml", ["trainer.max_epochs=1", "tasks.sentiment=null"])

Every key has a default; an unknown key, a wrong type or a bad choice is a `ConfigError` naming
the key (and the close spelling when there is one) before any work starts.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml
from box import Box

from mtl.config.names import check_names
from mtl.config.numbers import check_fold_and_device_lists, check_number_lists
from mtl.config.schema import DEFAULTS
from mtl.config.validate import check_tasks, check_tree, merge
from mtl.errors import ConfigError
from mtl.io import write_text

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true / false). YAML 1.1 also reads yes, no, on,
    off, y and n as booleans, which would turn class names like `[NOT, OFF]` into `['NOT', False]`
    and `run.name: off` into False; with this loader they stay the strings that were written."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def yaml_load(text: str):
    """Parse YAML text the way every mtl config is parsed (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Box:
    """Read YAML, apply overrides, validate, fill defaults. Returns a fully resolved `Box`."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        _apply_override(raw, item)
    return Box(_checked(raw), box_dots=False, default_box=False)


def save_config(cfg: Box | dict, path: str | Path) -> Path:
    return write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def to_dict(cfg: Box | dict) -> dict:
    return cfg.to_dict() if isinstance(cfg, Box) else copy.deepcopy(dict(cfg))


def config_from_dict(data: dict) -> Box:
    """Rebuild a config stored in a checkpoint or run folder, validating it like a user file."""
    return Box(_checked(copy.deepcopy(data), stored=True), default_box=False)


def _checked(raw: dict, stored: bool = False) -> dict:
    """Every key checked, defaults filled in, then the checks across keys. `stored`: a config
    saved with a run or checkpoint (mtl/config/names.py::check_names)."""
    check_tree(raw, DEFAULTS, prefix="")
    cfg = merge(copy.deepcopy(DEFAULTS), raw)
    check_tasks(cfg)
    check_number_lists(cfg)
    check_fold_and_device_lists(cfg)
    check_names(cfg, stored=stored)
    return cfg


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(
            f"Config file not found: {path}. Pass an existing YAML file with --config."
        )
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file {path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of keys, got {type(data).__name__}."
        )
    return data


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(
            f"Override '{item}' is not of the form key.sub=value (e.g. trainer.max_epochs=1)."
        )
    try:
        value = yaml_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if value is None and len(parts) == 2 and parts[0] == "tasks":
        node.pop(parts[-1], None)  # tasks.sentiment=null drops a task
        return
    node[parts[-1]] = value
