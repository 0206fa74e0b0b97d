"""Validation of a raw config against the schema (mtl/config/schema.py): unknown keys with a close
spelling, types, ranges, choices, and the checks across keys of each task."""

from __future__ import annotations

import codecs
import copy
import difflib
import math
from typing import Any

from mtl.config.numbers import refuse_non_finite, whole_number_hint
from mtl.config.schema import (
    CHOICES,
    INF,
    INT_MAX,
    RANGE_MEANING,
    RANGES,
    TASK_DEFAULTS,
    TYPES,
    NoneType,
)
from mtl.data.tasks import TASK_TYPES
from mtl.errors import ConfigError

# where a bool is meant, the YAML 1.1 spellings still work
_BOOL_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


def check_tree(raw: dict, defaults: dict, prefix: str) -> None:
    for key in list(raw):
        path = f"{prefix}{key}"
        if key == "tasks" and not prefix:
            _check_task_block(raw["tasks"])
            continue
        if key not in defaults:
            raise ConfigError(_unknown_key(path, key, defaults))
        raw[key] = _checked_value(path, raw[key], defaults[key])
        if isinstance(defaults[key], dict) and defaults[key]:
            check_tree(raw[key], defaults[key], prefix=f"{path}.")


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
    if {int, float, list} & set(allowed):
        refuse_non_finite(path, value)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        names = " or ".join(sorted({"null" if t is NoneType else t.__name__ for t in allowed}))
        hint = whole_number_hint(value, allowed)
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
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    bounds = RANGES.get(schema_key)
    if isinstance(value, int) and (bounds is None or bounds[1] == INF):
        bounds = (-INF, INF, False, False) if bounds is None else bounds
        bounds = (bounds[0], INT_MAX, bounds[2], True)  # every integer is bounded
    if bounds is None:
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
        elif low == -INF:
            shown = f"at most {high}"
        else:
            left, right = ("[" if low_in else "("), ("]" if high_in else ")")
            shown = f"in {left}{low}, {high}{right}"
        raise ConfigError(
            f"Config key '{path}' must be {shown}{RANGE_MEANING.get(schema_key, '')}, got {value!r}."
        )


def _types_of(default: Any) -> tuple:
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (float,)
    if isinstance(default, int):
        return (int,)
    if default is None:
        return (NoneType,)
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


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "tasks":
            merge(base[key], value)
        else:
            base[key] = value
    return base


def check_tasks(cfg: dict) -> None:
    tasks = cfg["tasks"]
    if not tasks:
        raise ConfigError(
            "The config defines no tasks. Add at least one under 'tasks:' (see configs/default.yaml)."
        )
    for name, raw in list(tasks.items()):
        spec = merge(copy.deepcopy(TASK_DEFAULTS), raw)
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
    from mtl.model.optim import FUSED_FP16_CLIP, fused_allowed

    if cfg["optim"].get("adamw_impl") == "fused" and not fused_allowed(cfg["trainer"]):
        raise ConfigError(FUSED_FP16_CLIP)
    from mtl.model.aggregation import check_config

    check_config(cfg)
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
    from mtl.tune.space import check_tune_section  # optuna-free; imports this module

    check_tune_section(cfg)
