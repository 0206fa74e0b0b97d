"""One trial: its config, its run folder, per-epoch pruning, and its score — read only from the
rows that choose.

A trial is an ordinary run of `mtl.run.train.train` in `<study folder>/trial_<n>/`: the study's
config with the trial's values put in. Its objective is
  - one split (`cv.n_splits: 1`, `cv.selection: best`): `tune.metric` on the selection rows (a
    held-out `data.val_fraction` of the training rows), at the epoch they chose —
    `fold_0/metrics.json`;
  - k-fold: `tune.metric` on the out-of-fold predictions (cross-fitted thresholds) —
    `results.json` `oof_score` / `tasks.<task>.oof`.
Nothing here reads a val-file or test-file score: the run folder holds them, as every run folder
does, and only the study's report.md reads them, for the best trial and the default config.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
from box import Box
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from mtl.config import config_from_dict, to_dict
from mtl.errors import MTLError
from mtl.run.cv import finished_folds
from mtl.tune.space import Param, set_key

log = logging.getLogger(__name__)


class SelectionPruning(Callback):
    """Reports the selection score at the end of every training epoch and stops a trial the
    pruner gives up on (it raises `optuna.TrialPruned`, which Lightning re-raises after its own
    teardown).

    Ours, not optuna-integration's PyTorchLightningPruningCallback (5.0; it imports the
    `lightning` namespace and runs under Lightning 2.6): that one reports at step =
    `current_epoch`, so in k-fold every fold after the first reports steps Optuna already has and
    ignores, and it also reports from the `trainer.validate` that mtl/run/fit.py runs on the best
    checkpoint after fitting. Here the step is fold × epochs per fold + epoch, and only fitting
    reports."""

    def __init__(self, trial: optuna.Trial, monitor: str, epochs_per_fold: int):
        self.trial, self.monitor, self.epochs_per_fold = trial, monitor, epochs_per_fold

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        fold, epoch = trainer.datamodule.fold, trainer.current_epoch
        self.trial.report(float(value), step=fold * self.epochs_per_fold + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {fold} epoch {epoch}")


def suggest(trial: optuna.Trial, param: Param):
    if param.kind == "categorical":
        return trial.suggest_categorical(param.key, list(param.choices))
    suggest_number = trial.suggest_float if param.kind == "float" else trial.suggest_int
    step = param.step if param.step is not None else (None if param.kind == "float" else 1)
    return suggest_number(param.key, param.low, param.high, log=param.log, step=step)


def trial_config(base: dict, params: dict, study_dir: Path, run_name: str) -> Box:
    """The study's config with the trial's values, written to `<study_dir>/<run_name>/`; checked
    like a user's config. One device per trial: `devices: auto` on a many-GPU machine would start
    DDP, whose processes re-run the whole command (run many workers instead, docs/tune.md)."""
    raw = to_dict(base)
    for key, value in params.items():
        set_key(raw, key, value)
    raw["run"].update(output_dir=str(study_dir), name=run_name)
    if raw["trainer"]["devices"] == "auto":
        raw["trainer"]["devices"] = 1
    return config_from_dict(raw)


def epochs_per_fold(base: dict, space: list[Param]) -> int:
    """The most epochs a fold of any trial can train: the pruning steps of fold k start at k × it."""
    epochs = [base["trainer"]["max_epochs"]]
    for param in space:
        if param.key == "trainer.max_epochs":
            epochs += list(param.choices) if param.kind == "categorical" else [param.high]
    return int(max(epochs))


def objective_value(cfg: Box, run_dir: Path, results: dict, metric: str) -> float:
    """`metric` ("score" or "<task>/<metric>") on the rows that chose: the selection rows of the one
    split, or the out-of-fold predictions of k-fold. NaN when the run has none (a diverged run)."""
    if cfg.cv.n_splits > 1:
        if metric == "score":
            value = results.get("oof_score")
        else:
            task, name = metric.split("/", 1)
            value = results["tasks"].get(task, {}).get("oof", {}).get(name)
    else:
        value = finished_folds(run_dir).get(0, {}).get("metrics", {}).get(f"val/{metric}")
    return float(value) if value is not None else math.nan


def rows_note(cfg: Box) -> str:
    """In words: the rows whose score the study optimises."""
    if cfg.cv.n_splits > 1:
        return f"out-of-fold predictions of the {cfg.cv.n_splits} folds' training rows"
    return f"the selection rows (a held-out {cfg.data.val_fraction:g} of each training file)"


def run_trial(
    trial: optuna.Trial,
    run_name: str,
    base: Box,
    space: list[Param],
    study_dir: Path,
    pruning: bool,
) -> float:
    """Train the trial in `<study_dir>/<run_name>` and return its objective value; raises
    `optuna.TrialPruned`. A retry (its worker died) continues the dead trial's folder."""
    from mtl.run.train import run_dir_of, train

    run_dir = study_dir / run_name
    trial.set_user_attr("run_dir", run_name)
    params = {p.key: suggest(trial, p) for p in space}
    log.info("trial %d (%s): %s", trial.number, run_name, params)
    cfg = trial_config(base, params, study_dir, run_name)
    callbacks = []
    if pruning:
        monitor = f"val/{cfg.tune.metric}"
        callbacks.append(SelectionPruning(trial, monitor, epochs_per_fold(to_dict(base), space)))
    try:
        results = train(cfg, callbacks=callbacks)
    except optuna.TrialPruned:
        remove_checkpoints(run_dir)  # a pruned trial is never resumed or predicted with
        raise
    if not results:
        raise MTLError(f"trial {trial.number}: training returned no results ({run_dir}).")
    return objective_value(cfg, run_dir_of(cfg), results, cfg.tune.metric)


def remove_checkpoints(run_dir: Path) -> None:
    for path in run_dir.glob("fold_*/*.ckpt"):
        path.unlink(missing_ok=True)
