"""The study: its identity, the trial loop, and trials whose worker died.

Where it lives: mtl/tune/storage.py. The study folder, which holds every trial's run folder,
must be shared by the workers: a trial's liveness is its worker's lock (mtl/tune/workers.py).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from box import Box
from optuna.trial import TrialState

from mtl.config import to_dict
from mtl.errors import ConfigError, MTLError
from mtl.io import write_json
from mtl.run.runfolder import _flock as flock  # the run folder's advisory lock, reused
from mtl.run.runfolder import identity_differences, run_identity
from mtl.tune.objective import run_trial
from mtl.tune.space import Param, get_key
from mtl.tune.storage import (
    STUDY_FILE,
    check_same_storage,
    check_study_folder,
    open_storage,
    storage_name,
)
from mtl.tune.workers import WorkerLock, worker_alive

log = logging.getLogger(__name__)

IDENTITY_ATTR = "mtl_identity"
FAILS_IN_A_ROW = 3  # non-finite objectives in a row: the space reaches diverging settings
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Optuna's TPESampler default, passed explicitly so the report can say when TPE never modelled:
# until this many trials have finished, its values are seeded random draws
TPE_STARTUP_TRIALS = 10


@dataclass
class StudyContext:
    study: optuna.Study
    base: Box  # the study's config, overrides applied
    space: list[Param]
    study_dir: Path
    storage: str  # as given (or the default path), for the record


def identity(base: Box) -> dict:
    """What must not change while a study holds trials: what its runs train (mtl's run
    fingerprint: settings and data contents) and the search it makes."""
    tune = to_dict(base)["tune"]
    return {
        "run": run_identity(base),
        "tune": json.loads(json.dumps({k: tune[k] for k in ("metric", "direction", "space")})),
    }


def identity_changes(before: dict, now: dict) -> list[str]:
    changes = identity_differences(before.get("run", {}), now["run"])
    for key in ("metric", "direction", "space"):
        was, is_ = before.get("tune", {}).get(key), now["tune"][key]
        if was != is_:
            changes.append(f"tune.{key} was {was!r}, now {is_!r}")
    return changes


def make_pruner(base: Box, space: list[Param]) -> optuna.pruners.BasePruner:
    from mtl.tune.objective import epochs_per_fold

    kind = base.tune.pruner
    if kind == "median":
        return optuna.pruners.MedianPruner()
    if kind == "hyperband":
        steps = max(1, base.cv.n_splits) * epochs_per_fold(to_dict(base), space)
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps)
    return optuna.pruners.NopPruner()


def open_study(
    base: Box, space: list[Param], study_name: str, study_dir: Path, storage_spec: str | None
) -> StudyContext:
    """Create or load the study; a study that holds trials of another config is refused."""
    check_study_folder(study_dir)
    storage_shown = storage_name(storage_spec)
    check_same_storage(study_dir, storage_shown)
    study_dir.mkdir(parents=True, exist_ok=True)
    with flock(study_dir / ".study.lock", wait=True, busy=""):  # first-time schema creation races
        storage = open_storage(storage_spec, study_dir)
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction=base.tune.direction,
            pruner=make_pruner(base, space),
            load_if_exists=True,
        )
        now = identity(base)
        before = study.user_attrs.get(IDENTITY_ATTR)
        changes = identity_changes(before, now) if before else []
        if changes and study.get_trials(deepcopy=False):
            listed = "; ".join(changes[:5]) + (
                f"; and {len(changes) - 5} more" if len(changes) > 5 else ""
            )
            raise ConfigError(
                f"Study '{study_name}' ({storage_shown}) holds trials of another config or "
                f"search: {listed}. Its trials would not be comparable. Rerun with the study's "
                f"config, pass another --study, or delete {study_dir}."
            )
        if study.direction.name.lower() != base.tune.direction:
            raise ConfigError(
                f"Study '{study_name}' was created to {study.direction.name.lower()}, the config "
                f"says tune.direction={base.tune.direction}. Pass another --study."
            )
        if before != now:
            study.set_user_attr(IDENTITY_ATTR, now)
        if not study.get_trials(deepcopy=False):
            enqueue_default(study, base, space)
        if not (study_dir / STUDY_FILE).is_file():
            write_json(study_dir / STUDY_FILE, {"study": study_name, "storage": storage_shown})
    shown = str(study_dir / "study.db") if storage_spec is None else storage_shown
    return StudyContext(study, base, space, study_dir, shown)


def enqueue_default(study: optuna.Study, base: Box, space: list[Param]) -> None:
    """Trial 0 is the config as given, when the space holds its values: the search starts from
    the hand-picked point, and the report's baseline is a trial scored like every other."""
    raw = to_dict(base)
    values = {p.key: get_key(raw, p.key) for p in space}
    if all(p.contains(values[p.key]) for p in space):
        study.enqueue_trial(values, user_attrs={"default_config": True})
    else:
        outside = [
            k for k in values if not next(p for p in space if p.key == k).contains(values[k])
        ]
        log.info("the config's own %s lie outside the space: no trial for it", outside)


def counts(study: optuna.Study) -> Counter:
    return Counter(t.state for t in study.get_trials(deepcopy=False))


def fail_dead_trials(ctx: StudyContext) -> list[int]:
    """RUNNING trials whose worker died (its lock is free): mark them failed and queue their
    values again, to continue in the same run folder (its interrupted fold resumes). Runs under
    the study folder's lock, as asking for a trial does, so it never sees a trial half-asked."""
    dead = []
    with flock(ctx.study_dir / ".study.lock", wait=True, busy=""):
        for trial in ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = trial.user_attrs.get("worker")  # none: its worker died inside ask
            if worker is not None and worker_alive(ctx.study_dir, worker):
                continue
            ctx.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            requeue(ctx.study, trial.number)
            dead.append(trial.number)
    for number in dead:
        log.warning("trial %d lost its worker (killed?): marked failed, queued again", number)
    return dead


def requeue(study: optuna.Study, number: int) -> None:
    """Queue an interrupted trial's values again, to continue in its run folder."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    attrs = {k: v for k, v in trial.user_attrs.items() if k != "worker"} | {"retry_of": number}
    attrs.setdefault("run_dir", f"trial_{number}")
    # the values it had drawn, or (killed before drawing) the ones it was queued with
    values = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
    study.enqueue_trial(values, user_attrs=attrs)


def one_trial(ctx: StudyContext, worker: str) -> TrialState:
    """Ask, stamp with this worker's id, train, tell. A trial's sampler is seeded from (config
    seed, trial number): the same study reruns to the same trials, and workers started together
    do not draw alike."""
    # ask + stamp under the study folder's lock: SQLite has no SELECT ... FOR UPDATE, so two
    # workers could both pop one queued trial (optuna/optuna#4621); the reaper takes it too
    with flock(ctx.study_dir / ".study.lock", wait=True, busy=""):
        trial = ctx.study.ask()
        trial.set_user_attr("worker", worker)
    seed = int(np.random.SeedSequence([ctx.base.seed, trial.number]).generate_state(1)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ctx.study.sampler = optuna.samplers.TPESampler(
            n_startup_trials=TPE_STARTUP_TRIALS, seed=seed
        )
    run_name = trial.user_attrs.get("run_dir") or f"trial_{trial.number}"  # a retry: the same
    try:
        return _train_and_tell(ctx, trial, run_name)
    finally:
        gc.collect()


def _train_and_tell(ctx: StudyContext, trial: optuna.Trial, run_name: str) -> TrialState:
    pruning = ctx.base.tune.pruner != "none"
    try:
        value = run_trial(trial, run_name, ctx.base, ctx.space, ctx.study_dir, pruning)
    except optuna.TrialPruned as why:
        _tell(ctx, trial, state=TrialState.PRUNED)
        log.info("trial %d pruned (%s)", trial.number, why)
        return TrialState.PRUNED
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C (Lightning turns it into exit(1))
        _tell(ctx, trial, state=TrialState.FAIL)
        requeue(ctx.study, trial.number)  # the rerun continues it, like a killed trial
        raise
    except BaseException:  # an error: the trial failed; the study keeps the others
        _tell(ctx, trial, state=TrialState.FAIL)
        raise
    if not math.isfinite(value):
        _tell(ctx, trial, state=TrialState.FAIL)
        log.warning("trial %d failed: its objective is not a finite number", trial.number)
        return TrialState.FAIL
    _tell(ctx, trial, value)
    log.info("trial %d: %s = %.4f", trial.number, ctx.base.tune.metric, value)
    return TrialState.COMPLETE


def _tell(ctx: StudyContext, trial: optuna.Trial, value=None, state=None) -> None:
    told = ctx.study.tell(trial, value, state=state, skip_if_finished=True)
    if state is None and told.state != TrialState.COMPLETE:
        log.warning(
            "trial %d was marked %s by another worker while it ran (its lock looked free: is the "
            "study folder on a file system every worker shares?); its result is not counted",
            trial.number, told.state.name.lower(),
        )  # fmt: skip


def optimise(ctx: StudyContext, n_trials: int) -> Counter:
    """Run trials until the study holds `n_trials` finished (complete or pruned) ones, counting
    the trials other workers are running; returns the states."""
    fails = 0
    with WorkerLock(ctx.study_dir) as worker:
        while True:
            fail_dead_trials(ctx)
            states = counts(ctx.study)
            done = sum(states[s] for s in FINISHED)
            if done + states[TrialState.RUNNING] >= n_trials:
                return states
            fails = fails + 1 if one_trial(ctx, worker) == TrialState.FAIL else 0
            if fails >= FAILS_IN_A_ROW:
                raise MTLError(
                    f"{fails} trials in a row ended without a finite objective (diverged "
                    "training?). Narrow the space (e.g. lower the high end of the learning "
                    "rates) and rerun; the finished trials are kept."
                )
