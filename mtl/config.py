"""The one place that reads YAML: defaults, `key.sub=value` overrides, validation up front.

    cfg = load_config("configs/default.yaml", ["trainer.max_epochs=1", "tasks.sentiment=null"])

Every key has a default; an unknown key, a wrong type or a bad choice is a `ConfigError` naming
the key (and the close spelling when there is one) before any work starts.
"""

from __future__ import annotations

import codecs
import copy
import difflib
import math
import re
from pathlib import Path
from typing import Any

import yaml
from box import Box

from mtl.data.sampling import SAMPLING_MODES
from mtl.data.tasks import TASK_TYPES
from mtl.errors import ConfigError
from mtl.io import write_text
from mtl.model.network import HEADS, POOLINGS
from mtl.model.optim import ADAMW_IMPLS, SCHEDULERS
from mtl.model.weighting import WEIGHTINGS
from mtl.run.blend import BLEND_METHODS

DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "run": {"name": "default", "output_dir": "checkpoints"},
    "data_dir": ".",
    "backbone": {
        "name": "minilm",  # the packaged offline all-MiniLM-L6-v2; or any HF id / local path
        "pooling": "cls",
        "dropout": 0.2,
        "head": "linear",
        "head_hidden": 256,
        "gradient_checkpointing": False,
        "attn_implementation": "sdpa",
        "freeze_embeddings": False,  # the word-embedding matrix: out of the optimizer and clipping
    },
    "tasks": {},
    "loss_weighting": "uncertainty",
    # task_loss_norm: "batch" = each task's loss is the mean over its rows in the batch;
    # "expected" (default, docs/RESULTS.md) = its summed loss / its expected rows per batch
    # (every row weighs the same however many rows of its task a batch holds)
    "weighting": {"log_var_clamp": 5.0, "dwa_temperature": 2.0, "task_loss_norm": "expected"},
    "sampling": {"mode": "proportional", "temperature": 2.0, "length_grouping": True},
    "data": {
        "max_length": 128,
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_workers": 0,
        "preprocess": None,
        "on_bad_rows": "error",
        "max_dropped_fraction": 0.1,  # on_bad_rows=drop refuses to drop more of a file
        "val_fraction": 0.1,  # held out of a training file: the selection slice / a missing val set
        "drop_overlap": False,  # drop val / test rows whose text also occurs in training
        "cache_dir": None,
        "max_train_rows": None,  # int: a seeded random subset of each task's training file
        "max_eval_rows": None,  # int: a seeded random subset of each task's val file
    },
    # selection: "best" = the best epoch on selection rows (the fold's rows in k-fold, a held-out
    # data.val_fraction of the training rows with one split); "last" = the last epoch, nothing chosen
    "cv": {"n_splits": 1, "blend": "mean", "folds": None, "selection": "best"},
    "optim": {
        "lr_backbone": 2.0e-5,
        "lr_heads": 5.0e-5,
        "lr_log_vars": 1.0e-3,
        "weight_decay": 0.01,
        "layer_lr_decay": 1.0,
        "scheduler": "onecycle",
        "warmup_ratio": 0.1,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "adamw_impl": "auto",  # fused where torch has it for the device, else foreach (mtl/model/optim.py)
    },
    "trainer": {
        "max_epochs": 4,
        "accumulate_grad_batches": 1,
        "gradient_clip_val": 1.0,
        "precision": "32-true",
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "num_nodes": 1,
        "log_every_n_steps": 10,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "deterministic": False,
        "compile": False,
        "enable_progress_bar": True,
    },
    "early_stopping": {"enabled": True, "patience": 3, "min_delta": 0.0},
    "monitor": {"metric": "score", "mode": "max"},
}

TASK_DEFAULTS: dict[str, Any] = {
    "type": "binary",
    "train": None,
    "val": None,
    "test": None,
    "text_column": "text",
    "label_columns": ["label"],
    "classes": None,
    "group_column": None,
    "loss": None,  # the task type's default (mtl.data.tasks): ce, or bce for multilabel
    "gamma": 2.0,
    "class_weights": None,
    "label_smoothing": 0.0,
    "threshold": 0.5,
    "weight": 1.0,
    "max_train_rows": None,  # int: this task's own data.max_train_rows
    "encoding": None,  # text encoding of the task's CSV / TSV / JSON Lines files; null = UTF-8
}

# Named choices; where a module implements them, the names come from it.
CHOICES: dict[str, tuple] = {
    "backbone.pooling": POOLINGS,
    "backbone.head": HEADS,
    "loss_weighting": tuple(WEIGHTINGS),
    "sampling.mode": SAMPLING_MODES,
    "data.on_bad_rows": ("error", "drop"),
    "optim.scheduler": SCHEDULERS,
    "optim.adamw_impl": ADAMW_IMPLS,
    "monitor.mode": ("min", "max"),
    "cv.blend": BLEND_METHODS,
    "cv.selection": ("best", "last"),
    "weighting.task_loss_norm": ("batch", "expected"),
    "task.type": tuple(TASK_TYPES),
    "task.loss": (None, *dict.fromkeys(loss for t in TASK_TYPES.values() for loss in t.losses)),
}

_NONE = type(None)
# Keys whose default does not tell their type (None defaults, several accepted forms).
TYPES: dict[str, tuple] = {
    "data.preprocess": (str, _NONE),
    "data.cache_dir": (str, _NONE),
    "data.max_train_rows": (int, _NONE),
    "data.max_eval_rows": (int, _NONE),
    "cv.folds": (list, int, str, _NONE),
    "trainer.precision": (str, int),
    "trainer.devices": (int, str, list),
    "trainer.limit_train_batches": (int, float, _NONE),
    "trainer.limit_val_batches": (int, float, _NONE),
    "trainer.gradient_clip_val": (float, _NONE),
    "task.train": (str,),
    "task.val": (str, _NONE),
    "task.test": (str, _NONE),
    "task.classes": (list, _NONE),
    "task.group_column": (str, _NONE),
    "task.loss": (str, _NONE),
    "task.class_weights": (str, list, _NONE),
    "task.threshold": (float, str, list),
    "task.max_train_rows": (int, _NONE),
    "task.encoding": (str, _NONE),
}

# Numeric keys and the range they must lie in: (low, high, low_inclusive, high_inclusive).
# A value outside is a ConfigError naming the key, not a crash (or a silent oddity) mid-training.
INF = float("inf")
RANGES: dict[str, tuple] = {
    "backbone.dropout": (0.0, 1.0, True, False),
    "backbone.head_hidden": (1, INF, True, True),
    "optim.lr_backbone": (0.0, INF, True, True),
    "optim.lr_heads": (0.0, INF, True, True),
    "optim.lr_log_vars": (0.0, INF, True, True),
    "optim.weight_decay": (0.0, INF, True, True),
    "optim.layer_lr_decay": (0.0, INF, False, True),
    "optim.warmup_ratio": (0.0, 1.0, True, False),
    "optim.eps": (0.0, INF, False, True),
    "data.max_dropped_fraction": (0.0, 1.0, True, True),
    "data.num_workers": (0, INF, True, True),
    "cv.n_splits": (1, INF, True, True),
    "trainer.max_epochs": (1, INF, True, True),
    "trainer.accumulate_grad_batches": (1, INF, True, True),
    "trainer.gradient_clip_val": (0.0, INF, True, True),
    "trainer.num_nodes": (1, INF, True, True),
    "trainer.log_every_n_steps": (1, INF, True, True),
    "trainer.limit_train_batches": (0.0, INF, False, True),
    "trainer.limit_val_batches": (0.0, INF, False, True),
    "early_stopping.patience": (0, INF, True, True),
    "early_stopping.min_delta": (0.0, INF, True, True),
    "weighting.log_var_clamp": (0.0, INF, False, True),
    "weighting.dwa_temperature": (0.0, INF, False, True),
    "sampling.temperature": (0.0, INF, False, True),
    "task.gamma": (0.0, INF, True, True),
    "task.weight": (0.0, INF, True, True),
}
_MEANING = {
    "cv.n_splits": " (1 = no k-fold)",
    "trainer.max_epochs": " (at least one epoch of training)",
    "data.max_dropped_fraction": " (the share of a file data.on_bad_rows=drop may drop)",
}

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


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
# where a bool is meant, the YAML 1.1 spellings still work
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def yaml_load(text: str):
    """Parse YAML text the way every mtl config is parsed (YAML 1.2 booleans)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Box:
    """Read YAML, apply overrides, validate, fill defaults. Returns a fully resolved `Box`."""
    raw = _read_yaml(Path(path)) if path is not None else {}
    for item in overrides:
        _apply_override(raw, item)
    _check_tree(raw, DEFAULTS, prefix="")
    cfg = _merge(copy.deepcopy(DEFAULTS), raw)
    _check_tasks(cfg)
    return Box(cfg, box_dots=False, default_box=False)


def save_config(cfg: Box | dict, path: str | Path) -> Path:
    return write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def to_dict(cfg: Box | dict) -> dict:
    return cfg.to_dict() if isinstance(cfg, Box) else copy.deepcopy(dict(cfg))


def config_from_dict(data: dict) -> Box:
    """Rebuild a config stored in a checkpoint or run folder, validating it like a user file."""
    raw = copy.deepcopy(data)
    _check_tree(raw, DEFAULTS, prefix="")
    cfg = _merge(copy.deepcopy(DEFAULTS), raw)
    _check_tasks(cfg)
    return Box(cfg, default_box=False)


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


def _check_tree(raw: dict, defaults: dict, prefix: str) -> None:
    for key in list(raw):
        path = f"{prefix}{key}"
        if key == "tasks" and not prefix:
            _check_task_block(raw["tasks"])
            continue
        if key not in defaults:
            raise ConfigError(_unknown_key(path, key, defaults))
        raw[key] = _checked_value(path, raw[key], defaults[key])
        if isinstance(defaults[key], dict) and defaults[key]:
            _check_tree(raw[key], defaults[key], prefix=f"{path}.")


def _check_task_block(tasks: Any) -> None:
    if not isinstance(tasks, dict):
        raise ConfigError(
            f"Config key 'tasks' must be a mapping of task name to settings, got {tasks!r}."
        )
    for name, spec in tasks.items():
        if not isinstance(spec, dict):
            raise ConfigError(
                f"Config key 'tasks.{name}' must be a mapping (type, train, ...), got {spec!r}."
            )
        for key in list(spec):
            path = f"tasks.{name}.{key}"
            if key not in TASK_DEFAULTS:
                raise ConfigError(_unknown_key(path, key, TASK_DEFAULTS))
            spec[key] = _checked_value(
                path, spec[key], TASK_DEFAULTS[key], schema_key=f"task.{key}"
            )


def _checked_value(path: str, value: Any, default: Any, schema_key: str | None = None) -> Any:
    schema_key = schema_key or path
    allowed = TYPES.get(schema_key) or _types_of(default)
    value = _coerce(value, allowed)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(sorted({"null" if t is _NONE else t.__name__ for t in allowed}))
        hint = ""
        if str in allowed and isinstance(value, bool | int | float):
            hint = (
                f" YAML read the unquoted value as {'an' if type(value) is int else 'a'} "
                f"{type(value).__name__}; quote it to keep it "
                f"text, e.g. {path.rsplit('.', 1)[-1]}: '{value}'."
            )
        raise ConfigError(
            f"Config key '{path}' must be {names}, got {value!r} ({type(value).__name__}).{hint}"
        )
    _check_range(path, schema_key, value)
    choices = CHOICES.get(schema_key)
    if choices is not None and value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        hint = _close(str(value), [str(c) for c in choices if c is not None])
        raise ConfigError(f"Config key '{path}' must be one of: {shown}; got {value!r}.{hint}")
    return value


def _check_range(path: str, schema_key: str, value: Any) -> None:
    bounds = RANGES.get(schema_key)
    if bounds is None or not isinstance(value, int | float) or isinstance(value, bool):
        return
    low, high, low_in, high_in = bounds
    inside = (
        not math.isnan(value)
        and (value >= low if low_in else value > low)
        and (value <= high if high_in else value < high)
    )
    if not inside:
        if high == INF:
            shown = f"at least {low}" if low_in else f"greater than {low}"
        else:
            left, right = ("[" if low_in else "("), ("]" if high_in else ")")
            shown = f"in {left}{low}, {high}{right}"
        raise ConfigError(
            f"Config key '{path}' must be {shown}{_MEANING.get(schema_key, '')}, got {value!r}."
        )


def _types_of(default: Any) -> tuple:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (float,)
    if isinstance(default, int):
        return (int,)
    if default is None:
        return (_NONE,)
    return (type(default),)


def _coerce(value: Any, allowed: tuple) -> Any:
    """YAML reads `1e-5` as a string and `1` as an int; accept both where a float is meant.
    Where a bool is meant, the YAML 1.1 words yes / no / on / off count."""
    if bool in allowed and str not in allowed and isinstance(value, str):
        return _BOOL_WORDS.get(value.lower(), value)
    if float in allowed and not isinstance(value, bool):
        if isinstance(value, int) and int not in allowed:  # limit_*_batches: 1 batch, not 100%
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    return value


def _unknown_key(path: str, key: str, known: dict) -> str:
    return f"Unknown config key '{path}'.{_close(key, list(known))} Known keys here: {', '.join(known)}."


def _close(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def _merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "tasks":
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _check_tasks(cfg: dict) -> None:
    tasks = cfg["tasks"]
    if not tasks:
        raise ConfigError(
            "The config defines no tasks. Add at least one under 'tasks:' (see configs/default.yaml)."
        )
    for name, raw in list(tasks.items()):
        spec = _merge(copy.deepcopy(TASK_DEFAULTS), raw)
        where = f"tasks.{name}"
        if not spec["train"]:
            raise ConfigError(
                f"Config key '{where}.train' is missing: give the task's training file."
            )
        kind = spec["type"]
        cols = spec["label_columns"]
        if not cols or not all(isinstance(c, str) for c in cols):
            raise ConfigError(
                f"Config key '{where}.label_columns' must be a non-empty list of column names."
            )
        losses = TASK_TYPES[kind].losses
        if not TASK_TYPES[kind].multilabel and len(cols) != 1:
            raise ConfigError(
                f"Config key '{where}.label_columns' must name exactly one column for a {kind} task, got {cols}."
            )
        if spec["loss"] is None:
            spec["loss"] = losses[0]
        if spec["loss"] not in losses:
            allowed = " or ".join(losses)
            raise ConfigError(
                f"Config key '{where}.loss' must be {allowed} for a {kind} task, got '{spec['loss']}'."
            )
        if isinstance(spec["class_weights"], str) and spec["class_weights"] != "auto":
            raise ConfigError(
                f"Config key '{where}.class_weights' must be 'auto', a list of numbers or null."
            )
        if isinstance(spec["threshold"], str) and spec["threshold"] != "tuned":
            raise ConfigError(
                f"Config key '{where}.threshold' must be a number, a list per label, or 'tuned'."
            )
        if spec["max_train_rows"] is not None and spec["max_train_rows"] < 1:
            raise ConfigError(
                f"Config key '{where}.max_train_rows' must be a positive integer or null, "
                f"got {spec['max_train_rows']}."
            )
        if spec["encoding"] is not None:
            try:
                codecs.lookup(spec["encoding"])
            except LookupError:
                raise ConfigError(
                    f"Config key '{where}.encoding' is '{spec['encoding']}', which Python does not "
                    f"know as a text encoding; use e.g. utf-8, latin-1, cp1252 or utf-16."
                ) from None
        if not 0.0 <= spec["label_smoothing"] < 1.0:
            raise ConfigError(
                f"Config key '{where}.label_smoothing' must be in [0, 1), got {spec['label_smoothing']}."
            )
        if spec["threshold"] == "tuned" and cfg["cv"]["n_splits"] <= 1:
            if cfg["cv"]["selection"] == "last":
                raise ConfigError(
                    f"Config key '{where}.threshold' is 'tuned', but with cv.n_splits=1 and "
                    f"cv.selection=last no rows are set aside to tune on (the val set only "
                    f"reports). Use cv.selection=best, k-fold (cv.n_splits>1) or a fixed threshold."
                )
        tasks[name] = spec
    if not 0.0 <= cfg["data"]["val_fraction"] < 1.0:
        raise ConfigError(
            f"Config key 'data.val_fraction' must be in [0, 1) (the share of a training file held "
            f"out), got {cfg['data']['val_fraction']}."
        )
    if cfg["data"]["val_fraction"] == 0 and cfg["cv"]["n_splits"] <= 1:
        if cfg["cv"]["selection"] == "best":
            raise ConfigError(
                "Config key 'data.val_fraction' is 0, but with cv.n_splits=1 and cv.selection=best "
                "the best epoch is chosen on a held-out share of the training rows. Set "
                "data.val_fraction (e.g. 0.1), or cv.selection=last to train fixed epochs."
            )
    for key in ("max_length", "batch_size", "eval_batch_size", "max_train_rows", "max_eval_rows"):
        if cfg["data"][key] is not None and cfg["data"][key] < 1:
            raise ConfigError(
                f"Config key 'data.{key}' must be a positive integer, got {cfg['data'][key]}."
            )
