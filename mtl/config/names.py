"""Checks on names the config hands to the file system and the logger: `run.name` and the task
names become path components under `run.output_dir` (`<output_dir>/<run.name>/fold_0/oof_<task>.csv`),
task names and `monitor.metric` become logged keys (`val/<task>/f1_macro`). Run on the merged
config after `check_tasks` (mtl/config/validate.py), so task types and label columns are known."""

from __future__ import annotations

import difflib

from mtl.data.tasks import TASK_TYPES
from mtl.errors import ConfigError

# metrics that get better as they fall; every other metric (F1, accuracy, AUROC, exact match,
# the mean-of-primaries score) gets better as it rises
_LOWER_IS_BETTER = ("loss",)


def check_names(cfg: dict, stored: bool = False) -> None:
    """`stored`: a config saved with a run or checkpoint, read back to predict with what was
    trained. Written before these checks, it may hold a nested run.name (`exp/seed1`, which
    predict does not write under) or a contradicting monitor pair: kept there, not refused."""
    if not stored:
        check_path_component("run.name", cfg["run"]["name"])
    for name in cfg["tasks"]:
        check_path_component(f"tasks.{name}", name, what="task name")
    check_monitor(cfg, refuse_contradiction=not stored)


def check_path_component(key: str, value: object, what: str = "name") -> None:
    """A name joined under a folder must stay a single folder name: `run.name=../../x` or
    `run.name=/tmp/x` would write outside `run.output_dir` (issue 22, item 20)."""
    if not isinstance(value, str):
        raise ConfigError(
            f"Config key '{key}': the {what} must be text, got {value!r} "
            f"({type(value).__name__}); quote it."
        )
    problem = None
    if not value.strip():
        problem = "is empty"
    elif value in (".", ".."):
        problem = "names an existing folder (. or ..), not a new one"
    elif any(sep in value for sep in ("/", "\\")):
        problem = "contains a path separator (/ or \\)"
    elif "\0" in value:
        problem = "contains a NUL character"
    if problem:
        raise ConfigError(
            f"Config key '{key}': the {what} {value!r} {problem}. It becomes one folder or file "
            f"name inside run.output_dir, so it must be a plain name such as 'my_run' (set "
            f"run.output_dir to choose where runs are written)."
        )


def monitor_names(cfg: dict) -> list[str]:
    """Every value `monitor.metric` may take: what mtl/model/module.py logs as `val/<name>`."""
    names = ["score", "loss"]
    for task, spec in cfg["tasks"].items():
        task_type = TASK_TYPES[spec["type"]]
        for metric in ("loss", *task_type.metrics):
            if metric == "f1_<label>":  # one per label column (mtl.model.metrics.score_arrays)
                names += [f"{task}/f1_{label}" for label in spec["label_columns"]]
            else:
                names.append(f"{task}/{metric}")
    return names


def check_monitor(cfg: dict, refuse_contradiction: bool = True) -> None:
    """`monitor.metric` must be a metric that is logged, and `monitor.mode` follows from it
    (`auto`, the default). An explicit mode that contradicts the metric is refused: with
    `loss` and `max`, checkpoints kept the highest-loss epoch (issue 22, item 3)."""
    monitor = cfg["monitor"]
    metric, mode = monitor["metric"], monitor["mode"]
    known = monitor_names(cfg)
    if metric not in known:
        close = difflib.get_close_matches(str(metric), known, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"Config key 'monitor.metric' is {metric!r}, which is not a metric this config "
            f"logs.{hint} Use 'score' (the mean of the tasks' primary metric), 'loss', or "
            f"'<task>/<metric>', e.g. {', '.join(repr(k) for k in known[2:6])}."
        )
    direction = "min" if metric.rsplit("/", 1)[-1] in _LOWER_IS_BETTER else "max"
    if mode != "auto" and mode != direction:
        if not refuse_contradiction:
            return  # what the stored run was trained with
        better = "lower" if direction == "min" else "higher"
        raise ConfigError(
            f"Config keys 'monitor.metric' and 'monitor.mode' disagree: {metric!r} is better "
            f"{better}, but monitor.mode={mode} would keep the {'highest' if mode == 'max' else 'lowest'}"
            f"-{metric.rsplit('/', 1)[-1]} epoch and stop early when it stops "
            f"{'rising' if mode == 'max' else 'falling'}. Remove monitor.mode (it follows the "
            f"metric) or set monitor.mode={direction}."
        )
    monitor["mode"] = direction
