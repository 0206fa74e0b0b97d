"""After the folds: out-of-fold predictions, tuned thresholds, blended test predictions, results.

Works from the run folder alone, so `scripts/blend.py checkpoints/<run>` can combine folds that
ran as separate jobs (`--folds 0,2`) and say which are missing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from box import Box

from mtl.data.tasks import TaskMeta
from mtl.errors import MTLError, first_line
from mtl.io import write_csv, write_json
from mtl.model.metrics import majority_baseline, monitor_key, score_arrays
from mtl.run.blend import (
    blend,
    cross_fit_thresholds,
    rank_blend,
    tune_binary_threshold,
    tune_thresholds,
)

log = logging.getLogger(__name__)


def finished_folds(run_dir: Path) -> dict[int, dict]:
    """fold number → its metrics.json, for every fold_<k> that has one (a finished fold), in order."""
    done = {}
    for path in run_dir.glob("fold_*/metrics.json"):
        suffix = path.parent.name.removeprefix("fold_")
        if not suffix.isdigit():
            continue
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise MTLError(
                f"Cannot read {path}: {first_line(err)}. Delete it to retrain that fold."
            ) from None
        if not isinstance(metrics, dict):
            raise MTLError(f"{path} must hold a JSON object, got {type(metrics).__name__}.")
        done[int(suffix)] = metrics
    return dict(sorted(done.items()))


def read_metas(run_dir: Path) -> dict[str, TaskMeta]:
    return {
        name: TaskMeta(**meta)
        for name, meta in json.loads((run_dir / "tasks.json").read_text()).items()
    }


def selection_note(cfg: Box) -> str:
    """In words: which rows chose the checkpoint (the rows whose scores are selection-biased)."""
    if cfg.cv.selection == "last":
        return "the last epoch of each fold (no rows chose it)"
    if cfg.cv.n_splits > 1:
        return f"each fold's best epoch by {cfg.monitor.metric} on that fold's own rows"
    return (
        f"the best epoch by {cfg.monitor.metric} on a held-out {cfg.data.val_fraction:g} of "
        "the training rows"
    )


def collect(cfg: Box, run_dir: Path) -> dict:
    """Summarise every finished fold of the run in `run_dir`; write results.json and the CSVs.

    Headline `score`: the mean primary metric of the tasks' val sets (val files, or rows held out
    of the training file), blended over folds: rows nothing was trained or chosen on. The fold and
    OOF scores come from the rows that chose each fold's epoch and are labelled selection-biased."""
    metas = read_metas(run_dir)
    folds = finished_folds(run_dir)
    expected = list(range(max(1, cfg.cv.n_splits)))
    missing = [k for k in expected if k not in folds]
    if not folds:
        raise FileNotFoundError(f"{run_dir} has no finished fold (no fold_*/metrics.json)")
    if missing:
        log.warning(
            "blending %d of %d folds; missing folds: %s", len(folds), len(expected), missing
        )
    scores = [fm["metrics"].get("val/score", 0.0) for fm in folds.values()]
    monitored = [_monitored(cfg, fm) for fm in folds.values()]
    overlap_path = run_dir / "overlap.json"
    overlap = json.loads(overlap_path.read_text()) if overlap_path.is_file() else {}
    results: dict = {
        "run": cfg.run.name,
        "n_splits": max(1, cfg.cv.n_splits),
        "folds": list(folds),
        "missing_folds": missing,
        "monitor": cfg.monitor.metric,
        "blend": cfg.cv.blend,
        "score": None,
        "score_rows": "each task's val set (its val file, or rows held out of its training file), "
        "blended over folds: never trained on, never used to choose anything",
        "selected_on": selection_note(cfg),
        "selection_biased": cfg.cv.selection == "best",
        "selection_score": float(np.mean(monitored)),
        "selection_score_std": float(np.std(monitored)),
        "thresholds": {},
        "tasks": {},
    }
    oof_scores, test_scores, val_scores = [], [], []
    for name, meta in metas.items():
        entry = fold_table(name, folds)
        entry["val_source"] = "file" if cfg.tasks[name].val else "held out of the training file"
        entry["overlap_with_training"] = overlap.get(name, {})
        oof = read_fold_frames(run_dir, folds, f"val_{name}.csv")
        probs, truth = (None, None) if oof is None else (_probs(oof, meta), _truth(oof, meta))
        tunable = meta.multilabel or meta.type == "binary"
        tuned = oof is not None and tunable and cfg.tasks[name].threshold == "tuned"
        tune = tune_thresholds if meta.multilabel else tune_binary_threshold
        thresholds = tune(probs, truth) if tuned else None
        thresholds = thresholds or meta.threshold or None
        if thresholds is not None:
            results["thresholds"][name] = thresholds
        if oof is not None and cfg.cv.n_splits > 1:
            # cross-fitted: fold k's rows are scored with thresholds tuned on the other folds
            cut = (
                cross_fit_thresholds(probs, truth, oof["fold"].to_numpy(), tune)
                if tuned
                else thresholds
            )
            entry["oof"] = score_arrays(meta, probs, truth, cut)
            entry["oof_rows"] = len(oof)
            entry["oof_baseline"] = majority_baseline(meta, truth)
            oof_scores.append(entry["oof"][meta.primary_metric])
            write_csv(run_dir / f"oof_{name}.csv", oof)
        for kind in ("test", "valfile"):
            blended = blend_kind(run_dir, folds, kind, meta, cfg.cv.blend, scores, thresholds)
            if blended is None:
                continue
            frame, score, truth = blended
            write_csv(run_dir / f"{'test' if kind == 'test' else 'val'}_{name}.csv", frame)
            if score is not None:
                entry[f"{kind}_blended"] = score
                primary = score[meta.primary_metric]
                (test_scores if kind == "test" else val_scores).append(primary)
                if kind == "valfile":
                    entry["baseline"] = majority_baseline(meta, truth)
        results["tasks"][name] = entry
    if val_scores:
        results["score"] = float(np.mean(val_scores))
        results["score_tasks"] = [n for n, e in results["tasks"].items() if "valfile_blended" in e]
    if oof_scores:
        results["oof_score"] = float(np.mean(oof_scores))
    if test_scores and len(test_scores) == len(metas):
        results["test_score"] = float(np.mean(test_scores))
    write_json(run_dir / "results.json", results)
    return results


def headline(results: dict) -> str:
    """The log line: the clean score first, the selection-biased one labelled as such."""
    clean = (
        f"val-set score {results['score']:.4f} (blended; rows never trained or chosen on)"
        if results.get("score") is not None
        else "no val-set score (no task has a val file or held-out rows)"
    )
    biased = results.get("selection_biased", True)
    return (
        f"{clean}; {'selection-biased ' if biased else ''}fold score "
        f"{results['selection_score']:.4f} ± {results['selection_score_std']:.4f} "
        f"({results['monitor']} on each fold's validation rows"
        + (", which chose its epoch)" if biased else ")")
    )


def _monitored(cfg: Box, fold_metrics: dict) -> float:
    return float(fold_metrics["metrics"].get(monitor_key(cfg), float("nan")))


def fold_table(name: str, folds: dict[int, dict]) -> dict:
    """Per fold, this task's validation metrics at the best epoch; mean and std over folds."""
    prefix = f"val/{name}/"
    per_fold = {
        str(k): {m[len(prefix) :]: v for m, v in fm["metrics"].items() if m.startswith(prefix)}
        for k, fm in folds.items()
    }
    names = sorted({m for values in per_fold.values() for m in values})
    return {
        "folds": per_fold,
        "mean": {m: float(np.mean([v[m] for v in per_fold.values() if m in v])) for m in names},
        "std": {m: float(np.std([v[m] for v in per_fold.values() if m in v])) for m in names},
    }


def read_fold_frames(run_dir: Path, folds: dict[int, dict], filename: str) -> pd.DataFrame | None:
    """Concatenate fold_<k>/<filename> (each fold's own validation rows) with a fold column."""
    frames = []
    for k in folds:
        path = run_dir / f"fold_{k}" / filename
        if path.is_file():
            frame = pd.read_csv(path, keep_default_na=False)
            frame.insert(1, "fold", k)
            frames.append(frame)
    if not frames:
        return None
    return (
        pd.concat(frames, ignore_index=True)
        .sort_values(["row", "fold"], kind="stable")
        .reset_index(drop=True)
    )


def blend_kind(
    run_dir: Path,
    folds: dict[int, dict],
    kind: str,
    meta: TaskMeta,
    method: str,
    fold_scores: list[float],
    thresholds: list[float] | None,
) -> tuple[pd.DataFrame, dict | None, np.ndarray | None] | None:
    """Blend fold_<k>/<kind>_<task>.csv over folds → (frame with probabilities and labels, score,
    true labels or None). With the rank blend the frame also holds `<task>_<class>_rank` columns,
    and AUROC is computed from them; labels and the other metrics come from the mean blend."""
    frames = {k: run_dir / f"fold_{k}" / f"{kind}_{meta.name}.csv" for k in folds}
    present = {k: pd.read_csv(p, keep_default_na=False) for k, p in frames.items() if p.is_file()}
    if not present:
        return None
    first = next(iter(present.values()))
    per_fold = [f[meta.prob_columns()].to_numpy() for f in present.values()]
    probs = blend(
        per_fold, method, [s for k, s in zip(folds, fold_scores, strict=True) if k in present]
    )
    frame = first[["row", "text"]].copy()
    frame[meta.prob_columns()] = probs
    ranks = rank_blend(per_fold) if method == "rank" else None
    if ranks is not None:
        frame[[f"{c}_rank" for c in meta.prob_columns()]] = ranks
    frame[f"{meta.name}_label"] = meta.label_column(probs, thresholds)
    if not all(c in first.columns for c in meta.truth_columns()):
        return frame, None, None
    truth = _truth(first, meta)
    return frame, score_arrays(meta, probs, truth, thresholds, rank_scores=ranks), truth


def _probs(frame: pd.DataFrame, meta: TaskMeta) -> np.ndarray:
    return frame[meta.prob_columns()].to_numpy(dtype=np.float64)


def _truth(frame: pd.DataFrame, meta: TaskMeta) -> np.ndarray:
    values = frame[meta.truth_columns()].to_numpy()
    return values if meta.multilabel else values[:, 0].astype(np.int64)
