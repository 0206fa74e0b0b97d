"""Issue 26: fitting calibration (mtl/calibration.py) and its metrics, on hand-made numbers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mtl.calibration import bin_index, brier, ece, fit, nll, scores
from mtl.portable import calibrate


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def multilabel_data(a, b, n=20000, seed=0):
    """Labels drawn from sigmoid(a * z + b); the model reports sigmoid(z) (float32, as files do)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, len(a)))
    truth = (rng.random(z.shape) < sigmoid(np.asarray(a) * z + np.asarray(b))).astype(int)
    return sigmoid(z).astype(np.float32), truth


def single_label_data(a, b, n=20000, seed=0):
    """Classes drawn from softmax(a * z + b); the model reports softmax(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, len(b)))
    true_p = softmax(a * z + np.asarray(b))
    truth = (rng.random((n, 1)) > true_p.cumsum(axis=1)).sum(axis=1)
    return softmax(z).astype(np.float32), truth


# --- fit ----------------------------------------------------------------------------------------


def test_vector_fit_recovers_the_scale_and_bias_the_multilabel_data_were_drawn_with():
    a, b = [0.5, 1.5, 0.8], [0.3, -1.0, 0.0]
    probs, truth = multilabel_data(a, b)
    params = fit(probs, truth, True, "vector")
    assert params["scale"] == pytest.approx(a, abs=0.06)
    assert params["bias"] == pytest.approx(b, abs=0.06)


def test_vector_fit_recovers_one_scale_and_class_biases_of_a_single_label_task():
    probs, truth = single_label_data(0.5, [0.0, 0.5, -0.5])
    params = fit(probs, truth, False, "vector")
    assert len(params["scale"]) == 1 and params["scale"][0] == pytest.approx(0.5, abs=0.05)
    assert params["bias"][0] == 0.0  # fixed: softmax is blind to a constant added to every bias
    assert params["bias"][1:] == pytest.approx([0.5, -0.5], abs=0.08)


def test_temperature_softens_an_over_confident_binary_model_and_fits_no_bias():
    probs, truth = single_label_data(0.4, [0.0, 0.0], seed=1)  # reported logits 2.5x too sharp
    params = fit(probs, truth, False, "temperature")
    assert params["scale"][0] < 1.0 and params["scale"][0] == pytest.approx(0.4, abs=0.05)
    assert params["bias"] == [0.0, 0.0]
    probs, truth = multilabel_data([0.4, 0.4], [0.0, 0.0], seed=2)
    params = fit(probs, truth, True, "temperature")
    assert all(s < 1.0 for s in params["scale"]) and params["bias"] == [0.0, 0.0]


@pytest.mark.parametrize("method", ["temperature", "vector"])
@pytest.mark.parametrize("multilabel", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_nll_is_never_worse_after_fitting_on_the_same_rows(method, multilabel, seed):
    """Calibrated, over-confident, under-confident, pure noise: the fit starts at the identity
    and keeps it unless it is better."""
    rng = np.random.default_rng(seed)
    a, shift = [1.0, 2.5, 0.3, 1.0][seed], [0.0, 0.5, -1.0, 0.0][seed]
    if multilabel:
        probs, truth = multilabel_data([a] * 3, [shift] * 3, n=300, seed=seed)
    else:
        probs, truth = single_label_data(a, [0.0, shift, -shift], n=300, seed=seed)
    if seed == 3:  # noise: probabilities that know nothing of the labels
        probs = rng.random(probs.shape).astype(np.float32)
        probs = probs if multilabel else probs / probs.sum(axis=1, keepdims=True)
    params = fit(probs, truth, multilabel, method)
    after = calibrate(probs, multilabel, params)
    assert nll(after, truth, multilabel) <= nll(probs, truth, multilabel) + 1e-9


def test_a_label_with_too_few_rows_of_one_outcome_keeps_the_identity_and_the_log_names_it(caplog):
    probs, truth = multilabel_data([0.5, 0.5, 0.5], [0.0, 0.0, 0.0], n=500)
    truth[:, 1] = 0
    truth[7, 1] = 1  # one positive: nothing to fit
    truth[:, 2] = 1
    truth[:2, 2] = 0  # two negatives: enough
    with caplog.at_level(logging.WARNING, logger="mtl.calibration"):
        params = fit(
            probs, truth, True, "vector", ["joy", "surprise", "neutral"], "task emo, fold 2"
        )
    assert params["scale"][1] == 1.0 and params["bias"][1] == 0.0
    assert params["scale"][0] != 1.0 and params["scale"][2] != 1.0
    assert "task emo, fold 2: label surprise has 1 row(s)" in caplog.text
    assert "joy" not in caplog.text and "neutral" not in caplog.text


def test_a_single_label_task_short_of_a_class_keeps_the_identity(caplog):
    probs, truth = single_label_data(0.5, [0.0, 0.0], n=200)
    truth[:] = 0
    truth[3] = 1
    with caplog.at_level(logging.WARNING, logger="mtl.calibration"):
        params = fit(probs, truth, False, "vector", ["no", "yes"], "task tox, fold 0")
    assert params == {"scale": [1.0], "bias": [0.0, 0.0]}
    assert "task tox, fold 0: class yes has 1 row(s) against 199" in caplog.text


def test_none_is_the_identity_and_an_unknown_method_is_refused():
    probs, truth = multilabel_data([0.5], [0.0], n=50)
    assert fit(probs, truth, True, "none") == {"scale": [1.0], "bias": [0.0]}
    with pytest.raises(ValueError, match="unknown calibration method 'platt'"):
        fit(probs, truth, True, "platt")


# --- metrics --------------------------------------------------------------------------------------


def test_equal_mass_bins_hold_equal_counts_in_confidence_order():
    confidence = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    assert bin_index(confidence, 3).tolist() == [2, 0, 1, 1, 2, 0]
    assert np.bincount(bin_index(np.random.default_rng(0).random(100), 15)).tolist() == [7] * 10 + [6] * 5  # fmt: skip


def test_binary_ece_by_hand_with_equal_mass_bins():
    # two bins of three rows: confidences (0.1, 0.2, 0.3) with one positive, (0.7, 0.8, 0.9) with
    # three: |1/3 - 0.2| * 1/2 + |1 - 0.8| * 1/2
    probs = np.array([[1 - p, p] for p in (0.1, 0.2, 0.3, 0.7, 0.8, 0.9)])
    truth = np.array([0, 1, 0, 1, 1, 1])
    expected = 0.5 * abs(1 / 3 - 0.2) + 0.5 * abs(1.0 - 0.8)
    assert ece(probs, truth, False, n_bins=2) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(3))
def test_equal_width_ece_is_torchmetrics_binary_calibration_error(seed):
    """The binning code's proof: its equal-width variant is torchmetrics' metric."""
    from torchmetrics.classification import BinaryCalibrationError

    rng = np.random.default_rng(seed)
    p1 = rng.random(997) ** 2
    p1[:5] = [0.0, 1.0, 1.0, 1 / 15, 0.5]  # the edges: 1.0 alone in its bin, as torchmetrics does
    truth = (rng.random(997) < p1**0.7).astype(int)
    reference = BinaryCalibrationError(n_bins=15, norm="l1")(
        torch.tensor(p1, dtype=torch.float64), torch.tensor(truth)
    )
    probs = np.stack([1 - p1, p1], axis=1)
    assert ece(probs, truth, False, binning="width") == pytest.approx(float(reference), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_equal_width_top_label_ece_is_torchmetrics_multiclass_calibration_error(seed):
    from torchmetrics.classification import MulticlassCalibrationError

    probs, truth = single_label_data(0.6, [0.0, 0.3, -0.2, 0.1], n=800, seed=seed)
    probs = probs.astype(np.float64) / probs.sum(axis=1, keepdims=True)
    reference = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")(
        torch.tensor(probs), torch.tensor(truth)
    )
    # torchmetrics casts the confidences to float32 (its _multiclass_calibration_error_update):
    # the same bins, sums a float32 rounding apart
    top = probs.max(axis=1).astype(np.float32).astype(np.float64)
    assert (bin_index(top, binning="width") == bin_index(probs.max(axis=1), binning="width")).all()
    assert ece(probs, truth, False, binning="width") == pytest.approx(float(reference), abs=1e-6)


def test_multilabel_ece_is_the_mean_of_each_labels_binary_ece():
    probs, truth = multilabel_data([0.5, 2.0, 1.0], [0.5, 0.0, -1.0], n=600)
    per_label = [
        ece(np.stack([1 - probs[:, c], probs[:, c]], axis=1), truth[:, c], False) for c in range(3)
    ]
    assert ece(probs, truth, True) == pytest.approx(np.mean(per_label))
    with pytest.raises(ValueError, match="binning must be"):
        ece(probs, truth, True, binning="quantile")


def test_brier_and_nll_by_hand():
    binary = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert brier(binary, np.array([1, 1]), False) == pytest.approx((0.2**2 + 0.6**2) / 2)
    assert nll(binary, np.array([1, 0]), False) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    # sum over classes per row, mean over rows
    expected = ((0.3**2 + 0.2**2 + 0.1**2) + (0.9**2 + 0.1**2 + 0.8**2)) / 2
    assert brier(three, np.array([0, 0]), False) == pytest.approx(expected)
    labels = np.array([[0.9, 0.2], [0.4, 0.5]])
    truth = np.array([[1, 0], [0, 1]])
    assert brier(labels, truth, True) == pytest.approx((0.01 + 0.04 + 0.16 + 0.25) / 4)
    bce = -(np.log(0.9) + np.log(0.8) + np.log(0.6) + np.log(0.5)) / 4
    assert nll(labels, truth, True) == pytest.approx(bce)
    # a probability of exactly 0 for the true class: clipped at float32's resolution, finite
    assert nll(np.array([[1.0, 0.0]]), np.array([1]), False) == pytest.approx(24 * np.log(2))
    assert set(scores(labels, truth, True)) == {"ece", "brier", "nll"}
