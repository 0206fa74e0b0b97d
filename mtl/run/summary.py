"""The arithmetic of a run's blend, with no file access: the finished folds' prediction frames in,
one `RunSummary` (results.json and the blended tables) out. mtl/run/cv.py reads and writes.

Every column of one task is scored from the prediction files under one threshold rule
(`threshold_rule`), so the columns compare:
  argmax  multiclass, and binary without a threshold: no thresholds anywhere
  fixed   the task's configured thresholds, in every column
  tuned   fold k's rows (its column, fold mean ± std, its share of the OOF score) are cut at
          thresholds tuned on the other finished folds' validation rows (cross-fitted); the
          val-set and test blends, Predictor and exports at thresholds tuned on every OOF row.
          A fold alone has no other rows to tune on and keeps the configured start (0.5).
          With `cv.threshold_bootstrap` > 0 every tuned cut (per fold and on every OOF row)
          is kept only where a bootstrap of its tuning rows says it transfers, else it falls
          back to the configured cut (mtl/run/threshold_bootstrap.py).

Calibration (tasks.<t>.calibration; mtl/run/calibrate_folds.py) comes first: every fold's
frames are calibrated (its own rows by cross-fitted params, its val-file and test rows by its
own), so tables are written and every column scored on calibrated probabilities; cuts (fixed,
or tuned on the uncalibrated rows) are re-expressed on that scale, so a fold's decisions stay
its model's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from box import Box

from mtl.data.tasks import TaskMeta
from mtl.model.metrics import majority_baseline, monitor_key, score_arrays
from mtl.run.blend import (
    blend,
    fold_thresholds,
    rank_blend,
    tune_binary_threshold,
    tune_thresholds,
)
from mtl.run.calibrate_folds import (
    calibrated_cuts,
    calibrated_sets,
    fit_task,
    results_entry,
    task_metrics,
)
from mtl.run.frames import KINDS, FoldFrames, probs_of, truth_of
from mtl.run.threshold_bootstrap import TransferCheck

__all__ = ["KINDS", "FoldFrames", "RunSummary", "probs_of", "summarise", "truth_of"]
log = logging.getLogger(__name__)
NO_FIT_ROWS = (
    "not fitted: with cv.n_splits=1 and cv.selection=last no rows are set aside to fit it on "
    "(the fold's validation rows are the val set, which only reports); use cv.selection=best or "
    "k-fold (cv.n_splits>1) to calibrate"
)


@dataclass
class RunSummary:
    results: dict  # results.json
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # run-folder file → frame
    # task → the val set's blended (before, after, truth, multilabel): calibration.png
    reliability: dict[str, tuple] = field(default_factory=dict)


@dataclass
class TaskThresholds:
    rule: str  # tuned | fixed | argmax
    blends: list[float] | None  # the val-set and test blends (results.json "thresholds")
    folds: dict[int, list[float] | None]  # fold k's rows: its column and its share of OOF
    tuning: dict | None = None  # the bootstrap of the tuned cuts (results.json "threshold_tuning")


def threshold_rule(meta: TaskMeta, configured) -> str:
    """How a task's labels are decided, in every column of the report."""
    if configured == "tuned" and (meta.multilabel or meta.type == "binary"):
        return "tuned"
    return "fixed" if meta.multilabel or meta.threshold else "argmax"


def out_of_fold(frames: FoldFrames) -> pd.DataFrame | None:
    """The folds' own validation rows in one frame with a fold column, by row then fold."""
    if not frames:
        return None
    parts = []
    for k, frame in frames.items():
        part = frame.copy()
        part.insert(1, "fold", k)  # after `row`
        parts.append(part)
    return (
        pd.concat(parts, ignore_index=True)
        .sort_values(["row", "fold"], kind="stable")
        .reset_index(drop=True)
    )


def task_thresholds(
    meta: TaskMeta,
    rule: str,
    oof: pd.DataFrame | None,
    folds: list[int],
    resamples: int = 0,
    seed: int = 0,
) -> TaskThresholds:
    """The thresholds of every column of one task (see the module docstring), on the scale of
    `oof`'s probabilities; `resamples` > 0: each tuned cut checked by that many bootstrap
    resamples seeded from `seed`, falling back to the configured cut."""
    configured = list(meta.threshold) or None
    if rule != "tuned" or oof is None:
        return TaskThresholds(rule, configured, {k: configured for k in folds})
    tune = tune_thresholds if meta.multilabel else tune_binary_threshold
    if resamples:
        tune = TransferCheck(meta, resamples, seed)
    probs, truth = probs_of(oof, meta), truth_of(oof, meta)
    crossed = fold_thresholds(probs, truth, oof["fold"].to_numpy(), tune)
    blends = tune(probs, truth)
    tuning = tune.report(crossed) if isinstance(tune, TransferCheck) else None
    return TaskThresholds(rule, blends, {k: crossed.get(k) or configured for k in folds}, tuning)


def fold_table(
    meta: TaskMeta, frames: FoldFrames, cuts: TaskThresholds, logged: dict[int, dict]
) -> dict:
    """Per fold, every metric of its own validation rows (its prediction file) at that fold's
    thresholds; mean and std over folds. `loss` (threshold-free) is the one logged in training."""
    per_fold = {}
    for k, frame in frames.items():
        scores = score_arrays(meta, probs_of(frame, meta), truth_of(frame, meta), cuts.folds[k])
        loss = logged[k].get("metrics", {}).get(f"val/{meta.name}/loss")
        per_fold[str(k)] = scores | ({"loss": float(loss)} if loss is not None else {})
    names = sorted({m for values in per_fold.values() for m in values})
    return {
        "folds": per_fold,
        "mean": {m: float(np.mean([v[m] for v in per_fold.values() if m in v])) for m in names},
        "std": {m: float(np.std([v[m] for v in per_fold.values() if m in v])) for m in names},
    }


def score_oof(meta: TaskMeta, oof: pd.DataFrame, cuts: TaskThresholds) -> dict:
    """Every OOF row at its own fold's thresholds: the pooled version of the fold columns."""
    per_row = None
    if all(cuts.folds.get(k) is not None for k in set(oof["fold"])):  # argmax: none
        per_row = np.asarray([cuts.folds[k] for k in oof["fold"]], dtype=np.float64)
    return score_arrays(meta, probs_of(oof, meta), truth_of(oof, meta), per_row)


def blend_frames(
    meta: TaskMeta, frames: FoldFrames, method: str, weights: dict[int, float], cut
) -> tuple[pd.DataFrame, dict | None, np.ndarray | None]:
    """The folds' predictions of one set blended → (frame with probabilities and labels, score
    or None, true labels or None). With the rank blend the frame also holds `<task>_<class>_rank`
    columns, and AUROC is computed from them; labels and the other metrics come from the mean."""
    first = next(iter(frames.values()))
    per_fold = [probs_of(f, meta) for f in frames.values()]
    probs = blend(per_fold, method, [weights[k] for k in frames])
    frame = first[["row", "text"]].copy()
    frame[meta.prob_columns()] = probs
    ranks = rank_blend(per_fold) if method == "rank" else None
    if ranks is not None:
        frame[[f"{c}_rank" for c in meta.prob_columns()]] = ranks
    frame[f"{meta.name}_label"] = meta.label_column(probs, cut)
    truth = truth_of(first, meta)
    if truth is None:
        return frame, None, None
    return frame, score_arrays(meta, probs, truth, cut, rank_scores=ranks), truth


def summarise(
    cfg: Box,
    metas: dict[str, TaskMeta],
    folds: dict[int, dict],
    predictions: dict[str, dict[str, FoldFrames]],
    overlap: dict,
    selected_on: str,
) -> RunSummary:
    """`folds`: fold → metrics.json of every finished fold; `predictions`: task → kind → fold →
    its prediction frame (checked finite by the reader). Pure: the same inputs, the same summary."""
    expected = list(range(max(1, cfg.cv.n_splits)))
    monitored = [float(fm.get("metrics", {}).get(monitor_key(cfg), np.nan)) for fm in folds.values()]  # fmt: skip
    weights = {k: float(fm.get("metrics", {}).get("val/score", 0.0)) for k, fm in folds.items()}
    resamples = cfg.cv.threshold_bootstrap
    results: dict = {
        "run": cfg.run.name,
        "n_splits": max(1, cfg.cv.n_splits),
        "folds": list(folds),
        "missing_folds": [k for k in expected if k not in folds],
        "monitor": cfg.monitor.metric,
        "blend": cfg.cv.blend,
        "score": None,
        "score_rows": "each task's val set (its val file, or rows held out of its training file), "
        "blended over folds: never trained on, never used to choose anything",
        "selected_on": selected_on,
        "selection_biased": cfg.cv.selection == "best",
        "selection_score": float(np.mean(monitored)),
        "selection_score_std": float(np.std(monitored)),
        "thresholds": {},
        "calibration": {},
        "tasks": {},
    }
    no_fit_rows = cfg.cv.n_splits <= 1 and cfg.cv.selection == "last"
    if no_fit_rows and any(cfg.tasks[n].calibration != "none" for n in metas):
        results["calibration_note"] = NO_FIT_ROWS
        log.warning("calibration: %s", NO_FIT_ROWS)
    tables: dict[str, pd.DataFrame] = {}
    reliability: dict[str, tuple] = {}
    oof_scores, test_scores, val_scores = [], [], []
    for name, meta in metas.items():
        raw = predictions.get(name, {})
        method = "none" if no_fit_rows else cfg.tasks[name].calibration
        cal = fit_task(meta, raw.get("val", {}), method)
        sets = calibrated_sets(meta, raw, cal)
        oof = out_of_fold(sets.get("val", {}))
        rule = threshold_rule(meta, cfg.tasks[name].threshold)
        # cuts tuned (and bootstrap-checked) on the uncalibrated OOF rows, then re-expressed, so
        # each fold decides as its model did: on calibrated rows the cut grid (0.05..0.95) misses
        # the low cuts a rare label needs (the full-data emotion lost 0.016 macro-F1 that way)
        uncal = task_thresholds(
            meta, rule, out_of_fold(raw.get("val", {})), list(folds), resamples, cfg.seed
        )
        cuts = TaskThresholds(rule, *calibrated_cuts(meta, cal, uncal.blends, uncal.folds), uncal.tuning)  # fmt: skip
        if cuts.blends is not None:
            results["thresholds"][name] = cuts.blends
        if cuts.tuning is not None:
            results.setdefault("threshold_tuning", {})[name] = cuts.tuning
        entry = fold_table(meta, sets.get("val", {}), cuts, folds)
        entry["threshold_rule"] = cuts.rule
        entry["fold_thresholds"] = {str(k): cuts.folds[k] for k in sets.get("val", {})}
        entry["val_source"] = "file" if cfg.tasks[name].val else "held out of the training file"
        entry["overlap_with_training"] = overlap.get(name, {})
        if oof is not None and cfg.cv.n_splits > 1:
            entry["oof"] = score_oof(meta, oof, cuts)
            entry["oof_rows"] = len(oof)
            entry["oof_baseline"] = majority_baseline(meta, truth_of(oof, meta))
            oof_scores.append(entry["oof"][meta.primary_metric])
            tables[f"oof_{name}.csv"] = oof
        for kind in ("test", "valfile"):
            if not sets.get(kind):
                continue
            frame, score, truth = blend_frames(meta, sets[kind], cfg.cv.blend, weights, cuts.blends)
            tables[f"{'test' if kind == 'test' else 'val'}_{name}.csv"] = frame
            if score is None:
                continue
            entry[f"{kind}_blended"] = score
            (test_scores if kind == "test" else val_scores).append(score[meta.primary_metric])
            if kind == "valfile":
                entry["baseline"] = majority_baseline(meta, truth)
        results["tasks"][name] = entry
        if cal is not None:
            metrics, diagram = task_metrics(meta, raw, sets, cal, cfg.cv.blend, weights)
            if diagram is not None:
                reliability[name] = (*diagram, meta.multilabel)
            results["calibration"][name] = results_entry(meta, cal, cfg.cv.n_splits, metrics)
    if val_scores:
        results["score"] = float(np.mean(val_scores))
        results["score_tasks"] = [n for n, e in results["tasks"].items() if "valfile_blended" in e]
    if oof_scores:
        results["oof_score"] = float(np.mean(oof_scores))
    if test_scores and len(test_scores) == len(metas):
        results["test_score"] = float(np.mean(test_scores))
    return RunSummary(results, tables, reliability)
