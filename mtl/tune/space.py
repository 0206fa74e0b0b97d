"""The `tune:` section of a config: the objective's metric and the search space.

    tune:
      metric: score              # or <task>/<metric>, e.g. emotion/f1_macro
      space:
        optim.lr_backbone: {type: float, low: 2.0e-5, high: 3.0e-4, log: true}
        trainer.max_epochs: {type: int, low: 1, high: 4}
        backbone.pooling: {type: categorical, choices: [mean, cls]}

Every space key must be a config key a trial may vary, and every value the study can draw a
value that key accepts: each bound and each choice is put into the config and run through the
config's own checks (mtl/config/validate.py), so a bad entry stops with the same clear error
before the first trial. Imports no optuna: `check_tune_section` runs on every config load.
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass
from typing import Any

from mtl.errors import ConfigError

KINDS = ("float", "int", "categorical")
FIELDS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}
# Keys a trial must not vary, and why: they decide which rows choose (so trials would be scored
# on different rows), what the objective is, the data, or only where and on what a run happens.
FIXED = {
    "seed": "the seed places the selection rows and folds, so trials would be scored on different rows",
    "run": "the study names and places its trials' run folders",
    "tune": "it describes the study itself",
    "data_dir": "it is the data, not a hyperparameter",
    "cv": "cv.* decides which rows choose and how the objective is scored",
    "data.val_fraction": "it sizes the selection rows, so trials would be scored on different rows",
    "data.max_eval_rows": "it only subsets the val files, which the objective never reads",
    "monitor": "monitor.* is how a trial chooses its epoch; the study's objective is tune.metric",
    "data.num_workers": "it does not change what a trial trains",
    "data.cache_dir": "it does not change what a trial trains",
    "trainer.accelerator": "it is hardware, not a hyperparameter",
    "trainer.devices": "it is hardware, not a hyperparameter",
    "trainer.strategy": "it is hardware, not a hyperparameter",
    "trainer.num_nodes": "it is hardware, not a hyperparameter",
    "trainer.enable_progress_bar": "it does not change what a trial trains",
    "trainer.log_every_n_steps": "it does not change what a trial trains",
}
TASK_DATA_KEYS = (
    "train", "val", "test", "type", "text_column", "label_columns", "classes",
    "group_column", "encoding",
)  # fmt: skip


@dataclass(frozen=True)
class Param:
    """One search-space entry, checked: `key` is a dotted config key."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def contains(self, value: Any) -> bool:
        """Whether the study could draw `value` (the config's own value: trial 0 if so)."""
        if self.kind == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not self.low <= value <= self.high:
            return False
        step = self.step if self.step is not None else (1 if self.kind == "int" else None)
        return step is None or math.isclose(
            (value - self.low) / step, round((value - self.low) / step)
        )


def get_key(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in _parts(cfg, key):
        node = node[part]
    return node


def set_key(cfg: dict, key: str, value: Any) -> None:
    """Set a dotted key in a config dict; `tasks.<name>.<key>` reaches into a task whose name may
    itself hold no dot (task names come from the config)."""
    parts = _parts(cfg, key)
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _parts(cfg: dict, key: str) -> list[str]:
    if key.startswith("tasks."):
        name, _, rest = key.removeprefix("tasks.").rpartition(".")
        return ["tasks", name, rest]
    return key.split(".")


def check_tune_section(cfg: dict) -> None:
    """The hook in the config's checks: `tune.metric` names a metric the tasks report, and every
    space entry is valid (the space may be empty: then only scripts/tune.py refuses it)."""
    tune = cfg.get("tune") or {}
    check_metric(cfg, tune.get("metric", "score"))
    search_space(cfg)


def task_metrics(cfg: dict) -> list[str]:
    """`score` and every `<task>/<metric>` the tasks report on their selection or OOF rows."""
    from mtl.data.tasks import TASK_TYPES

    names = ["score"]
    for task, spec in cfg["tasks"].items():
        for metric in TASK_TYPES[spec["type"]].metrics:
            if metric == "f1_<label>":
                names += [f"{task}/f1_{label}" for label in spec["label_columns"]]
            else:
                names.append(f"{task}/{metric}")
    return names


def check_metric(cfg: dict, metric: str) -> None:
    known = task_metrics(cfg)
    if metric not in known:
        match = difflib.get_close_matches(str(metric), known, n=1, cutoff=0.6)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise ConfigError(
            f"Config key 'tune.metric' is {metric!r}, which no task reports.{hint} Use 'score' "
            f"(the mean of the tasks' primary metrics) or one of: {', '.join(known[1:])}."
        )


def search_space(cfg: dict) -> list[Param]:
    """The checked entries of `tune.space` (a resolved config dict), in the config's order."""
    space = (cfg.get("tune") or {}).get("space") or {}
    params = []
    for key, entry in space.items():
        where = f"Config key 'tune.space.{key}'"
        check_searchable(cfg, str(key), where)
        param = _parse_entry(key, entry, where)
        for value in _edge_values(param):
            problem = value_problem(cfg, param.key, value)
            if problem:
                raise ConfigError(
                    f"{where}: the study could try {value!r}, which {param.key} does not accept: "
                    f"{problem} Narrow the entry to values the key accepts."
                )
        params.append(param)
    return params


def check_searchable(cfg: dict, key: str, where: str) -> None:
    from mtl.config.schema import DEFAULTS, TASK_DEFAULTS
    from mtl.run.runfolder import flatten  # a plain dict helper

    for fixed, why in FIXED.items():
        if key == fixed or key.startswith(fixed + "."):
            raise ConfigError(f"{where}: {key} cannot be searched: {why}.")
    if key.startswith("tasks."):
        name, _, field = key.removeprefix("tasks.").rpartition(".")
        if name not in cfg["tasks"]:
            raise ConfigError(
                f"{where}: the config has no task '{name}' (tasks: {', '.join(cfg['tasks'])}); "
                f"a task key is written tasks.<task>.<key>, e.g. tasks.{next(iter(cfg['tasks']))}.gamma."
            )
        if field not in TASK_DEFAULTS:
            raise ConfigError(
                f"{where}: '{field}' is not a task key.{_close(field, TASK_DEFAULTS)}"
            )
        if field in TASK_DATA_KEYS:
            raise ConfigError(f"{where}: {key} cannot be searched: it is the task's data.")
        return
    leaves = {k for k in flatten({k: v for k, v in DEFAULTS.items() if k != "tasks"})}
    sections = {k.rsplit(".", 1)[0] for k in leaves if "." in k}
    if key in sections:
        inner = sorted(k for k in leaves if k.startswith(key + "."))[:3]
        raise ConfigError(
            f"{where}: {key} is a section of the config, not a key; give the full dotted key, "
            f"e.g. {', '.join(inner)}."
        )
    if key not in leaves:
        raise ConfigError(f"{where}: {key} is not a config key.{_close(key, leaves)}")


def _close(word: str, options) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def _parse_entry(key: str, entry: Any, where: str) -> Param:
    if not isinstance(entry, dict) or "type" not in entry:
        raise ConfigError(
            f"{where} must be a mapping with a type ({' | '.join(KINDS)}), e.g. "
            f"{{type: float, low: 1.0e-5, high: 1.0e-3, log: true}} or "
            f"{{type: categorical, choices: [mean, cls]}}; got {entry!r}."
        )
    kind = entry["type"]
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: type must be one of {', '.join(KINDS)}, got {kind!r}.{_close(str(kind), KINDS)}"
        )
    unknown = [f for f in entry if f not in FIELDS[kind]]
    if unknown:
        raise ConfigError(
            f"{where}: a {kind} entry takes {', '.join(FIELDS[kind])}; {unknown[0]!r} is not "
            f"one of them.{_close(str(unknown[0]), FIELDS[kind])}"
        )
    if kind == "categorical":
        return Param(key, kind, choices=_choices(entry.get("choices"), where))
    low, high = (_number(entry.get(b), kind, f"{where}: {b}") for b in ("low", "high"))
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}.")
    step = entry.get("step")
    if step is not None:
        step = _number(step, kind, f"{where}: step")
        if step <= 0:
            raise ConfigError(f"{where}: step must be greater than 0, got {step!r}.")
        if log:
            raise ConfigError(f"{where}: give log: true or a step, not both (Optuna takes one).")
    if low > high:
        raise ConfigError(f"{where}: low ({low!r}) is greater than high ({high!r}).")
    if log and low <= 0:
        raise ConfigError(
            f"{where}: log: true needs low > 0 (a log scale has no 0 or negatives), got low={low!r}."
        )
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _number(value: Any, kind: str, where: str) -> float | int:
    if isinstance(value, str):  # YAML reads 1e-5 (no dot) as text
        try:
            value = float(value) if kind == "float" else value
        except ValueError:
            pass
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a whole number for an int entry, got {value!r}.")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"{where} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}.")
    return float(value)


def _choices(choices: Any, where: str) -> tuple:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}.")
    for choice in choices:
        # Optuna stores categorical choices as these types only
        if choice is not None and not isinstance(choice, str | int | float | bool):
            raise ConfigError(
                f"{where}: choice {choice!r} is a {type(choice).__name__}; choices must be "
                "text, numbers, true / false or null."
            )
        if isinstance(choice, float) and not math.isfinite(choice):
            raise ConfigError(f"{where}: choice {choice!r} is not a finite number.")
    if len({repr(c) for c in choices}) != len(choices):
        raise ConfigError(f"{where}: choices {choices!r} repeat a value.")
    return tuple(choices)


def _edge_values(param: Param) -> list:
    """The values that stand for all the study can draw: both bounds of a range (every range the
    config checks is an interval), every choice."""
    return list(param.choices) if param.kind == "categorical" else [param.low, param.high]


def value_problem(cfg: dict, key: str, value: Any) -> str | None:
    """The config's own error for `cfg` with `key` set to `value`, or None if it is accepted."""
    from mtl.config.schema import DEFAULTS
    from mtl.config.validate import check_tasks, check_tree, merge

    raw = copy.deepcopy(cfg)
    raw.pop("tune", None)  # the bare run config: no recursion into this check
    set_key(raw, key, value)
    try:
        check_tree(raw, DEFAULTS, prefix="")
        check_tasks(merge(copy.deepcopy(DEFAULTS), raw))
    except ConfigError as err:
        return str(err)
    return None
