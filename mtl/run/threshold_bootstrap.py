"""Thresholds that transfer: a bootstrap over the tuning rows decides whether a tuned cut replaces
the fallback cut, the task's configured one (what the model decides untuned) — `cv.threshold_
bootstrap` resamples, docs/calibration.md.

A cut tuned on a few hundred rows fits their noise: the full-data toxicity cut tuned on ~600
selection rows (0.44) raised their macro-F1 and lowered an outside test split's (0.787 → 0.774,
issue 26). So every tuned cut (a binary task's; each label's of a multi-label task, on its own)
is tuned again in B bootstrap resamples of its tuning rows — the tuning function's grid,
objective and tie rule (mtl/run/blend.py) — and each resample's cut is scored against the
fallback on the rows that resample left out (out of bag), by the metric the tuning maximises.

Rule: the tuned cut is kept when the mean out-of-bag gain is positive AND the gain is ≥ 0 in at
least 80% of resamples; otherwise the fallback is used. The mean alone lets a few lucky
resamples carry a cut that loses on most unseen rows; the share alone keeps a cut that only ties.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np

from mtl.data.tasks import TaskMeta
from mtl.run.blend import (
    CUT_GRID,
    best_cut_index,
    f1_counts,
    tune_binary_threshold,
    tune_thresholds,
)

KEEP_SHARE = 0.8
KEEP_RULE = (
    "tuned cut kept when its mean out-of-bag gain over the fallback is > 0 and the gain is >= 0 "
    f"in at least {KEEP_SHARE:.0%} of resamples; otherwise the fallback (configured) cut"
)
_BLOCK = 1 << 23  # resamples × rows drawn at once: bounds memory on a large OOF set


@dataclass
class CutCheck:
    """One tuned cut and its bootstrap: what `results.json` "threshold_tuning" reports."""

    tuned: float  # tuned on every tuning row
    used: float  # tuned if kept, else the fallback
    kept: bool
    fallback: float
    cut_range: list[float]  # 5th and 95th percentile of the resamples' tuned cuts
    gain_mean: float  # out-of-bag metric at the resample's cut minus at the fallback, mean
    gain_range: list[float]  # its 5th and 95th percentile
    gain_share: float  # share of resamples whose gain is >= 0


def bag_weights(counts: np.ndarray) -> np.ndarray:
    """(B, N) draws per row → (2, B, N) weights: in bag (how often drawn), out of bag (0 / 1).
    float32 where it counts exactly (whole numbers below 2**24), for a fast matrix product."""
    weights = np.empty((2, *counts.shape), np.float32 if counts.shape[1] < 2**24 else np.float64)
    weights[0], weights[1] = counts, counts == 0
    return weights


def resample_gains(
    column: np.ndarray, truth: np.ndarray, weights: np.ndarray, fallback: float, macro: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per resample (`weights` from `bag_weights`), the cut tuned on its drawn rows and its
    out-of-bag gain over `fallback` → ((B,) cuts, (B,) gains).

    `column` (N,) is the probability cut, `truth` (N,) bool the label it calls; `macro`: the
    objective is macro-F1 over both classes (binary tasks), else the label's F1. A row drawn
    twice counts twice, so the drawn rows' counts are what the tuning function would count on
    the resampled rows; every grid cut's counts come from one histogram per resample."""
    cuts = np.unique(np.append(CUT_GRID, fallback))  # ascending; the fallback may be off-grid
    grid_at = np.searchsorted(cuts, CUT_GRID)
    fallback_at = np.searchsorted(cuts, fallback)
    # a row is called positive at cuts[j] (probability >= cut) exactly when j < level
    level = np.searchsorted(cuts, column, side="right")
    onehot = np.zeros((len(column), 2 * (len(cuts) + 1)), dtype=weights.dtype)
    onehot[np.arange(len(column)), level * 2 + truth] = 1
    b = weights.shape[1]
    # (in bag / out of bag, B, level, truth) → (B, bag, level, truth); a product of whole numbers
    hist = (weights.reshape(2 * b, -1) @ onehot).reshape(2, b, -1, 2).swapaxes(0, 1)
    hist = hist.astype(np.float64)
    called = np.flip(np.flip(hist, 2).cumsum(2), 2)[:, :, 1:]  # level > j: positive at cuts[j]
    tp, fp = called[..., 1], called[..., 0]
    fn = hist[..., 1].sum(2, keepdims=True) - tp
    score = f1_counts(tp, fp + fn)
    if macro:
        tn = hist[..., 0].sum(2, keepdims=True) - fp
        score = (score + f1_counts(tn, fp + fn)) / 2
    pick = best_cut_index(score[:, 0, grid_at], CUT_GRID)  # (B,) tuned on the drawn rows
    oob = score[:, 1]
    return CUT_GRID[pick], oob[np.arange(b), grid_at[pick]] - oob[:, fallback_at]


def check_cuts(
    probs: np.ndarray,
    labels: np.ndarray,
    multilabel: bool,
    fallback: list[float],
    resamples: int,
    seed: list[int],
) -> list[CutCheck]:
    """Every cut of one tuning (one per label, or a binary task's one) and its bootstrap.
    `probs` (N, C), `labels` as the tuning functions take them, `seed` a SeedSequence entropy,
    `resamples` at least 1."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    tune = tune_thresholds if multilabel else tune_binary_threshold
    tuned = tune(probs, labels)
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    columns = probs.T if multilabel else [probs[:, 1]]
    truths = labels.astype(bool).T if multilabel else [labels.astype(int) == 1]
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    n, block = len(probs), max(1, _BLOCK // max(1, len(probs)))
    found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in tuned]
    for start in range(0, resamples, block):
        draw = rng.integers(0, n, size=(min(block, resamples - start), n))
        draw += np.arange(len(draw))[:, None] * n  # resample b's draws → its own bins
        counts = np.bincount(draw.ravel(), minlength=draw.size).reshape(draw.shape)
        weights = bag_weights(counts)
        for c, (column, truth) in enumerate(zip(columns, truths, strict=True)):
            found[c].append(resample_gains(column, truth, weights, fallback[c], not multilabel))
    checks = []
    for cut, fall, parts in zip(tuned, fallback, found, strict=True):
        cuts, gains = (np.concatenate(x) for x in zip(*parts, strict=True))
        kept = bool(gains.mean() > 0 and (gains >= 0).mean() >= KEEP_SHARE)
        checks.append(
            CutCheck(
                tuned=cut,
                used=cut if kept else float(fall),
                kept=kept,
                fallback=float(fall),
                cut_range=[float(x) for x in np.percentile(cuts, [5, 95], method="nearest")],
                gain_mean=float(gains.mean()),
                gain_range=[float(x) for x in np.percentile(gains, [5, 95])],
                gain_share=float((gains >= 0).mean()),
            )
        )
    return checks


class TransferCheck:
    """A task's tuning function under the rule: called like it (rows in, cuts out) by
    `task_thresholds` — by `fold_thresholds` once per fold with other rows to tune on, in fold
    order, then on every OOF row — and it remembers each call's checks for `report`.
    Call i resamples from SeedSequence([seed, crc32(task name), i]): deterministic."""

    def __init__(self, meta: TaskMeta, resamples: int, seed: int):
        self.meta, self.resamples = meta, resamples
        self.seed = [seed, zlib.crc32(meta.name.encode())]
        width = meta.num_outputs if meta.multilabel else 1
        self.fallback = list(meta.threshold) or [0.5] * width
        self.calls: list[tuple[int, list[CutCheck]]] = []

    def __call__(self, probs: np.ndarray, labels: np.ndarray) -> list[float]:
        seed = [*self.seed, len(self.calls)]
        checks = check_cuts(
            probs, labels, self.meta.multilabel, self.fallback, self.resamples, seed
        )
        self.calls.append((len(probs), checks))
        return [c.used for c in checks]

    def report(self, crossed: dict[int, list[float] | None]) -> dict:
        """results.json "threshold_tuning" of the task: the last call's cuts (every OOF row:
        the blends', Predictor's and exports'), and per fold what its cross-fitted cut was."""
        folds = [k for k, cut in crossed.items() if cut is not None]  # fold_thresholds' calls
        *per_fold, (rows, final) = self.calls
        out: dict = {"resamples": self.resamples, "rule": KEEP_RULE, "rows": rows}
        if self.meta.multilabel:
            out["labels"] = dict(zip(self.meta.classes, map(asdict, final), strict=True))
        else:
            out |= asdict(final[0])
        out["folds"] = {
            str(k): {
                "rows": n,
                "tuned": [c.tuned for c in checks],
                "used": [c.used for c in checks],
                "kept": [c.kept for c in checks],
            }
            for k, (n, checks) in zip(folds, per_fold, strict=True)
        }
        return out


def tuning_lines(results: dict) -> list[str]:
    """report.md's table of the tuned cuts and their bootstrap (none when nothing was tuned)."""
    tuning = results.get("threshold_tuning") or {}
    if not tuning:
        return []
    lines = [
        "Thresholds that transfer: each tuned cut tuned again on bootstrap resamples of its "
        f"tuning rows and scored on the rows each left out ({KEEP_RULE}):",
        "",
        "| task | label | tuning rows | resamples | tuned | cut 5–95% | OOB gain mean | "
        "gain 5–95% | gain ≥ 0 | used |",
        "|" + "---|" * 10,
    ]
    for task, entry in tuning.items():
        for label, check in entry.get("labels", {"—": entry}).items():
            lo, hi = check["cut_range"]
            glo, ghi = check["gain_range"]
            verdict = "kept" if check["kept"] else "fallback"
            lines.append(
                f"| {task} | {label} | {entry['rows']} | {entry['resamples']} | "
                f"{check['tuned']:g} | {lo:g}–{hi:g} | {check['gain_mean']:+.4f} | "
                f"{glo:+.4f} to {ghi:+.4f} | {check['gain_share']:.0%} | "
                f"{check['used']:g} ({verdict}) |"
            )
    return ["", *lines]
