"""Calibration of one task's probabilities: the fit (tasks.<t>.calibration) and its metrics.

`fit` finds one fold's {"scale", "bias"} on that fold's own validation rows by minimising the
negative log-likelihood of `mtl.portable.calibrated(calibration_logits(p))` (the one function every
backend applies, so what is fitted here is what they compute). NLL is convex in scale and bias
for both forms (a logistic / multinomial regression on fixed logits), so L-BFGS-B from the
identity finds the optimum within the bounds:
  multi-label   per label c: p' = sigmoid(a_c * logit(p_c) + b_c)       (vector; temperature: b_c = 0)
  single-label  p' = softmax(a * log p + b), one a, b[0] = 0: softmax is blind to adding one
                constant to every b, so the first class's bias is fixed   (temperature: b = 0)

The metrics (docs/calibration.md):
  ECE    15 equal-mass bins: rows sorted by confidence, cut into bins of equal counts; the
         count-weighted mean |frequency - mean confidence|. Two-class single-label tasks: on the
         second class's probability; multiclass: top-label confidence and accuracy; multi-label:
         the mean over labels of each label's binary ECE.
  Brier  two-class: mean (p1 - y)^2; multiclass: mean over rows of the sum over classes;
         multi-label: the mean over labels of each label's mean (p_c - y_c)^2.
  NLL    single-label: mean -log p(true class); multi-label: the mean over labels of the binary
         cross-entropy. Probabilities clipped to [2**-24, 1 - 2**-24] (the resolution of the
         float32 probabilities models and fold files give, as calibration reads them).

Why not torchmetrics' CalibrationError: it bins by equal width only, and equal-width bins of an
over-confident model put most rows into the top bin or two. `ece(..., binning="width")` is the
equal-width variant, tested equal to torchmetrics' BinaryCalibrationError and
MulticlassCalibrationError (n_bins=15, norm="l1") in tests/run/test_calibration.py, which proves
the binning code the equal-mass variant shares.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize

from mtl.portable import CALIBRATION_METHODS, PROB_FLOOR, calibration_logits

log = logging.getLogger(__name__)

N_BINS = 15
SCALE_BOUNDS = (0.05, 20.0)  # a = 1/T: from 20x softer to 20x sharper than the model
# |b| <= 30 keeps a cut of 0.5 re-expressed on the calibrated scale (sigmoid(b)) away from 0 and
# 1, where float64 would round it and merge decisions the uncalibrated model kept apart
BIAS_BOUNDS = (-30.0, 30.0)
MIN_ROWS_PER_OUTCOME = 2  # fewer positives or negatives (rows of a class): nothing to fit


def identity(width: int, multilabel: bool) -> dict:
    """Params that leave probabilities as they are."""
    return {"scale": [1.0] * (width if multilabel else 1), "bias": [0.0] * width}


def fit(
    probs: np.ndarray,
    truth: np.ndarray,
    multilabel: bool,
    method: str,
    labels: list | None = None,
    where: str = "",
) -> dict:
    """One task's params on one fold's rows: `probs` (N, C), `truth` (N, C) multi-hot or (N,)
    class indices. A label (multi-label) or a task (single-label) with fewer than 2 rows of
    either outcome keeps the identity, and the log names it (`labels`: the output names;
    `where`: e.g. "task emotion, fold 2"). `method` none: the identity."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; one of {CALIBRATION_METHODS}")
    probs = np.asarray(probs, dtype=np.float64)
    width = probs.shape[1]
    labels = list(labels) if labels is not None else list(range(width))
    params = identity(width, multilabel)
    if method == "none":
        return params
    z = calibration_logits(probs, multilabel)
    short = unfittable(truth, multilabel, width)
    for c in short:
        rows = _outcome_rows(truth, multilabel, width)[c]
        what = "label" if multilabel else "class"
        log.warning(
            "calibration: %s%s %s has %d row(s) against %d other(s), fewer than %d of one "
            "outcome to fit on; %s keeps the identity (scale 1, bias 0)",
            f"{where}: " if where else "", what, labels[c], rows, len(probs) - rows,
            MIN_ROWS_PER_OUTCOME, "that label" if multilabel else "the task",
        )  # fmt: skip
    if multilabel:
        truth = np.asarray(truth, dtype=np.float64).reshape(len(probs), width)
        for c in sorted(set(range(width)) - set(short)):
            a, b = _fit_label(z[:, c], truth[:, c], method == "vector")
            params["scale"][c], params["bias"][c] = a, b
        return params
    if short:
        return params
    truth = np.asarray(truth).astype(np.int64).reshape(-1)
    a, b = _fit_classes(z, truth, method == "vector")
    params["scale"], params["bias"] = [a], b
    return params


def _outcome_rows(truth: np.ndarray, multilabel: bool, width: int) -> np.ndarray:
    """Positives per label (multi-label) or rows per class (single-label)."""
    if multilabel:
        return np.asarray(truth, dtype=np.float64).reshape(-1, width).sum(axis=0).astype(int)
    return np.bincount(np.asarray(truth).astype(np.int64).reshape(-1), minlength=width)


def unfittable(truth: np.ndarray, multilabel: bool, width: int) -> list[int]:
    """The outputs with fewer than MIN_ROWS_PER_OUTCOME rows of one outcome: multi-label, the
    labels short of positives or negatives (each keeps the identity); single-label, the classes
    short of rows (any one, and the task keeps the identity)."""
    rows = _outcome_rows(truth, multilabel, width)
    total = len(np.asarray(truth))
    short = np.minimum(rows, total - rows) if multilabel else rows
    return [int(c) for c in np.flatnonzero(short < MIN_ROWS_PER_OUTCOME)]


def _minimise(loss_and_grad, start: np.ndarray, bounds: list[tuple]) -> np.ndarray:
    """L-BFGS-B from the identity; the identity if the result is not better (never worse)."""
    found = minimize(
        loss_and_grad, start, jac=True, method="L-BFGS-B", bounds=bounds,
        options={"maxiter": 500, "ftol": 1e-12, "gtol": 1e-9},
    )  # fmt: skip
    if not np.all(np.isfinite(found.x)) or found.fun > loss_and_grad(start)[0]:
        return start
    return found.x


def _fit_label(z: np.ndarray, y: np.ndarray, with_bias: bool) -> tuple[float, float]:
    """(a, b) minimising the mean binary cross-entropy of sigmoid(a * z + b) against y."""

    def loss_and_grad(x):
        a, b = x[0], x[1] if with_bias else 0.0
        s = a * z + b
        # log(1 + e^s) - y * s, stably; its derivative in s is sigmoid(s) - y
        loss = np.mean(np.logaddexp(0.0, s) - y * s)
        residual = 0.5 * (1.0 + np.tanh(0.5 * s)) - y
        grad = [np.mean(residual * z)] + ([np.mean(residual)] if with_bias else [])
        return loss, np.asarray(grad)

    start = np.array([1.0, 0.0] if with_bias else [1.0])
    x = _minimise(loss_and_grad, start, [SCALE_BOUNDS] + ([BIAS_BOUNDS] if with_bias else []))
    return float(x[0]), float(x[1]) if with_bias else 0.0


def _fit_classes(z: np.ndarray, truth: np.ndarray, with_bias: bool) -> tuple[float, list]:
    """(a, b) minimising the mean cross-entropy of softmax(a * z + b); b[0] = 0."""
    n, width = z.shape
    onehot = np.zeros((n, width))
    onehot[np.arange(n), truth] = 1.0

    def loss_and_grad(x):
        a = x[0]
        b = np.concatenate([[0.0], x[1:]]) if with_bias else np.zeros(width)
        s = a * z + b
        s = s - s.max(axis=1, keepdims=True)
        log_q = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        residual = np.exp(log_q) - onehot  # d loss / d s, per row
        grad = [np.mean((residual * z).sum(axis=1))]
        if with_bias:
            grad += list(residual[:, 1:].mean(axis=0))
        return -np.mean(log_q[np.arange(n), truth]), np.asarray(grad)

    start = np.concatenate([[1.0], np.zeros(width - 1 if with_bias else 0)])
    bounds = [SCALE_BOUNDS] + [BIAS_BOUNDS] * (len(start) - 1)
    x = _minimise(loss_and_grad, start, bounds)
    bias = [0.0] + [float(v) for v in x[1:]] if with_bias else [0.0] * width
    return float(x[0]), bias


# --- metrics ---------------------------------------------------------------------------------


def _binary_views(probs: np.ndarray, truth: np.ndarray, multilabel: bool):
    """[(confidence (N,), outcome (N,) 0/1)] the task's ECE averages over (see the module doc)."""
    probs = np.asarray(probs, dtype=np.float64)
    if multilabel:
        truth = np.asarray(truth, dtype=np.float64).reshape(probs.shape)
        return [(probs[:, c], truth[:, c]) for c in range(probs.shape[1])]
    truth = np.asarray(truth).astype(np.int64).reshape(-1)
    if probs.shape[1] == 2:
        return [(probs[:, 1], (truth == 1).astype(np.float64))]
    return [(probs.max(axis=1), (probs.argmax(axis=1) == truth).astype(np.float64))]


def bin_index(confidence: np.ndarray, n_bins: int = N_BINS, binning: str = "mass") -> np.ndarray:
    """Each row's bin. mass: rows in confidence order (stable) cut into `n_bins` runs of equal
    counts (np.array_split: sizes differ by at most one; ties may straddle a cut). width: bins
    [i/n, (i+1)/n), and a confidence of exactly 1 in a bin of its own, as torchmetrics'
    `_binning_bucketize` does (torch.bucketize(right=True) over linspace(0, 1, n + 1))."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if binning == "width":
        return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1), confidence, side="right") - 1
    if binning != "mass":
        raise ValueError(f"binning must be 'mass' or 'width', got {binning!r}")
    index = np.empty(len(confidence), dtype=np.int64)
    for i, rows in enumerate(np.array_split(np.argsort(confidence, kind="stable"), n_bins)):
        index[rows] = i
    return index


def reliability(
    confidence: np.ndarray, outcome: np.ndarray, n_bins: int = N_BINS, binning: str = "mass"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty bin: (mean confidence, observed frequency, rows), in bin order."""
    index = bin_index(confidence, n_bins, binning)
    width = n_bins + 1  # the width binning's bin of exactly 1
    rows = np.bincount(index, minlength=width).astype(np.float64)
    mean_conf = np.bincount(index, weights=confidence, minlength=width)
    mean_out = np.bincount(index, weights=np.asarray(outcome, dtype=np.float64), minlength=width)
    kept = rows > 0
    return mean_conf[kept] / rows[kept], mean_out[kept] / rows[kept], rows[kept]


def binary_ece(
    confidence: np.ndarray, outcome: np.ndarray, n_bins: int = N_BINS, binning: str = "mass"
) -> float:
    """sum over bins of (rows / N) * |frequency - mean confidence|; nan without rows."""
    if len(confidence) == 0:
        return float("nan")
    conf, freq, rows = reliability(confidence, outcome, n_bins, binning)
    return float(np.sum(rows / rows.sum() * np.abs(freq - conf)))


def ece(
    probs: np.ndarray,
    truth: np.ndarray,
    multilabel: bool,
    n_bins: int = N_BINS,
    binning: str = "mass",
) -> float:
    """Expected calibration error of a task (the module doc says on what)."""
    views = _binary_views(probs, truth, multilabel)
    return float(np.mean([binary_ece(c, o, n_bins, binning) for c, o in views]))


def brier(probs: np.ndarray, truth: np.ndarray, multilabel: bool) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    if multilabel:
        truth = np.asarray(truth, dtype=np.float64).reshape(probs.shape)
        return float(np.mean((probs - truth) ** 2))  # equal rows per label: mean of means
    truth = np.asarray(truth).astype(np.int64).reshape(-1)
    if probs.shape[1] == 2:
        return float(np.mean((probs[:, 1] - (truth == 1)) ** 2))
    onehot = np.eye(probs.shape[1])[truth]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, truth: np.ndarray, multilabel: bool) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), PROB_FLOOR, 1.0 - PROB_FLOOR)
    if multilabel:
        y = np.asarray(truth, dtype=np.float64).reshape(p.shape)
        return float(np.mean(-(y * np.log(p) + (1.0 - y) * np.log1p(-p))))
    truth = np.asarray(truth).astype(np.int64).reshape(-1)
    return float(np.mean(-np.log(p[np.arange(len(p)), truth])))


def scores(probs: np.ndarray, truth: np.ndarray, multilabel: bool) -> dict[str, float]:
    """{"ece", "brier", "nll"} of one set of rows."""
    return {
        "ece": ece(probs, truth, multilabel),
        "brier": brier(probs, truth, multilabel),
        "nll": nll(probs, truth, multilabel),
    }


def pooled_views(probs: np.ndarray, truth: np.ndarray, multilabel: bool):
    """(confidence, outcome) of the reliability diagram: the ECE's views, a multi-label task's
    labels pooled into one (every row-label pair a point)."""
    views = _binary_views(probs, truth, multilabel)
    return np.concatenate([c for c, _ in views]), np.concatenate([o for _, o in views])
