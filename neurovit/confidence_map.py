"""Top-label calibration after the temperature: the confidence map, for what one temperature cannot undo.

Temperature scaling (``neurovit.calibration``) moves every confidence together. A ViT trained with label
smoothing bunches its confidences at 0.95-0.98, where it is right 0.99 of the time, while it is right only
0.67-0.71 of the time at 0.8-0.9; one temperature cannot fix both ends (docs/benchmarks.md, "How much label
smoothing"). The confidence map takes the top-label confidence after the temperature to the accuracy seen at
that confidence on validation, for the top label only (Gupta & Ramdas 2022, "Top-label calibration"),
because 400 validation slices with 20-30 wrong answers cannot trace a curve per class.

Isotonic regression (Zadrozny & Elkan 2002) groups the validation answers into steps of rising accuracy.
A step function would snap every confidence to a handful of levels, so the map is drawn through each step's
centre instead, linear in between (centred isotonic regression, Oron & Flournoy 2017): confidences stay
graded and the map rises between the first and the last centre. Each step's value is the share of
right answers among its slices, pulled towards their mean confidence by ``PRIOR_WEIGHT`` pseudo-slices: a
step that holds few slices stays near what the temperature said, and none claims certainty (1.0) from a
finite sample. The other classes share what is left in their old proportions, and the top class always
stays on top: the answer never changes, only how sure it says it is.

Serving applies the saved knots with numpy alone; fitting imports scikit-learn, which only training has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Pseudo-slices at the temperature's own confidence added to every step. Measured on nine 30-minute bench
# models (docs/benchmarks.md, "A confidence map after the temperature"): any weight from 2 to 40 keeps every
# one under ECE 0.03 on its held-out slices; 10 sits in the middle.
PRIOR_WEIGHT = 10.0
# Fewer wrong (or right) validation answers than this cannot trace accuracy against confidence: isotonic
# regression would collapse to one or two steps. The model then keeps the temperature alone.
MIN_WRONG_TO_FIT = 10
MIN_RIGHT_TO_FIT = 10
# The top class stays this far above the runner-up after the map, so the answer cannot flip on a rounding.
_TOP_MARGIN = 1e-6


@dataclass(frozen=True)
class ConfidenceMap:
    """Knots of a non-decreasing piecewise-linear map: top-label confidence after the temperature (strictly
    increasing ``confidences``: the steps' centres) to calibrated confidence (``values``), flat beyond both
    ends."""

    confidences: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        x = np.asarray(self.confidences, dtype=np.float64)
        y = np.asarray(self.values, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError(
                f"a confidence map needs as many values as confidences, at least one: {x.shape} and {y.shape}"
            )
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("a confidence map's knots must be finite numbers")
        if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
            raise ValueError("a confidence map's confidences and values must lie in [0, 1]")
        if np.any(np.diff(x) <= 0):
            raise ValueError("a confidence map's confidences must be strictly increasing")
        if np.any(np.diff(y) < 0):
            raise ValueError("a confidence map's values must not decrease: a surer answer is never less sure")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated (N, C) probabilities: the top class gets the map's value, the others share the rest in
        their old proportions; each row's argmax is kept."""
        probs = np.asarray(probabilities, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] < 2:
            raise ValueError(f"probabilities must be a 2-D (N, C) array with C >= 2, got shape {probs.shape}")
        rows = np.arange(probs.shape[0])
        top_class = probs.argmax(axis=1)
        top = probs[rows, top_class]
        others = probs.copy()
        others[rows, top_class] = 0.0
        rest = others.sum(axis=1, keepdims=True)
        # A row whose top class holds everything has no proportions to keep: the rest is shared evenly.
        even = np.full_like(others, 1.0 / (probs.shape[1] - 1))
        even[rows, top_class] = 0.0
        shares = np.where(rest > 1e-12, others / np.maximum(rest, 1e-12), even)
        # The runner-up gets share * (1 - new); the top stays above it while new > share / (1 + share).
        runner_up = shares.max(axis=1)
        floor = runner_up / (1.0 + runner_up) + _TOP_MARGIN
        new_top = np.maximum(np.interp(top, self.confidences, self.values), floor)
        calibrated = shares * (1.0 - new_top)[:, None]
        calibrated[rows, top_class] = new_top
        return calibrated

    def to_dict(self) -> dict:
        return {
            "method": "top-label centred isotonic regression after the temperature",
            "confidences": list(self.confidences),
            "values": list(self.values),
        }

    @classmethod
    def from_dict(cls, payload: dict) -> ConfidenceMap:
        try:
            return cls(
                tuple(float(v) for v in payload["confidences"]), tuple(float(v) for v in payload["values"])
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a confidence map: {error}") from error


def apply_confidence_map(probabilities: np.ndarray, confidence_map: ConfidenceMap | None) -> np.ndarray:
    """``confidence_map.apply(probabilities)``, or the probabilities as they are for a model without a map."""
    return probabilities if confidence_map is None else confidence_map.apply(probabilities)


def fit_confidence_map(
    probabilities: np.ndarray, y_true: np.ndarray, prior_weight: float = PRIOR_WEIGHT
) -> tuple[ConfidenceMap | None, str]:
    """The map fitted on validation probabilities (after the temperature) and their labels, with a sentence
    saying what was fitted; ``None`` and why when there are too few wrong or right answers to fit it."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[1] < 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need (N, C) probabilities and N labels, got {probs.shape} and {labels.shape}")
    if not (math.isfinite(prior_weight) and prior_weight >= 0):
        raise ValueError(f"prior_weight must be a finite number >= 0, got {prior_weight}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    wrong, right = int((correct == 0).sum()), int(correct.sum())
    if wrong < MIN_WRONG_TO_FIT or right < MIN_RIGHT_TO_FIT:
        return None, (
            f"no confidence map: {wrong} wrong and {right} right answers on validation, at least "
            f"{MIN_WRONG_TO_FIT} and {MIN_RIGHT_TO_FIT} needed; the temperature alone calibrates"
        )
    # Imported here: fitting is training's job; the serving image has no scikit-learn.
    from sklearn.isotonic import IsotonicRegression

    steps = IsotonicRegression(y_min=1.0 / probs.shape[1], y_max=1.0).fit_transform(confidence, correct)
    order = np.argsort(confidence, kind="stable")
    confidence, correct, steps = confidence[order], correct[order], steps[order]
    starts = np.flatnonzero(np.r_[True, np.diff(steps) != 0])
    ends = np.r_[starts[1:], confidence.size]
    knots, values = [], []
    for start, end in zip(starts, ends, strict=True):
        centre = confidence[start:end].mean()  # steps hold disjoint, rising ranges: centres strictly rise
        knots.append(float(centre))
        values.append((correct[start:end].sum() + prior_weight * centre) / (end - start + prior_weight))
    # The pull towards each step's own confidence can reorder two neighbouring steps by a hair.
    monotone = np.maximum.accumulate(np.clip(values, 1.0 / probs.shape[1], 1.0))
    fitted = ConfidenceMap(tuple(knots), tuple(float(v) for v in monotone))
    return fitted, (
        f"confidence map: {len(starts)} steps fitted on {confidence.size} validation answers ({wrong} wrong)"
    )


__all__ = [
    "MIN_RIGHT_TO_FIT",
    "MIN_WRONG_TO_FIT",
    "PRIOR_WEIGHT",
    "ConfidenceMap",
    "apply_confidence_map",
    "fit_confidence_map",
]
