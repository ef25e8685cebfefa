"""Metrics checked against values worked out by hand in the comments."""

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from neurovit.metrics import (
    classification_metrics,
    ece_if_calibrated,
    expected_calibration_error,
    per_class_intervals,
    rank_auc,
    reliability_bins,
    roc_curves,
)

NAMES = ["A", "B", "C"]

# Six samples, three classes. Prediction = argmax of each row.
#   row  y_true  probs               pred  top prob  correct
#   0    A       [0.70, 0.20, 0.10]  A     0.70      yes
#   1    A       [0.35, 0.55, 0.10]  B     0.55      no
#   2    B       [0.10, 0.75, 0.15]  B     0.75      yes
#   3    B       [0.20, 0.50, 0.30]  B     0.50      yes
#   4    C       [0.10, 0.15, 0.75]  C     0.75      yes
#   5    C       [0.50, 0.10, 0.40]  A     0.50      no
Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.35, 0.55, 0.10],
        [0.10, 0.75, 0.15],
        [0.20, 0.50, 0.30],
        [0.10, 0.15, 0.75],
        [0.50, 0.10, 0.40],
    ]
)


@pytest.fixture(scope="module")
def report():
    return classification_metrics(Y_TRUE, PROBS, NAMES)


def test_accuracy_and_confusion_matrix(report):
    # 4 of 6 correct. Rows true, columns predicted: A -> (A, B), B -> (B, B), C -> (C, A).
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["n"] == 6
    assert report["class_names"] == NAMES


def test_per_class_counting_metrics(report):
    # A: TP 1 (row 0), FN 1 (row 1), FP 1 (row 5), TN 3 -> sens 1/2, spec 3/4, prec 1/2, F1 1/2.
    # B: TP 2, FN 0, FP 1 (row 1), TN 3           -> sens 1,   spec 3/4, prec 2/3, F1 2*(2/3)/(5/3) = 4/5.
    # C: TP 1 (row 4), FN 1 (row 5), FP 0, TN 4   -> sens 1/2, spec 1,   prec 1,   F1 2*(1/2)/(3/2) = 2/3.
    expected = {
        "A": {"sensitivity": 1 / 2, "specificity": 3 / 4, "precision": 1 / 2, "f1": 1 / 2, "support": 2},
        "B": {"sensitivity": 1.0, "specificity": 3 / 4, "precision": 2 / 3, "f1": 4 / 5, "support": 2},
        "C": {"sensitivity": 1 / 2, "specificity": 1.0, "precision": 1.0, "f1": 2 / 3, "support": 2},
    }
    for name, values in expected.items():
        for key, value in values.items():
            assert report["per_class"][name][key] == pytest.approx(value), (name, key)


def test_macro_f1(report):
    # (1/2 + 4/5 + 2/3) / 3 = (15 + 24 + 20) / 90 = 59/90.
    assert report["macro_f1"] == pytest.approx(59 / 90)


def test_one_vs_rest_auc_by_counting_pairs(report):
    # AUC = fraction of (positive, negative) pairs where the positive scores higher.
    # A: positives 0.70, 0.35; negatives 0.10 0.20 0.10 0.50. 0.70 beats 4, 0.35 beats 3 -> 7/8.
    # B: positives 0.75, 0.50; negatives 0.20 0.55 0.15 0.10. 0.75 beats 4, 0.50 beats 3 -> 7/8.
    # C: positives 0.75, 0.40; negatives 0.10 0.10 0.15 0.30. both beat all 4              -> 8/8.
    assert report["per_class"]["A"]["auc"] == pytest.approx(7 / 8)
    assert report["per_class"]["B"]["auc"] == pytest.approx(7 / 8)
    assert report["per_class"]["C"]["auc"] == pytest.approx(1.0)


def test_auc_counts_a_tie_as_half():
    # Class 1 scores: positives 0.8, 0.4; negatives 0.4, 0.2.
    # Pairs: 0.8>0.4, 0.8>0.2, 0.4=0.4 (half), 0.4>0.2 -> 3.5 / 4.
    y_true = np.array([1, 1, 0, 0])
    class_one = np.array([0.8, 0.4, 0.4, 0.2])
    probs = np.stack([1 - class_one, class_one], axis=1)
    report = classification_metrics(y_true, probs, ["no", "yes"])
    assert report["per_class"]["yes"]["auc"] == pytest.approx(3.5 / 4)


def test_nll_is_mean_negative_log_of_true_class_probability(report):
    true_class_probs = [0.70, 0.35, 0.75, 0.50, 0.75, 0.40]
    assert report["nll"] == pytest.approx(-sum(math.log(p) for p in true_class_probs) / 6)


def test_ece_with_fifteen_bins(report):
    # Bins of width 1/15; (lo, hi]. 0.50 -> bin (7/15, 8/15], 0.55 -> (8/15, 9/15],
    # 0.70 -> (10/15, 11/15], 0.75 -> (11/15, 12/15].
    #   bin with 0.50, 0.50: one right one wrong -> |0.5 - 0.5| = 0,    weight 2/6
    #   bin with 0.55:       wrong                -> |0 - 0.55|   = 0.55, weight 1/6
    #   bin with 0.70:       right                -> |1 - 0.70|   = 0.30, weight 1/6
    #   bin with 0.75, 0.75: both right           -> |1 - 0.75|   = 0.25, weight 2/6
    # ECE = (0 + 0.55 + 0.30 + 2 * 0.25) / 6 = 1.35 / 6.
    assert report["ece"] == pytest.approx(1.35 / 6)
    assert expected_calibration_error(PROBS, Y_TRUE) == pytest.approx(1.35 / 6)


def test_ece_two_bin_toy():
    # Bins (0, 0.5] and (0.5, 1].
    #   high bin: confidences 0.9 (right), 0.7 (wrong) -> mean conf 0.8, acc 0.5, gap 0.3,   weight 2/4
    #   low bin:  confidences 0.4 (right), 0.45 (wrong) -> mean conf 0.425, acc 0.5, gap 0.075, weight 2/4
    # ECE = 0.5 * 0.3 + 0.5 * 0.075 = 0.1875.
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.3, 0.45, 0.25]])
    y_true = np.array([0, 1, 0, 2])
    assert expected_calibration_error(probs, y_true, n_bins=2) == pytest.approx(0.1875)


def test_reliability_bins_put_a_confidence_on_an_edge_into_the_lower_bin():
    bins = reliability_bins(np.array([[0.5, 0.5], [0.9, 0.1]]), np.array([0, 1]), n_bins=2)
    assert bins["count"].tolist() == [1, 1]
    assert bins["accuracy"].tolist() == [1.0, 0.0]
    assert bins["confidence"].tolist() == pytest.approx([0.5, 0.9])


def test_perfect_confident_predictions_have_zero_ece():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert expected_calibration_error(probs, np.array([0, 1, 0])) == pytest.approx(0.0)


def test_a_calibrated_model_shows_an_ece_that_shrinks_with_the_test_set():
    rng = np.random.default_rng(1)

    def confident(n):  # top-label confidence spread over 0.4-1.0, as a 4-class model's
        top = rng.uniform(0.4, 1.0, n)
        return np.column_stack([top, *[(1 - top) / 3] * 3])

    small, large = ece_if_calibrated(confident(200)), ece_if_calibrated(confident(20000))
    assert small["mean"] > 5 * large["mean"] and small["p95"] > small["mean"]  # ECE noise ~ 1/sqrt(n)
    assert large["p95"] < 0.015
    # it is the ECE of labels drawn from the confidences: such labels score inside the band
    probs = confident(500)
    y = np.where(rng.random(500) < probs[:, 0], 0, 1)
    band = ece_if_calibrated(probs)
    assert expected_calibration_error(probs, y) < band["p95"] * 1.5
    # and an overconfident model (right half the time at 0.95) far outside it
    sure = np.column_stack([np.full(500, 0.95), np.full((500, 3), 0.05 / 3)])
    assert expected_calibration_error(sure, np.arange(500) % 2) > 5 * ece_if_calibrated(sure)["p95"]


def test_a_model_always_fully_confident_has_no_room_for_chance():
    probs = np.tile([1.0, 0.0, 0.0], (50, 1))
    assert ece_if_calibrated(probs) == {"mean": 0.0, "p95": 0.0}
    with pytest.raises(ValueError, match="draws"):
        ece_if_calibrated(probs, draws=0)


@pytest.mark.filterwarnings("error")
def test_class_absent_from_y_true():
    # C never occurs and is never predicted: y [A, A, B, B], predictions [A, B, B, B].
    # A: TP 1, FN 1, FP 0 -> F1 2/3;  B: TP 2, FP 1 -> precision 2/3, F1 4/5.
    # macro F1 averages the classes that occur (A, B): (2/3 + 4/5) / 2 = 11/15.
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    report = classification_metrics(y_true, probs, NAMES)
    absent = report["per_class"]["C"]
    assert absent == {
        "sensitivity": None,
        "specificity": 1.0,
        "precision": 0.0,
        "f1": None,
        "auc": None,
        "support": 0,
    }
    assert report["macro_f1"] == pytest.approx(11 / 15)
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    json.dumps(report, allow_nan=False)


@pytest.mark.filterwarnings("error")
def test_class_never_predicted_gets_zero_precision_without_warnings():
    # Everything predicted A: B and C are present but never predicted.
    y_true = np.array([0, 1, 2])
    probs = np.array([[0.6, 0.2, 0.2], [0.5, 0.3, 0.2], [0.4, 0.3, 0.3]])
    report = classification_metrics(y_true, probs, NAMES)
    for name in ("B", "C"):
        assert report["per_class"][name]["precision"] == 0.0
        assert report["per_class"][name]["sensitivity"] == 0.0
        assert report["per_class"][name]["f1"] == 0.0
    # A: TP 1, FP 2 -> precision 1/3, recall 1, F1 1/2; macro F1 = (1/2 + 0 + 0) / 3.
    assert report["per_class"]["A"]["precision"] == pytest.approx(1 / 3)
    assert report["macro_f1"] == pytest.approx(1 / 6)


@pytest.mark.filterwarnings("error")
def test_single_class_y_true():
    y_true = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    report = classification_metrics(y_true, probs, ["healthy", "tumour"])
    tumour, healthy = report["per_class"]["tumour"], report["per_class"]["healthy"]
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert tumour["sensitivity"] == pytest.approx(2 / 3)
    assert tumour["specificity"] is None  # no negatives
    assert tumour["auc"] is None and healthy["auc"] is None
    assert healthy["sensitivity"] is None
    assert healthy["specificity"] == pytest.approx(2 / 3)  # TN 2 of 3 negatives
    assert roc_curves(y_true, probs, ["healthy", "tumour"]) == {}
    json.dumps(report, allow_nan=False)


def test_roc_curves_match_reported_auc(report):
    curves = roc_curves(Y_TRUE, PROBS, NAMES)
    assert set(curves) == set(NAMES)
    for name, (fpr, tpr) in curves.items():
        assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
        assert np.trapezoid(tpr, fpr) == pytest.approx(report["per_class"][name]["auc"])


def test_roc_curves_default_names_are_indices():
    assert set(roc_curves(Y_TRUE, PROBS)) == {"0", "1", "2"}


def test_report_is_json_serialisable(report):
    assert json.loads(json.dumps(report, allow_nan=False)) == report


@pytest.mark.parametrize(
    ("y_true", "probs", "names", "message"),
    [
        (np.array([0, 1]), np.array([[2.0, -1.0], [0.5, 0.5]]), ["a", "b"], "within"),
        (np.array([0, 1]), np.array([[0.3, 0.3], [0.5, 0.5]]), ["a", "b"], "sum to 1"),
        (np.array([0, 1, 0]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"], "one label per row"),
        (np.array([0, 2]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a", "b"], "class indices"),
        (np.array([0, 1]), np.array([[0.5, 0.5], [0.5, 0.5]]), ["a"], "class names"),
        (np.array([], dtype=int), np.empty((0, 2)), ["a", "b"], "zero samples"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(y_true, probs, names, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, probs, names)


# ---- bootstrap intervals (the model card's) -----------------------------------------------------------


def test_rank_auc_is_scikit_learns_auc_ties_included():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((5, 40)), 1)  # rounded: many ties
    positive = rng.random((5, 40)) < 0.4
    expected = [roc_auc_score(p, s) for s, p in zip(scores, positive, strict=True)]
    assert rank_auc(scores, positive) == pytest.approx(expected)


def test_per_class_intervals_are_seeded_and_bracket_the_point_estimates():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    first = per_class_intervals(labels, probs, NAMES, resamples=400, seed=7)
    assert per_class_intervals(labels, probs, NAMES, resamples=400, seed=7) == first
    assert per_class_intervals(labels, probs, NAMES, resamples=400, seed=8) != first
    points = classification_metrics(labels, probs, NAMES)["per_class"]
    for name in NAMES:
        for statistic in ("sensitivity", "specificity", "auc"):
            bounds = first["per_class"][name][statistic]
            assert bounds["ci_low"] < points[name][statistic] < bounds["ci_high"]
            assert bounds["ci_high"] - bounds["ci_low"] < 0.25
    json.dumps(first, allow_nan=False)


def test_per_class_intervals_of_an_absent_class_are_none():
    intervals = per_class_intervals(np.array([0, 0, 1, 1]), PROBS[:4], NAMES, resamples=50)
    assert intervals["per_class"]["C"]["sensitivity"] is None and intervals["per_class"]["C"]["auc"] is None
    assert intervals["per_class"]["C"]["specificity"] == {"ci_low": 1.0, "ci_high": 1.0}
