"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

One scalar T > 0 divides the logits before the softmax. It is fitted on held-out (validation) logits by
minimising the negative log-likelihood; it never changes the argmax, so accuracy is untouched and only the
confidence moves: T > 1 softens an overconfident model, T < 1 sharpens an underconfident one.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

# A fitted T outside this range means the logits carry no usable signal or the data are broken;
# clamping keeps the probabilities meaningful instead of all-uniform or all-one-hot.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def _check_logits(logits: np.ndarray) -> np.ndarray:
    matrix = np.asarray(logits, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"logits must be a 2-D (N, C) array with C >= 2, got shape {matrix.shape}")
    if matrix.shape[0] == 0:
        raise ValueError("logits are empty: need at least one sample")
    if not np.all(np.isfinite(matrix)):
        raise ValueError("logits contain NaN or infinite values")
    return matrix


def _check_labels(y_true: np.ndarray, logits: np.ndarray) -> np.ndarray:
    labels = np.asarray(y_true)
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"y_true must be 1-D with one label per row of logits: {labels.shape} vs {logits.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"y_true must be class indices in [0, {logits.shape[1] - 1}], got {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64)


def _check_temperature(temperature: float) -> float:
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    return value


def temperature_nll(logits: np.ndarray, y_true: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``y_true`` under softmax(logits / temperature)."""
    matrix = _check_logits(logits)
    labels = _check_labels(y_true, matrix)
    log_probs = log_softmax(matrix / _check_temperature(temperature), axis=1)
    return float(-np.mean(log_probs[np.arange(labels.shape[0]), labels]))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T in [MIN_TEMPERATURE, MAX_TEMPERATURE] minimising the NLL of softmax(logits / T).

    Optimises log T (the NLL is far better conditioned in it, and T stays positive) with bounded Brent.
    """
    matrix = _check_logits(logits)
    labels = _check_labels(y_true, matrix)
    rows = np.arange(labels.shape[0])

    def nll_of_log_temperature(log_temperature: float) -> float:
        log_probs = log_softmax(matrix / math.exp(log_temperature), axis=1)
        return float(-np.mean(log_probs[rows, labels]))

    result = minimize_scalar(
        nll_of_log_temperature,
        bounds=(math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.clip(math.exp(result.x), MIN_TEMPERATURE, MAX_TEMPERATURE))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(logits / temperature), (N, C) float64; scipy's softmax is overflow-safe."""
    matrix = _check_logits(logits)
    return softmax(matrix / _check_temperature(temperature), axis=1)


__all__ = ["MAX_TEMPERATURE", "MIN_TEMPERATURE", "apply_temperature", "fit_temperature", "temperature_nll"]
