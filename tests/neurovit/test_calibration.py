"""Temperature scaling: fitted T, its effect on calibration, and input checks."""

import math

import numpy as np
import pytest
from scipy.special import softmax

from neurovit.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    apply_temperature,
    fit_temperature,
    temperature_nll,
)
from neurovit.metrics import expected_calibration_error


def calibrated_toy(n_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits with labels drawn from softmax(logits): calibrated by construction, so the best T is 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n_samples, 3))
    probs = softmax(logits, axis=1)
    labels = np.array([rng.choice(3, p=row) for row in probs])
    return logits, labels


@pytest.fixture(scope="module")
def toy():
    logits, labels = calibrated_toy(4000, seed=0)
    return {"val": (logits[:2000], labels[:2000]), "test": (logits[2000:], labels[2000:])}


def test_calibrated_logits_give_temperature_near_one(toy):
    assert fit_temperature(*toy["val"]) == pytest.approx(1.0, abs=0.1)


def test_overconfident_logits_are_softened(toy):
    # Multiplying calibrated logits by 5 makes the model overconfident; the fit should undo most of it.
    val_logits, val_labels = toy["val"]
    test_logits, test_labels = toy["test"]
    temperature = fit_temperature(5.0 * val_logits, val_labels)
    assert temperature == pytest.approx(5.0, rel=0.15)

    raw = apply_temperature(5.0 * test_logits, 1.0)
    scaled = apply_temperature(5.0 * test_logits, temperature)
    assert expected_calibration_error(scaled, test_labels) < expected_calibration_error(raw, test_labels) / 2
    assert temperature_nll(5.0 * test_logits, test_labels, temperature) < temperature_nll(
        5.0 * test_logits, test_labels, 1.0
    )


def test_fitted_temperature_minimises_nll(toy):
    logits, labels = toy["val"]
    logits = 3.0 * logits
    best = fit_temperature(logits, labels)
    for nearby in (best * 0.9, best * 1.1):
        assert temperature_nll(logits, labels, best) < temperature_nll(logits, labels, nearby)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5, 15.0])
def test_temperature_never_changes_the_prediction(toy, temperature):
    logits, _ = toy["test"]
    assert np.array_equal(apply_temperature(logits, temperature).argmax(1), logits.argmax(1))


def test_perfectly_separable_logits_hit_the_lower_bound():
    # Every label is the argmax: NLL keeps falling as T -> 0, so the fit stops at the bound.
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [0.5, 1.5]])
    labels = logits.argmax(1)
    assert MIN_TEMPERATURE <= fit_temperature(logits, labels) <= MIN_TEMPERATURE * 1.01


def test_always_wrong_logits_hit_the_upper_bound():
    # Every label is the argmin: NLL keeps falling as T -> infinity, so the fit stops at the bound.
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [0.5, 1.5]])
    labels = logits.argmin(1)
    assert MAX_TEMPERATURE * 0.99 <= fit_temperature(logits, labels) <= MAX_TEMPERATURE


def test_apply_temperature_values():
    # softmax([0, ln 3]) = [1/4, 3/4]; with T = 2 the logits become [0, ln(3)/2] = [0, ln sqrt(3)].
    logits = np.array([[0.0, math.log(3.0)]])
    assert apply_temperature(logits, 1.0) == pytest.approx(np.array([[0.25, 0.75]]))
    root3 = math.sqrt(3.0)
    assert apply_temperature(logits, 2.0) == pytest.approx(np.array([[1 / (1 + root3), root3 / (1 + root3)]]))


def test_apply_temperature_is_stable_for_huge_logits():
    probs = apply_temperature(np.array([[1000.0, 0.0, -1000.0]]), 0.05)
    assert np.all(np.isfinite(probs))
    assert probs == pytest.approx(np.array([[1.0, 0.0, 0.0]]))


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (np.empty((0, 3)), np.array([], dtype=int), "empty"),
        (np.zeros((3, 2)), np.array([0, 1]), "one label per row"),
        (np.zeros(4), np.array([0, 1, 0, 1]), "2-D"),
        (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
        (np.zeros((2, 2)), np.array([0, 5]), "class indices"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer"),
    ],
)
def test_fit_rejects_bad_inputs(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_apply_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="positive finite"):
        apply_temperature(np.zeros((1, 2)), temperature)
