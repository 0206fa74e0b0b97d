"""int8 against fp32 at export: how often the quantized models decide a label as the fp32 ones do,
measured on the run's own val texts, and the gate that refuses an int8 export below a minimum.

Dynamic int8 quantization moves probabilities a little; on a well-trained model that changes few
labels, on a weakly trained one (probabilities near the thresholds) many: the default run's int8
export once changed 12% of emotion label sets. So the export measures it on texts like the ones
the model will see, records it in manifest.json, and refuses below `--min-int8-agreement`
(default 99% of each task's label decisions) unless `--force`.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from mtl.errors import MTLError, PredictError

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99  # of each task's label decisions (a multi-label text holds one per label)
ROWS_PER_TASK = 300  # val texts per task: enough to see a 1% disagreement, seconds on a CPU


def label_agreement(a: list, b: list, multilabel: bool, classes: list) -> tuple[float, float]:
    """(share of label decisions that agree, share of texts whose whole answer agrees)."""
    per_text = float(np.mean([x == y for x, y in zip(a, b, strict=True)]))
    if not multilabel:
        return per_text, per_text
    decisions = [(c in x) == (c in y) for x, y in zip(a, b, strict=True) for c in classes]
    return float(np.mean(decisions)), per_text


def _candidates(cfg, run_dir: Path, name: str):
    """(read texts, what they are) for one task, best first."""
    from mtl.data.files import read_table, resolve_path

    task = cfg.tasks.get(name) or {}
    if task.get("val"):
        path = resolve_path(cfg, task.val)
        key, encoding = f"tasks.{name}.val", task.get("encoding")
        yield partial(read_table, path, key, encoding), task.text_column, f"val file {path}"
    for path in [run_dir / f"val_{name}.csv", *sorted(run_dir.glob(f"fold_*/val_{name}.csv"))]:
        what = "report rows" if path.parent == run_dir else "selection rows"
        yield partial(pd.read_csv, path, keep_default_na=False), "text", f"{what} {path}"


def val_texts(cfg, run_dir: Path, tasks: list[str]) -> tuple[list, dict[str, str]]:
    """Up to ROWS_PER_TASK texts per task (a seeded sample of larger files, in file order), and
    where each task's came from: the task's val file (from the run's config), else the run's
    report rows (RUN/val_<task>.csv: the val file or the rows held out of training), else the
    folds' selection rows (fold_<k>/val_<task>.csv)."""
    texts, sources = [], {}
    for name in tasks:
        for read, column, what in _candidates(cfg, run_dir, name):
            try:
                texts_here = read()[column]
            except (MTLError, OSError, ValueError, KeyError) as err:
                log.info("int8 check: cannot use the %s (%s)", what, err)
                continue
            if len(texts_here) > ROWS_PER_TASK:  # a seeded sample: a file may be sorted by label
                texts_here = texts_here.sample(n=ROWS_PER_TASK, random_state=0).sort_index()
            found = texts_here.tolist()
            if found:
                texts += found
                sources[name] = f"{len(found)} texts of the {what}"
                break
    return texts, sources


def measure(fp32, int8, texts: list, sources: dict[str, str], minimum: float) -> dict:
    """int8 against fp32 (two OnnxPredictors of one export) on `texts`, per task; the manifest's
    `int8_agreement`."""
    a = fp32.labels(fp32.predict_proba(texts))
    b = int8.labels(int8.predict_proba(texts))
    tasks = {}
    for name, meta in fp32.metas.items():
        decisions, whole = label_agreement(a[name], b[name], meta.multilabel, list(meta.classes))
        tasks[name] = {"label_decisions": decisions, "texts": whole}
    return {
        "texts": len(texts),
        "sources": sources,
        "tasks": tasks,
        "min_label_decisions": min(t["label_decisions"] for t in tasks.values()),
        "minimum": minimum,
    }


def gate(agreement: dict, force: bool) -> dict:
    """`agreement` with `passed` and `forced`; a PredictError when below its minimum without force."""
    worst = min(agreement["tasks"], key=lambda t: agreement["tasks"][t]["label_decisions"])
    low = agreement["min_label_decisions"] < agreement["minimum"]
    if low and not force:
        entry = agreement["tasks"][worst]
        raise PredictError(
            f"The int8 models agree with the fp32 ones on {entry['label_decisions']:.1%} of task "
            f"'{worst}''s label decisions ({entry['texts']:.1%} of its texts) over "
            f"{agreement['texts']} texts ({', '.join(agreement['sources'].values())}), below --min-int8-agreement "
            f"{agreement['minimum']:.2%}: int8 would change labels. Nothing was written (a "
            "previous export stays as it was). Export fp32 only (leave out --quantize), train "
            "the model further, or pass --force to export int8 anyway (the agreement is recorded "
            "in manifest.json)."
        )
    return dict(agreement, passed=not low, forced=bool(low and force))


def summary(agreement: dict) -> str:
    """One line for the export's output."""
    tasks = ", ".join(f"{t} {e['label_decisions']:.1%}" for t, e in agreement["tasks"].items())
    verdict = "FORCED below" if agreement.get("forced") else "minimum"
    return (
        f"int8 vs fp32 label agreement on {agreement['texts']} texts: {tasks} of label "
        f"decisions ({verdict} {agreement['minimum']:.0%})"
    )
