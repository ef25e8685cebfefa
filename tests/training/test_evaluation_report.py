"""write_evaluation: metrics.json contents, the three plots, and the calibration it fits or is given."""

import json

import numpy as np
import pytest
from scipy.special import softmax

from neurovit.confidence_map import ConfidenceMap
from training.evaluation_report import (
    CONFUSION_MATRIX_PLOT,
    METRICS_FILE,
    RELIABILITY_PLOT,
    ROC_CURVES_PLOT,
    write_evaluation,
)

NAMES = ["glioma", "meningioma", "no_tumour"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUIRED_KEYS = {
    "n",
    "accuracy",
    "macro_f1",
    "ece",
    "nll",
    "per_class",
    "confusion_matrix",
    "class_names",
    "temperature",
    "temperature_source",
    "ece_before_calibration",
    "ece_after_calibration",
    "nll_before_calibration",
    "nll_after_calibration",
}


def overconfident_split(n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), logits 4 z: an overconfident model, as small networks often are."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n_samples, len(NAMES)))
    labels = np.array([rng.choice(len(NAMES), p=row) for row in softmax(logits, axis=1)])
    return 4.0 * logits, labels


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval") / "nested"  # the folder is created on demand
    val_logits, val_labels = overconfident_split(600, seed=1)
    test_logits, test_labels = overconfident_split(300, seed=2)
    returned = write_evaluation(out_dir, test_labels, test_logits, NAMES, fit_on=(val_logits, val_labels))
    return out_dir, returned, test_logits, test_labels


def test_metrics_json_has_required_keys_and_matches_return_value(evaluation):
    out_dir, returned, _, _ = evaluation
    written = json.loads((out_dir / METRICS_FILE).read_text())
    assert REQUIRED_KEYS <= set(written)
    assert written == returned
    assert written["class_names"] == NAMES
    assert set(written["per_class"]) == set(NAMES)
    assert set(written["per_class"]["glioma"]) == {
        "sensitivity",
        "specificity",
        "precision",
        "f1",
        "auc",
        "support",
    }


def test_calibration_fitted_on_validation_improves_the_test_split(evaluation):
    _, metrics, test_logits, test_labels = evaluation
    assert metrics["temperature_source"] == "validation"
    assert metrics["temperature"] > 1.0
    assert metrics["ece_after_calibration"] < metrics["ece_before_calibration"]
    assert metrics["nll_after_calibration"] < metrics["nll_before_calibration"]
    # Top level is the calibrated report; accuracy does not depend on T.
    assert metrics["ece"] == metrics["ece_after_calibration"]
    assert metrics["accuracy"] == pytest.approx(np.mean(test_logits.argmax(1) == test_labels))


@pytest.mark.parametrize("plot", [CONFUSION_MATRIX_PLOT, ROC_CURVES_PLOT, RELIABILITY_PLOT])
def test_plots_are_non_trivial_png_files(evaluation, plot):
    out_dir, _, _, _ = evaluation
    data = (out_dir / plot).read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000


def test_given_temperature_is_used_as_is(tmp_path):
    logits, labels = overconfident_split(60, seed=3)
    metrics = write_evaluation(tmp_path, labels, logits, NAMES, temperature=2.0)
    assert metrics["temperature"] == 2.0
    assert metrics["temperature_source"] == "given"


def test_without_temperature_before_and_after_coincide_and_one_class_does_not_crash(tmp_path):
    # A split holding a single class: AUCs are undefined, the ROC plot still gets written.
    logits = np.array([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 0, 0])
    metrics = write_evaluation(tmp_path, labels, logits, NAMES)
    assert metrics["temperature"] == 1.0 and metrics["temperature_source"] == "none"
    assert metrics["ece_before_calibration"] == metrics["ece_after_calibration"]
    assert metrics["per_class"]["glioma"]["auc"] is None
    assert (tmp_path / ROC_CURVES_PLOT).read_bytes().startswith(PNG_SIGNATURE)


def test_temperature_and_fit_on_are_exclusive(tmp_path):
    logits, labels = overconfident_split(30, seed=4)
    with pytest.raises(ValueError, match="not both"):
        write_evaluation(tmp_path, labels, logits, NAMES, temperature=1.5, fit_on=(logits, labels))
    assert not (tmp_path / METRICS_FILE).exists()


def bunched_split(n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences in two bunches one temperature cannot both calibrate: most answers at a wide logit gap and
    right 0.99 of the time, a fifth at a narrower gap and right 0.70 of the time (label smoothing's shape)."""
    rng = np.random.default_rng(seed)
    unsure = rng.random(n_samples) < 0.2
    labels = rng.integers(0, len(NAMES), size=n_samples)
    right = rng.random(n_samples) < np.where(unsure, 0.70, 0.99)
    predicted = np.where(right, labels, (labels + rng.integers(1, len(NAMES), size=n_samples)) % len(NAMES))
    logits = rng.normal(scale=0.2, size=(n_samples, len(NAMES)))
    logits[np.arange(n_samples), predicted] += np.where(unsure, 2.4, 3.8)
    return logits, labels


def test_the_confidence_map_fitted_on_validation_calibrates_beyond_the_temperature(tmp_path):
    val_logits, val_labels = bunched_split(400, seed=5)
    test_logits, test_labels = bunched_split(3000, seed=6)
    metrics = write_evaluation(tmp_path, test_labels, test_logits, NAMES, fit_on=(val_logits, val_labels))
    assert metrics["confidence_map"] is not None
    assert "400 validation answers" in metrics["confidence_map_source"]
    assert metrics["ece_temperature_only"] > 0.04
    assert metrics["ece_after_calibration"] < 0.6 * metrics["ece_temperature_only"]
    assert metrics["ece"] == metrics["ece_after_calibration"]
    assert metrics["accuracy"] == pytest.approx(np.mean(test_logits.argmax(1) == test_labels))
    # Saved with the model, the same map gives the same figures on the same slices.
    given = ConfidenceMap.from_dict(metrics["confidence_map"])
    again = write_evaluation(
        tmp_path / "again",
        test_labels,
        test_logits,
        NAMES,
        temperature=metrics["temperature"],
        confidence_map=given,
    )
    assert again["ece_after_calibration"] == pytest.approx(metrics["ece_after_calibration"])
    assert again["confidence_map_source"] == "confidence map: given"


def test_too_few_wrong_validation_answers_leave_the_temperature_alone(tmp_path):
    logits, labels = bunched_split(400, seed=7)
    labels = logits.argmax(axis=1)  # every validation answer right: nothing to trace a curve with
    metrics = write_evaluation(tmp_path, labels, logits, NAMES, fit_on=(logits, labels))
    assert metrics["confidence_map"] is None
    assert "0 wrong" in metrics["confidence_map_source"]
    assert metrics["ece_after_calibration"] == metrics["ece_temperature_only"]
