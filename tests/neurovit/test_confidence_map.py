"""The confidence map (neurovit.confidence_map): it fixes the bunched confidences one temperature cannot, it
never changes an answer, never claims certainty, and refuses to be fitted or loaded from too little."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neurovit.calibration import apply_temperature, fit_temperature
from neurovit.confidence_map import (
    MIN_WRONG_TO_FIT,
    ConfidenceMap,
    apply_confidence_map,
    fit_confidence_map,
)
from neurovit.metrics import expected_calibration_error
from neurovit.model import ModelInfo

CLASSES = 4


def bunched_model(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits shaped as label smoothing leaves them (docs/benchmarks.md): most answers sit near one logit
    gap, where they are right 0.99 of the time, and a fifth near a gap one notch smaller, where they are right
    0.70 of the time. No single temperature makes both groups' confidence their accuracy."""
    rng = np.random.default_rng(seed)
    unsure = rng.random(n) < 0.2
    gap = np.where(unsure, 2.6, 4.0) + rng.normal(scale=0.1, size=n)
    accuracy = np.where(unsure, 0.70, 0.99)
    labels = rng.integers(0, CLASSES, size=n)
    right = rng.random(n) < accuracy
    predicted = np.where(right, labels, (labels + rng.integers(1, CLASSES, size=n)) % CLASSES)
    logits = rng.normal(scale=0.2, size=(n, CLASSES))
    logits[np.arange(n), predicted] += gap
    return logits, labels


def test_the_map_calibrates_what_one_temperature_cannot_on_fresh_answers():
    val_logits, val_labels = bunched_model(400, seed=1)  # the size of the real bench's val split
    test_logits, test_labels = bunched_model(4000, seed=2)
    temperature = fit_temperature(val_logits, val_labels)
    fitted, note = fit_confidence_map(apply_temperature(val_logits, temperature), val_labels)
    assert fitted is not None and "400 validation answers" in note
    after_temperature = apply_temperature(test_logits, temperature)
    after_map = fitted.apply(after_temperature)
    before, after = (expected_calibration_error(p, test_labels) for p in (after_temperature, after_map))
    assert before > 0.04  # the temperature alone leaves the two groups miscalibrated
    assert after < 0.6 * before and after < 0.03
    assert np.array_equal(after_map.argmax(axis=1), after_temperature.argmax(axis=1))


def test_a_step_of_only_right_answers_does_not_claim_certainty():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(CLASSES) * 0.3, size=300)
    labels = probs.argmax(axis=1)
    labels[:30] = (labels[:30] + 1) % CLASSES  # 30 wrong answers, all the others right
    fitted, _ = fit_confidence_map(probs, labels)
    assert fitted is not None
    assert max(fitted.values) < 1.0
    assert fitted.apply(np.array([[1.0, 0.0, 0.0, 0.0]]))[0, 0] < 1.0


def test_too_few_wrong_answers_keep_the_temperature_alone_and_say_why():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(CLASSES), size=200)
    labels = probs.argmax(axis=1)
    labels[: MIN_WRONG_TO_FIT - 1] = (labels[: MIN_WRONG_TO_FIT - 1] + 1) % CLASSES
    fitted, note = fit_confidence_map(probs, labels)
    assert fitted is None
    assert f"{MIN_WRONG_TO_FIT - 1} wrong" in note and "temperature alone" in note
    assert apply_confidence_map(probs, None) is probs


def probability_rows(max_rows: int = 20):
    """Rows of 2-6 non-negative weights, normalised: one-hot rows, ties and near-ties included."""
    shapes = st.tuples(st.integers(1, max_rows), st.integers(2, 6))
    weights = st.one_of(st.just(0.0), st.floats(1e-9, 1.0), st.just(1.0))
    return shapes.flatmap(lambda shape: arrays(np.float64, shape, elements=weights)).filter(
        lambda rows: np.all(rows.sum(axis=1) > 0)
    )


@settings(max_examples=200, deadline=None)
@given(rows=probability_rows(), values=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_any_map_keeps_every_answer_and_gives_probabilities(rows, values):
    probs = rows / rows.sum(axis=1, keepdims=True)
    mapped = ConfidenceMap((0.2, 0.6, 0.95), tuple(sorted(values))).apply(probs)
    assert np.all(mapped >= 0) and np.all(mapped <= 1)
    assert np.allclose(mapped.sum(axis=1), 1.0)
    top = probs.argmax(axis=1)
    # The answer's class stays strictly on top (ties in the input resolve as argmax resolves them).
    others = mapped.copy()
    others[np.arange(len(top)), top] = -1.0
    assert np.all(mapped[np.arange(len(top)), top] > others.max(axis=1))


def test_a_saved_map_comes_back_with_the_model_info_and_older_files_have_none(tmp_path):
    saved = ConfidenceMap((0.4, 0.8, 0.97), (0.35, 0.75, 0.99))
    ModelInfo(["a", "b"], temperature=0.8, confidence_map=saved).save(tmp_path)
    assert ModelInfo.load(tmp_path).confidence_map == saved
    ModelInfo(["a", "b"], temperature=0.8).save(tmp_path)
    assert ModelInfo.load(tmp_path).confidence_map is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"confidences": [0.5, 0.5], "values": [0.4, 0.6]}, "strictly increasing"),
        ({"confidences": [0.4, 0.8], "values": [0.7, 0.6]}, "must not decrease"),
        ({"confidences": [0.4, 0.8], "values": [0.7]}, "as many values"),
        ({"confidences": [0.4, 1.2], "values": [0.5, 0.9]}, r"\[0, 1\]"),
        ({"confidences": [0.4, float("nan")], "values": [0.5, 0.9]}, "finite"),
        ({"values": [0.5]}, "not a confidence map"),
    ],
)
def test_a_broken_saved_map_is_refused_with_the_reason(payload, message):
    with pytest.raises(ValueError, match=message):
        ConfidenceMap.from_dict(payload)
