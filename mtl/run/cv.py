"""After the folds: read the run folder, blend what is finished, write results.json, the blended
CSVs and the report, all or none, under the run lock. The arithmetic (thresholds, cross-fitting,
blends, scores) is mtl/run/summary.py, which touches no file.

Works from the run folder alone, so `scripts/blend.py checkpoints/<run>` can combine folds that
ran as separate jobs (`--folds 0,2`) and say which are missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from box import Box

from mtl.config import to_dict
from mtl.data.tasks import TaskMeta
from mtl.errors import MTLError, first_line, first_rows
from mtl.io import _to_builtin, default_mode, remove_orphaned_tmp, tmp_prefix
from mtl.run.calibration_report import PNG, reliability_png, write_tensorboard
from mtl.run.runfolder import run_lock
from mtl.run.summary import KINDS, FoldFrames, summarise

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
    path = run_dir / "tasks.json"
    try:
        return {
            name: TaskMeta(**meta)
            for name, meta in json.loads(path.read_text(encoding="utf-8")).items()
        }
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise MTLError(
            f"Cannot read the run's tasks from {path}: {first_line(err)}. Training writes it "
            f"before the first fold; rerun scripts/train.py with this run's config to rewrite it."
        ) from None


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


def collect(cfg: Box, run_dir: Path, with_config: bool = False) -> dict:
    """Blend every fold finished at this moment; write results.json, the blended CSVs and the
    report together; return the results (mtl/run/summary.py computes them).

    Headline `score`: the mean primary metric of the tasks' val sets (val files, or rows held out
    of the training file), blended over folds: rows nothing was trained or chosen on. The fold and
    OOF scores come from the rows that chose each fold's epoch and are labelled selection-biased.

    Under the run lock: fold jobs of one run (a SLURM array) each blend when they finish, and a
    blend that read fewer folds must never land after one that read more. Inside the lock the
    folds are read, so the last blend written has every fold finished by then. `with_config`:
    `cfg` replaces the folder's config.yaml in the same write (scripts/blend.py's overrides of
    blend-only keys), so the next blend keeps them."""
    from mtl.run.report import report_files

    with run_lock(run_dir):
        with contextlib.suppress(OSError):  # a read-only folder is refused by the write below
            remove_orphaned_tmp(run_dir)  # the staged files of a blend that was killed
            remove_orphaned_tmp(run_dir / "tensorboard")  # its calibration scalars
        metas = read_metas(run_dir)
        folds = finished_folds(run_dir)
        if not folds:
            raise MTLError(
                f"{run_dir} has no finished fold (no fold_<k>/metrics.json): nothing to blend. "
                f"Train at least one fold first (scripts/train.py --folds 0 with this run's config)."
            )
        summary = summarise(
            cfg, metas, folds, read_predictions(run_dir, folds, metas, cfg.cv.blend),
            read_overlap(run_dir), selection_note(cfg),
        )  # fmt: skip
        results = summary.results
        if results["missing_folds"]:
            log.warning(
                "blending %d of %d folds; missing folds: %s",
                len(folds), results["n_splits"], results["missing_folds"],
            )  # fmt: skip
        files: dict[str, str | bytes | pd.DataFrame] = dict(summary.tables)
        files.update(report_files(run_dir, results))
        diagram = reliability_png(results, summary.reliability)
        if diagram is not None:
            files[PNG] = diagram
        if with_config:
            files["config.yaml"] = yaml.safe_dump(to_dict(cfg), sort_keys=False)
        files["results.json"] = json.dumps(results, indent=2, default=_to_builtin) + "\n"
        try:
            write_together(run_dir, files)
        except OSError as err:
            raise MTLError(
                f"Cannot write the blend into run folder {run_dir}: {type(err).__name__}: "
                f"{first_line(err)}. Nothing in the folder was changed: results.json, the blended "
                f"CSVs and the report are as they were (each file is staged beside its place and "
                f"renamed in only once all are written). Make the folder writable or free disk "
                f"space, then run scripts/blend.py {run_dir} again; or copy the folder somewhere "
                f"writable and blend the copy."
            ) from None
        if diagram is None:  # nothing calibrated now: no diagram of an earlier blend's
            (run_dir / PNG).unlink(missing_ok=True)
        try:
            write_tensorboard(run_dir, results)
        except OSError as err:  # a view of results.json, which is written: say so, go on
            log.warning(
                "calibration scalars not written to %s: %s: %s (results.json has them)",
                run_dir / "tensorboard" / "calibration", type(err).__name__, first_line(err),
            )  # fmt: skip
    return results


def write_together(folder: Path, files: dict[str, str | bytes | pd.DataFrame]) -> None:
    """Write every file or none: each is staged as a temp file beside its place (mtl.io's temp
    names, so remove_orphaned_tmp clears a killed writer's), and only once all are staged are they
    renamed in, in the given order (results.json last). On an error (read-only folder, disk full)
    the staged files are removed and the old ones stay as they were."""
    staged: list[tuple[str, Path]] = []
    try:
        for name, content in files.items():
            fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(name), suffix=".tmp", dir=folder)
            os.close(fd)
            staged.append((tmp, folder / name))
            write_file(tmp, content)
            os.chmod(tmp, default_mode())  # mkstemp creates 0600
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def write_file(path: str, content: str | bytes | pd.DataFrame) -> None:
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    else:
        data = content.encode("utf-8") if isinstance(content, str) else content
        with open(path, "wb") as handle:
            handle.write(data)


def read_overlap(run_dir: Path) -> dict:
    path = run_dir / "overlap.json"
    return json.loads(path.read_text()) if path.is_file() else {}


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


def read_predictions(
    run_dir: Path, folds: dict[int, dict], metas: dict[str, TaskMeta], method: str
) -> dict[str, dict[str, FoldFrames]]:
    """task → kind → fold → fold_<k>/<kind>_<task>.csv, every probability checked to be a
    finite number in [0, 1]: a fold that trained to NaN is refused, never blended."""
    if method == "weighted":  # the weights are the folds' scores
        for k, fm in folds.items():
            score = fm.get("metrics", {}).get("val/score", 0.0)
            if not isinstance(score, int | float) or not math.isfinite(score):
                raise MTLError(
                    f"Fold {k}'s val/score in {run_dir / f'fold_{k}' / 'metrics.json'} is "
                    f"{score!r}, so it cannot weight the blend (cv.blend=weighted). "
                    + retrain_hint(run_dir, k)
                )
    out: dict[str, dict[str, FoldFrames]] = {}
    for name, meta in metas.items():
        for kind in KINDS:
            for k in folds:
                path = run_dir / f"fold_{k}" / f"{kind}_{name}.csv"
                if path.is_file():
                    frame = read_prediction_file(path, meta, run_dir, k)
                    out.setdefault(name, {}).setdefault(kind, {})[k] = frame
    return out


def read_prediction_file(path: Path, meta: TaskMeta, run_dir: Path, fold: int) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, keep_default_na=False)  # a text "nan" stays a text
    except (OSError, ValueError) as err:
        raise MTLError(
            f"Cannot read fold {fold}'s predictions {path}: {first_line(err)}. "
            + retrain_hint(run_dir, fold)
        ) from None
    columns = meta.prob_columns()
    missing = [c for c in ["row", "text", *columns] if c not in frame.columns]
    if missing:
        raise MTLError(
            f"Fold {fold}'s predictions {path} lack the column(s) {missing}. "
            + retrain_hint(run_dir, fold)
        )
    raw = frame[columns]
    probs = raw.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    # float32 softmax / sigmoid can land a hair outside [0, 1]; anything further is not a probability
    bad = ~np.isfinite(probs) | (probs < -1e-6) | (probs > 1 + 1e-6)
    if bad.any():
        i, c = np.argwhere(bad)[0]
        rows = frame["row"].to_numpy()[bad.any(axis=1)]
        raise MTLError(
            f"Fold {fold}'s predictions {path} hold {int(bad.sum())} value(s) that are not "
            f"probabilities (finite numbers in [0, 1]) in {int(bad.any(axis=1).sum())} row(s) "
            f"(rows {first_rows(rows)}; e.g. {columns[c]} = {raw.iat[i, c]!r}): the fold's model "
            f"trained to NaN or infinity, or the file was damaged. Blending refuses it rather "
            f"than write NaN. " + retrain_hint(run_dir, fold)
        )
    frame[columns] = probs
    return frame


def retrain_hint(run_dir: Path, fold: int) -> str:
    return (
        f"Delete the folder {run_dir / f'fold_{fold}'} and retrain that fold (python "
        f"scripts/train.py --config {run_dir / 'config.yaml'} --folds {fold}; if its loss "
        f"diverged, with a lower learning rate in a new run); the other folds are kept."
    )
