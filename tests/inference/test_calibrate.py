"""mtl.portable.calibrate, the one function every backend applies to a fold's probabilities before
the blend, against values worked out by hand; and the checks of the params it is given."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mtl.portable import calibrate, fold_calibrations

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_multilabel_scales_and_shifts_each_labels_logit():
    probs = np.array([[0.2, 0.9, 0.5], [0.5, 0.5, 0.2]], dtype=np.float32)
    # logit(0.2) = ln(1/4), so 2·logit = ln(1/16) → 1/17, and + ln 2 → ln(1/8) → 1/9;
    # logit(0.9) = ln 9, so 0.5·logit = ln 3 → 3/4; logit(0.5) = 0, + ln 3 → 3/4
    params = {"scale": [2.0, 0.5, 1.0], "bias": [0.0, 0.0, LN3]}
    want = [[1 / 17, 3 / 4, 3 / 4], [1 / 2, 1 / 2, 3 / 7]]  # logit(0.2) + ln 3 = ln(3/4) → 3/7
    np.testing.assert_allclose(calibrate(probs, True, params), want, rtol=1e-6)
    shifted = calibrate(probs[:1], True, {"scale": [2.0, 1.0, 1.0], "bias": [LN2, 0.0, 0.0]})
    np.testing.assert_allclose(shifted[0, 0], 1 / 9, rtol=1e-6)


def test_binary_is_a_two_class_softmax_of_scaled_log_probabilities():
    probs = np.array([[0.2, 0.8], [0.5, 0.5]], dtype=np.float32)
    # softmax(2·log p) = p² / Σp²: 0.04 / 0.68 = 1/17; with bias [0, ln 2]: 0.04 / 1.32 = 1/33
    np.testing.assert_allclose(
        calibrate(probs, False, {"scale": [2.0], "bias": [0.0, 0.0]}),
        [[1 / 17, 16 / 17], [0.5, 0.5]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        calibrate(probs, False, {"scale": [2.0], "bias": [0.0, LN2]}),
        [[1 / 33, 32 / 33], [1 / 3, 2 / 3]],
        rtol=1e-6,
    )


def test_multiclass_temperature_and_bias():
    p = np.array([[0.5, 0.3, 0.2]])
    # temperature 2 (scale 1/2): softmax(log p / 2) = √p / Σ√p
    got = calibrate(p, False, {"scale": [0.5], "bias": [0.0, 0.0, 0.0]})
    np.testing.assert_allclose(got, np.sqrt(p) / np.sqrt(p).sum(), rtol=1e-12)
    np.testing.assert_allclose(got, [[0.4154459, 0.3218030, 0.2627511]], rtol=1e-6)
    # scale 1, bias [ln 2, 0, 0]: [1.0, 0.3, 0.2] / 1.5
    got = calibrate(p, False, {"scale": [1.0], "bias": [LN2, 0.0, 0.0]})
    np.testing.assert_allclose(got, [[2 / 3, 0.2, 2 / 15]], rtol=1e-12)


def test_identity_params_and_no_params_give_the_input_back():
    rng = np.random.default_rng(0)
    multi = rng.uniform(0.01, 0.99, size=(20, 4)).astype(np.float32)
    single = rng.dirichlet(np.ones(3), size=20).astype(np.float32)
    identity = {"scale": [1.0] * 4, "bias": [0.0] * 4}
    np.testing.assert_allclose(calibrate(multi, True, identity), multi, rtol=0, atol=1e-7)
    identity = {"scale": [1.0], "bias": [0.0] * 3}
    # float32 rows sum to 1 within 1e-7; softmax renormalises them exactly
    np.testing.assert_allclose(calibrate(single, False, identity), single, rtol=0, atol=2e-7)
    for none in (None, {}):  # a task without calibration, or a run from before it
        np.testing.assert_array_equal(calibrate(multi, True, none), multi)


@pytest.mark.parametrize(
    "multilabel, params, words",
    [
        (True, {"scale": [1.0, 1.0], "bias": [0.0, 0.0, 0.0]}, "scale [1.0, 1.0] and bias"),
        (True, {"scale": [1.0] * 3, "bias": [0.0]}, "and bias [0.0] do not fit"),
        (False, {"scale": [1.0, 1.0, 1.0], "bias": [0.0] * 3}, "scale [1.0, 1.0, 1.0] and"),
        (False, {"scale": [1.0], "bias": [0.0, 0.0]}, "and bias [0.0, 0.0] do not fit"),
        (False, {"scale": [0.0], "bias": [0.0] * 3}, "scale [0.0] and"),
        (False, {"scale": [-1.0], "bias": [0.0] * 3}, "scale [-1.0] and"),
        (True, {"scale": [1.0, float("nan"), 1.0], "bias": [0.0] * 3}, "scale [1.0, nan, 1.0]"),
        (True, {"scale": [1.0, float("inf"), 1.0], "bias": [0.0] * 3}, "scale [1.0, inf, 1.0]"),
        (False, {"scale": [1.0], "bias": [0.0, float("nan"), 0.0]}, "bias [0.0, nan, 0.0]"),
        (False, {"scale": [1.0]}, 'is not {"scale": [...], "bias": [...]}'),
        (False, {"scale": ["two"], "bias": [0.0] * 3}, 'is not {"scale"'),
        (False, [1.0, 0.0], 'is not {"scale"'),
    ],
)
def test_params_that_do_not_fit_are_refused(multilabel, params, words):
    probs = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="calibration parameters") as err:
        calibrate(probs, multilabel, params)
    message = str(err.value)
    assert words in message and "re-export" in message, message
    if "do not fit" in message:  # the rule, said once for every shape and value
        rule = "one scale per label" if multilabel else "one scale and one bias per output"
        assert f"a task of 3 outputs: {rule}" in message and "every scale positive" in message


TASKS = {"emotion": (3, True), "toxicity": (2, False)}
GOOD = {
    "emotion": {
        "method": "vector",
        "folds": [{"scale": [1.0, 2.0, 0.5], "bias": [0.0, 0.1, -0.1]}] * 2,
    },
    "toxicity": {"method": "temperature", "folds": [{"scale": [0.5], "bias": [0.0, 0.0]}] * 2},
}


def test_fold_calibrations_keeps_the_calibrated_tasks_and_skips_none():
    assert fold_calibrations(None, TASKS, ["a", "b"]) == {}
    block = dict(GOOD, toxicity={"method": "none"})
    assert fold_calibrations(block, TASKS, ["a", "b"]) == {"emotion": GOOD["emotion"]}
    assert fold_calibrations(GOOD, TASKS, ["a", "b"]) == GOOD


@pytest.mark.parametrize(
    "block, words",
    [
        ([1, 2], "must be an object per task, not a list"),
        ({"topic": GOOD["emotion"]}, "task 'topic' is not among the models' tasks"),
        ({"emotion": dict(GOOD["emotion"], method="platt")}, "unknown calibration method 'platt'"),
        (
            {"emotion": dict(GOOD["emotion"], folds=GOOD["emotion"]["folds"][:1])},
            "'folds' holds 1, not one {scale, bias} per model (fold_0.onnx, fold_1.onnx)",
        ),
        ({"emotion": dict(GOOD["emotion"], folds={"0": {}})}, "'folds' holds dict, not one"),
        (
            {
                "toxicity": dict(
                    GOOD["toxicity"],
                    folds=[GOOD["toxicity"]["folds"][0], {"scale": [-1.0], "bias": [0, 0]}],
                )
            },  # fmt: skip
            "task 'toxicity', fold_1.onnx: scale [-1.0]",
        ),
    ],
)
def test_fold_calibrations_names_the_task_and_model_that_is_wrong(block, words):
    with pytest.raises(ValueError) as err:
        fold_calibrations(block, TASKS, ["fold_0.onnx", "fold_1.onnx"])
    assert words in str(err.value)
