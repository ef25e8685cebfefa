"""write_evaluation: metrics.json contents and the three plots."""

import json

import numpy as np
import pytest
from scipy.special import softmax

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
