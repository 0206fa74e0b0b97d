"""A run's calibration in its blend (tasks.<t>.calibration), with no file access: mtl/run/summary.py
calls it on the finished folds' prediction frames before anything is blended or scored.

Which rows fit what (docs/calibration.md):
  own      fold k's params, fitted on fold k's own validation rows (fold_<k>/val_<task>.csv; with
           cv.n_splits 1, the selection rows): they calibrate fold k's val-file and test rows
           before the blend (results.json "calibration", what Predictor and exports apply)
  crossed  the params fold k's OWN rows are reported with (oof_<task>.csv, the fold columns, the
           OOF score and calibration metrics): fitted on the other finished folds' validation
           rows, as thresholds are cross-fitted, so no row is scored with a calibration fitted on
           it. A fold alone has no other rows: its rows get its own params (labelled in-sample).
Cuts of the uncalibrated models (a configured threshold, a binary argmax, or cuts tuned on the
uncalibrated rows) are re-expressed on the calibrated scale by the same map (`calibrated_cuts`),
so the label decisions of each fold stay those of its uncalibrated model; the blends' cut is the
mean of the folds' re-expressed cuts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mtl.calibration import fit, scores, unfittable
from mtl.data.tasks import TaskMeta
from mtl.portable import blend, calibrate
from mtl.run.frames import FoldFrames, probs_of, truth_of


@dataclass
class TaskCalibration:
    method: str
    own: dict[int, dict]  # fold → params fitted on its own validation rows
    crossed: dict[int, dict]  # fold → params its own rows are reported with
    in_sample: bool  # one fold: its rows are reported with params fitted on them
    rows: dict[int, int]  # fold → rows that fitted `own`
    kept_identity: dict[int, list] = field(default_factory=dict)  # fold → outputs left unfitted


def fit_task(meta: TaskMeta, val: FoldFrames, method: str) -> TaskCalibration | None:
    """Fit every fold's params on its own validation rows, and the cross-fitted params of its
    rows on the other folds' rows; None for `none` or without validation rows."""
    if method == "none" or not val:
        return None

    def fitted(frames: list[pd.DataFrame], where: str) -> dict:
        probs = np.concatenate([probs_of(f, meta) for f in frames])
        truth = np.concatenate([truth_of(f, meta) for f in frames])
        return fit(probs, truth, meta.multilabel, method, meta.classes, where)

    own, kept = {}, {}
    for k, frame in val.items():
        own[k] = fitted([frame], f"task {meta.name}, fold {k} (its validation rows)")
        short = unfittable(truth_of(frame, meta), meta.multilabel, meta.num_outputs)
        if short:
            kept[k] = [meta.classes[c] for c in short]
    if len(val) == 1:
        crossed = dict(own)
    else:
        crossed = {
            k: fitted(
                [f for j, f in val.items() if j != k],
                f"task {meta.name}, the folds other than {k} (cross-fitted for fold {k}'s rows)",
            )
            for k in val
        }
    rows = {k: len(f) for k, f in val.items()}
    return TaskCalibration(method, own, crossed, len(val) == 1, rows, kept)


def calibrated_frames(meta: TaskMeta, frames: FoldFrames, params: dict[int, dict]) -> FoldFrames:
    """Copies of the folds' frames with each fold's probabilities calibrated by its params (a
    fold without params: as it is)."""
    out = {}
    for k, frame in frames.items():
        copy = frame.copy()
        copy[meta.prob_columns()] = calibrate(probs_of(frame, meta), meta.multilabel, params.get(k))
        out[k] = copy
    return out


def reexpress(meta: TaskMeta, cut: list[float], params: dict | None) -> list[float]:
    """A cut on the uncalibrated probabilities → the same cut on the calibrated ones (each label's
    map is increasing, so p >= cut exactly where p' >= cut'); a binary cut is on the second
    class: its row [1 - t, t] calibrated."""
    if meta.multilabel:
        return [float(v) for v in calibrate(np.asarray([cut]), True, params)[0]]
    t = float(cut[0])
    return [float(calibrate(np.asarray([[1.0 - t, t]]), False, params)[0, 1])]


def calibrated_cuts(
    meta: TaskMeta,
    cal: TaskCalibration | None,
    blends: list[float] | None,
    at_folds: dict[int, list[float] | None],
) -> tuple[list[float] | None, dict[int, list[float] | None]]:
    """Cuts of the uncalibrated probabilities (configured, or tuned on them) → the same cuts on the
    calibrated scale: (the blends' cut, fold → the cut of its own rows). Each label's map is
    increasing, so a fold decides its rows exactly as its uncalibrated model did; the blends' cut
    is the mean of the folds' re-expressed cuts (exact with one fold). A binary task under vector
    calibration has a cut even at the argmax (0.5 before, sigmoid(b1 - b0) after: a class bias
    moves the argmax); a multiclass task keeps the argmax of its calibrated probabilities
    (temperature leaves it as it was; vector may not)."""
    if cal is None or (not meta.multilabel and meta.num_outputs != 2):
        return blends, at_folds

    def base(cut: list[float] | None) -> list[float] | None:
        return cut or ([0.5] if meta.type == "binary" and cal.method == "vector" else None)

    folds = {
        k: reexpress(meta, b, cal.crossed.get(k)) if (b := base(cut)) else None
        for k, cut in at_folds.items()
    }
    if (b := base(blends)) is None:
        return None, folds
    blended = np.mean([reexpress(meta, b, p) for p in cal.own.values()], axis=0)
    return [float(v) for v in blended], folds


def blend_pair(
    meta: TaskMeta,
    raw: FoldFrames,
    calibrated: FoldFrames,
    method: str,
    weights: dict[int, float],
) -> tuple[np.ndarray, np.ndarray] | None:
    """(before, after) blended probabilities of one set of rows, or None without true labels."""
    if truth_of(next(iter(raw.values())), meta) is None:
        return None

    def blended(frames: FoldFrames) -> np.ndarray:
        return blend([probs_of(f, meta) for f in frames.values()], method, [weights[k] for k in frames])  # fmt: skip

    return blended(raw), blended(calibrated)


def kind_metrics(meta: TaskMeta, before: np.ndarray, after: np.ndarray, truth, rows: str) -> dict:
    """ECE / Brier / NLL of one set of rows before and after calibration."""
    return {
        "rows": rows,
        "n": int(len(truth)),
        "before": scores(before, truth, meta.multilabel),
        "after": scores(after, truth, meta.multilabel),
    }


def results_entry(meta: TaskMeta, cal: TaskCalibration, n_splits: int, metrics: dict) -> dict:
    """results.json "calibration"[task]: the params per fold (what every backend applies), the
    rows that fitted them, and the metrics per reported set of rows."""
    return {
        "method": cal.method,
        "fitted_on": (
            f"each fold's own validation rows (fold_<k>/val_{meta.name}.csv"
            + ("; with one split, the selection rows" if n_splits <= 1 else "")
            + "); never a val or test file"
        ),
        "folds": {str(k): p for k, p in cal.own.items()},
        "fitted_rows": {str(k): n for k, n in cal.rows.items()},
        "kept_identity": {str(k): v for k, v in cal.kept_identity.items()},
        "own_rows_params": {str(k): p for k, p in cal.crossed.items()},
        "own_rows_in_sample": cal.in_sample,
        "metrics": metrics,
    }


def calibrated_sets(
    meta: TaskMeta, raw: dict[str, FoldFrames], cal: TaskCalibration | None
) -> dict[str, FoldFrames]:
    """kind → fold → frame as the blend scores it: each fold's own rows (`val`) by their
    cross-fitted params, its val-file and test rows by its own params; unchanged without `cal`."""
    if cal is None:
        return raw
    return {
        kind: calibrated_frames(meta, frames, cal.crossed if kind == "val" else cal.own)
        for kind, frames in raw.items()
    }


ROWS = {
    "valfile": "the val set (its val file, or rows held out of the training file), blended over "
    "folds: rows that fitted nothing",
    "test": "the test file, blended over folds",
    "oof": "every fold's own validation rows, each fold's calibrated by params fitted on the "
    "other finished folds' rows (cross-fitted)",
    "selection": "the fold's own validation rows (the selection rows), calibrated by the params "
    "fitted on them: in-sample",
}


def task_metrics(
    meta: TaskMeta,
    raw: dict[str, FoldFrames],
    sets: dict[str, FoldFrames],
    cal: TaskCalibration,
    method: str,
    weights: dict[int, float],
) -> tuple[dict, tuple | None]:
    """(per reported set of rows — valfile, test: blended; oof or, for a fold alone, selection:
    its own rows — ECE / Brier / NLL before and after calibration, the val set's (before, after,
    truth) for the reliability diagram or None)."""
    out, diagram = {}, None
    for kind in ("valfile", "test"):
        if raw.get(kind):
            pair = blend_pair(meta, raw[kind], sets[kind], method, weights)
            if pair is not None:
                truth = truth_of(next(iter(raw[kind].values())), meta)
                out[kind] = kind_metrics(meta, *pair, truth, ROWS[kind])
                diagram = (*pair, truth) if kind == "valfile" else diagram
    if raw.get("val"):
        # the same rows in the same order: each fold's rows in turn
        before = np.concatenate([probs_of(f, meta) for f in raw["val"].values()])
        after = np.concatenate([probs_of(f, meta) for f in sets["val"].values()])
        truth = np.concatenate([truth_of(f, meta) for f in raw["val"].values()])
        kind = "selection" if cal.in_sample else "oof"
        out[kind] = kind_metrics(meta, before, after, truth, ROWS[kind])
    return out, diagram
