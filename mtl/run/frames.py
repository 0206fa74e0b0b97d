"""The finished folds' prediction frames as the blend reads them: fold_<k>/<kind>_<task>.csv."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtl.data.tasks import TaskMeta

KINDS = ("val", "valfile", "test")  # fold_<k>/<kind>_<task>.csv: its own rows, val set, test
FoldFrames = dict[int, pd.DataFrame]  # fold → one task's prediction frame of one kind


def probs_of(frame: pd.DataFrame, meta: TaskMeta) -> np.ndarray:
    return frame[meta.prob_columns()].to_numpy(dtype=np.float64)


def truth_of(frame: pd.DataFrame, meta: TaskMeta) -> np.ndarray | None:
    if not all(c in frame.columns for c in meta.truth_columns()):
        return None
    values = frame[meta.truth_columns()].to_numpy()
    return values if meta.multilabel else values[:, 0].astype(np.int64)
