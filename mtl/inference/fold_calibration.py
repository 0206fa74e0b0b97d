"""A run's calibration on its way into a Predictor: results.json "calibration" (fold k's scale and
bias, fitted on fold k's own validation rows: docs/calibration.md) matched to the folds a
Predictor loads, checked, and applied to each fold's probabilities before the blend.

Predictor holds it in predictor.json's form, {task: {"method", "folds": [params per model, in the
models' order]}}, so an export writes it as it is and every backend calibrates through the one
function `mtl.portable.calibrate`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mtl import portable
from mtl.errors import PredictError


def task_shapes(metas: dict) -> dict[str, tuple[int, bool]]:
    """{task: (outputs, multilabel)} of TaskMetas or their dicts (as checkpoints store them): what
    `mtl.portable.fold_calibrations` checks params against."""
    from mtl.data.tasks import TaskMeta

    metas = {n: m if isinstance(m, TaskMeta) else TaskMeta(**m) for n, m in metas.items()}
    return {name: (meta.num_outputs, meta.multilabel) for name, meta in metas.items()}


def checked(block, metas: dict, folds: list[str], where: str, fix: str) -> dict[str, dict]:
    """`mtl.portable.fold_calibrations` as mtl's error: naming `where` the block came from and
    `fix`."""
    try:
        return portable.fold_calibrations(block, task_shapes(metas), folds)
    except ValueError as err:
        raise PredictError(
            f"The calibration in {where} does not fit its models: {err}. {fix}"
        ) from None


def given(calibration, metas: dict, n_models: int) -> dict[str, dict]:
    """What a Predictor was given (predictor.json's form), checked against its models."""
    folds = [f"model {k + 1} of {n_models}" for k in range(n_models)]
    fix = 'Give {task: {"method": ..., "folds": [{"scale": [...], "bias": [...]} per model]}}.'
    return checked(calibration, metas, folds, "Predictor(calibration=...)", fix)


def from_results(results: dict, path: Path, fold_ids: list[int], metas: dict) -> dict[str, dict]:
    """results.json's "calibration" ({task: {"method", "folds": {"<k>": params}}}) for the folds
    `fold_ids` being loaded, in their order; {} for a run without one (from before calibration,
    or every task `calibration: none`). A calibrated task without params for a loaded fold (a
    fold finished after results.json was written) is an error: its probabilities would be on
    another scale than the other folds' and the thresholds."""
    block = results.get("calibration")
    if block is None:
        return {}
    fix = f"Refit it from the finished folds: python scripts/blend.py {path.parent}"
    if not isinstance(block, dict):
        return checked(block, metas, [], str(path), fix)  # the one message for a wrong type
    listed = {}
    for name, entry in block.items():
        folds = entry.get("folds") if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or entry.get("method") == "none":
            listed[name] = entry  # checked below
            continue
        if not isinstance(folds, dict):
            raise PredictError(
                f"The calibration in {path}, task '{name}', has no 'folds' object of params per "
                f"fold (got {type(folds).__name__}). {fix}"
            )
        missing = [k for k in fold_ids if str(k) not in folds]
        if missing:
            raise PredictError(
                f"{path} calibrates task '{name}' for fold(s) {', '.join(sorted(folds))} but not "
                f"for fold(s) {', '.join(map(str, missing))}, which are being loaded: results.json "
                f"is older than those folds. {fix}"
            )
        listed[name] = {"method": entry.get("method"), "folds": [folds[str(k)] for k in fold_ids]}
    return checked(listed, metas, [f"fold {k}" for k in fold_ids], str(path), fix)


def checkpoint_fold(path: Path) -> int | None:
    """k of a checkpoint inside a run's fold_<k>/ folder; None for one elsewhere."""
    found = re.fullmatch(r"fold_(\d+)", Path(path).resolve().parent.name)
    return None if found is None else int(found.group(1))


def for_checkpoint(results: dict, path: Path, checkpoint: Path, metas: dict) -> dict[str, dict]:
    """The calibration of one checkpoint: its fold's params when it lies in fold_<k>/ and the run
    (results.json at `path`) has calibration; {} when the run has none. A lone checkpoint (not in
    a fold_<k>/ folder) of a calibrated run is refused: which fold's params apply is unknown, and
    the run's thresholds are on the calibrated scale."""
    if not results.get("calibration"):
        return {}
    fold = checkpoint_fold(checkpoint)
    if fold is None:
        raise PredictError(
            f"{path} holds calibration per fold, but {checkpoint} is not in a fold_<k>/ folder, so "
            "which fold's calibration applies is unknown. Predict with the checkpoint where the "
            "run saved it (RUN/fold_<k>/), or with the whole run (Predictor.from_run)."
        )
    return from_results(results, path, [fold], metas)


def stale(results: dict, path: Path, spec: dict, manifest: dict) -> str | None:
    """None when an export's calibration (predictor.json) is its run's (`results`, read from
    `path`) for the folds it holds, else what differs: a run whose calibration was (re)fitted after
    the export, e.g. by `scripts/blend.py` on a run exported before calibration existed, would
    otherwise have its export answer other probabilities than Predictor."""
    block = results.get("calibration") or {}
    if not isinstance(block, dict):
        return None  # unreadable calibration: nothing to compare with (Predictor says why)
    folds = [str(s.get("fold", "")).removeprefix("fold_") for s in manifest.get("sources") or []]
    want = {
        name: {"method": entry.get("method"), "folds": [(entry.get("folds") or {}).get(k) for k in folds]}
        for name, entry in block.items()
        if isinstance(entry, dict) and entry.get("method") != "none"
    }  # fmt: skip
    if want == (spec.get("calibration") or {}):
        return None
    return (
        f"its calibration ({', '.join(spec.get('calibration') or {}) or 'none'}) is not the one "
        f"in {path} ({', '.join(want) or 'none'}), which was fitted or refitted after the export"
    )


def calibrate_folds(fold_probs: list[dict], calibration: dict, metas: dict) -> list[dict]:
    """Each model's {task: (N, C)} probabilities calibrated with that model's params (float64);
    tasks without calibration as they are."""
    return [
        {
            name: portable.calibrate(values, metas[name].multilabel, calibration[name]["folds"][k])
            if name in calibration
            else np.asarray(values)
            for name, values in probs.items()
        }
        for k, probs in enumerate(fold_probs)
    ]
