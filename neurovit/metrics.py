"""Classification metrics for a multi-class probabilistic classifier, as a JSON-serialisable report.

The counting metrics come from scikit-learn; only the expected calibration error (ECE), which scikit-learn
does not provide, is computed here. Undefined values are reported as ``None`` (JSON ``null``) rather than
as a misleading 0 or a warning:

- ``sensitivity`` is undefined for a class absent from ``y_true`` (no positives to find);
- ``specificity`` is undefined when every sample belongs to the class (no negatives);
- ``auc`` is undefined in both of those cases;
- ``f1`` is undefined for a class that is neither present nor predicted.

A class that is present but never predicted gets precision 0 (and F1 0), as scikit-learn's
``zero_division=0`` gives. ``macro_f1`` averages F1 over the classes that occur in ``y_true`` or in the
predictions (scikit-learn's default label set), so a class missing from a small test split does not drag
it down.

``per_class_intervals`` bootstraps each class' sensitivity, specificity and AUC (seeded, vectorised over the
resamples; the AUC by ranks, ``rank_auc``, which equals scikit-learn's) for the model card's intervals.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

DEFAULT_ECE_BINS = 15
# Bootstrap resamples of the per-class intervals: 1,000 pin a 95 % percentile interval to about +-0.01.
DEFAULT_BOOTSTRAP_RESAMPLES = 1000
_BOOTSTRAP_CELLS = 2_000_000  # resamples x samples held at once (a few arrays of this many: ~50 MB)

# Rows of a probability matrix may drift from 1 by float32 rounding; more than this means logits were passed.
_ROW_SUM_TOLERANCE = 1e-3


def check_probabilities(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels (N,) and probabilities (N, C); return them as int64 and row-normalised float64."""
    labels = np.asarray(y_true)
    matrix = np.asarray(probs, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"probs must be a 2-D (N, C) array with C >= 2, got shape {matrix.shape}")
    if labels.ndim != 1 or labels.shape[0] != matrix.shape[0]:
        raise ValueError(
            f"y_true must be 1-D with one label per row of probs: {labels.shape} vs {matrix.shape}"
        )
    if labels.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= matrix.shape[1]:
        raise ValueError(
            f"y_true must be class indices in [0, {matrix.shape[1] - 1}], got {labels.min()}..{labels.max()}"
        )
    if not np.all(np.isfinite(matrix)) or matrix.min() < 0 or matrix.max() > 1:
        raise ValueError(
            "probs must be finite and within [0, 1] (were logits passed instead of probabilities?)"
        )
    row_sums = matrix.sum(axis=1)
    if np.max(np.abs(row_sums - 1.0)) > _ROW_SUM_TOLERANCE:
        raise ValueError("each row of probs must sum to 1 (were logits passed instead of probabilities?)")
    return labels.astype(np.int64), matrix / row_sums[:, None]


def _confidence_bins(confidence: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_bins + 1`` equal-width edges over [0, 1] and each confidence's bin index."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" on the inner edges puts a confidence equal to an edge into the bin below it.
    return edges, np.searchsorted(edges[1:-1], confidence, side="left")


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> dict:
    """Top-label reliability statistics in ``n_bins`` equal-width confidence bins over [0, 1].

    A confidence c falls in bin k when edges[k] < c <= edges[k + 1] (bin 0 also takes c = 0), as in
    Guo et al. 2017. Returns ``edges`` (n_bins + 1,), and per bin ``count``, ``confidence`` (mean top
    probability) and ``accuracy`` (fraction correct); the last two are NaN for empty bins.
    """
    labels, matrix = check_probabilities(y_true, probs)
    confidence = matrix.max(axis=1)
    correct = (matrix.argmax(axis=1) == labels).astype(np.float64)
    edges, bin_index = _confidence_bins(confidence, n_bins)
    count = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN on purpose
        mean_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(
    probs: np.ndarray, y_true: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """Top-label ECE: sum over bins of (bin size / N) * |bin accuracy - bin mean confidence|."""
    bins = reliability_bins(probs, y_true, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gaps) / np.sum(bins["count"]))


def ece_if_calibrated(
    probs: np.ndarray, n_bins: int = DEFAULT_ECE_BINS, draws: int = 1000, seed: int = 0
) -> dict[str, float]:
    """The ECE a perfectly calibrated model with these confidences would show on this many images.

    ECE is biased upwards on small test sets: a few images per bin make every bin's accuracy noisy.
    Consistency resampling (Broecker & Smith, "Increasing the reliability of reliability diagrams",
    Weather and Forecasting 2007) draws each image's top-label correctness from its own confidence,
    ``draws`` times, and scores each draw. Returns the ``mean`` and the ``p95`` of those ECEs: a measured
    ECE above ``p95`` is miscalibration, one below it is within what chance alone gives at this size.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    _, matrix = check_probabilities(np.argmax(probs, axis=1), probs)  # the bins depend on confidence only
    confidence = matrix.max(axis=1)
    _, bin_index = _confidence_bins(confidence, n_bins)
    count = np.bincount(bin_index, minlength=n_bins)
    filled = count > 0
    mean_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins)[filled] / count[filled]
    one_hot = np.zeros((confidence.shape[0], n_bins), dtype=np.float32)
    one_hot[np.arange(confidence.shape[0]), bin_index] = 1.0
    rng, eces = np.random.default_rng(seed), []
    for chunk in np.array_split(np.arange(draws), max(1, draws // 100)):  # bounded memory on big sets
        correct = (rng.random((len(chunk), confidence.shape[0])) < confidence).astype(np.float32)
        accuracy = (correct @ one_hot)[:, filled] / count[filled]
        gaps = np.abs(accuracy - mean_confidence)
        eces.append(gaps @ count[filled] / confidence.shape[0])
    eces = np.concatenate(eces)
    return {"mean": float(np.mean(eces)), "p95": float(np.percentile(eces, 95))}


def _one_vs_rest_defined(labels: np.ndarray, class_index: int) -> bool:
    """A one-vs-rest ROC needs both positives and negatives for the class."""
    positives = int(np.sum(labels == class_index))
    return 0 < positives < labels.shape[0]


def roc_curves(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curves ``{class name: (fpr, tpr)}``; classes whose ROC is undefined are left out.

    Without ``class_names`` the classes are named by their index ("0", "1", ...).
    """
    labels, matrix = check_probabilities(y_true, probs)
    names = _class_names(class_names, matrix.shape[1])
    curves = {}
    for index, name in enumerate(names):
        if _one_vs_rest_defined(labels, index):
            fpr, tpr, _ = roc_curve(labels == index, matrix[:, index])
            curves[name] = (fpr, tpr)
    return curves


def _class_names(class_names: list[str] | None, n_classes: int) -> list[str]:
    if class_names is None:
        return [str(index) for index in range(n_classes)]
    if len(class_names) != n_classes:
        raise ValueError(f"got {len(class_names)} class names for {n_classes} probability columns")
    if len(set(class_names)) != n_classes:
        raise ValueError(f"class names must be unique, got {class_names}")
    return list(class_names)


def _ratio_or_none(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro F1, ECE, NLL, per-class metrics and the confusion matrix, JSON-serialisable.

    Args:
        y_true: (N,) integer class indices.
        probs: (N, C) predicted probabilities, rows summing to 1; the prediction is the argmax.
        class_names: C names, in column order of ``probs``.

    Returns:
        ``{"n", "accuracy", "macro_f1", "ece", "nll", "per_class": {name: {"sensitivity", "specificity",
        "precision", "f1", "auc", "support"}}, "confusion_matrix" (rows true, columns predicted),
        "class_names"}``. See the module docstring for when a value is ``None``.
    """
    labels, matrix = check_probabilities(y_true, probs)
    names = _class_names(class_names, matrix.shape[1])
    all_classes = list(range(len(names)))
    predicted = matrix.argmax(axis=1)

    counts = confusion_matrix(labels, predicted, labels=all_classes)
    precision, _, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=all_classes, zero_division=0
    )
    total = int(counts.sum())
    per_class = {}
    for index, name in enumerate(names):
        true_positive = int(counts[index, index])
        actual_positive = int(counts[index, :].sum())
        predicted_positive = int(counts[:, index].sum())
        actual_negative = total - actual_positive
        true_negative = actual_negative - (predicted_positive - true_positive)
        defined = _one_vs_rest_defined(labels, index)
        per_class[name] = {
            "sensitivity": _ratio_or_none(true_positive, actual_positive),
            "specificity": _ratio_or_none(true_negative, actual_negative),
            "precision": float(precision[index]),
            "f1": float(f1[index]) if actual_positive + predicted_positive > 0 else None,
            "auc": float(roc_auc_score(labels == index, matrix[:, index])) if defined else None,
            "support": int(support[index]),
        }

    return {
        "n": total,
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "ece": expected_calibration_error(matrix, labels),
        "nll": float(log_loss(labels, matrix, labels=all_classes)),
        "per_class": per_class,
        "confusion_matrix": counts.tolist(),
        "class_names": names,
    }


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of each row of ``scores`` (R, N) against the booleans ``positive`` (R, N): the
    Mann-Whitney statistic with tied scores sharing their mean rank, which is scikit-learn's
    ``roc_auc_score`` (vectorised over rows). Every row needs positives and negatives."""
    scores, positive = np.atleast_2d(scores), np.atleast_2d(positive)
    if scores.shape[0] == 0:
        return np.empty(0)
    ranks = rankdata(scores, axis=1)
    n_positive = positive.sum(axis=1)
    n_negative = positive.shape[1] - n_positive
    if np.any(n_positive == 0) or np.any(n_negative == 0):
        raise ValueError("every row needs both positives and negatives")
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=1)
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def per_class_intervals(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    *,
    resamples: int = DEFAULT_BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals of each class' sensitivity, specificity and one-vs-rest AUC.

    The samples are resampled with replacement ``resamples`` times (seeded: the same inputs give the same
    intervals); a statistic undefined in a resample (no positives or no negatives of the class) skips that
    resample. Returns ``{"method", "resamples", "confidence", "seed", "per_class": {name: {statistic:
    {"ci_low", "ci_high"} or None}}}``; None when the statistic is undefined in every resample.
    """
    labels, matrix = check_probabilities(y_true, probs)
    names = _class_names(class_names, matrix.shape[1])
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    predicted = matrix.argmax(axis=1)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, labels.shape[0], size=(resamples, labels.shape[0]))
    samples: dict[str, dict[str, list[np.ndarray]]] = {
        name: {"sensitivity": [], "specificity": [], "auc": []} for name in names
    }
    # Vectorised over resamples, in chunks that keep a (chunk, N) array small.
    chunk = max(1, _BOOTSTRAP_CELLS // labels.shape[0])
    for start in range(0, resamples, chunk):
        rows = draws[start : start + chunk]
        drawn_labels, drawn_predicted = labels[rows], predicted[rows]
        for index, name in enumerate(names):
            positive, called = drawn_labels == index, drawn_predicted == index
            n_positive = positive.sum(axis=1)
            n_negative = positive.shape[1] - n_positive
            has_positive, has_negative = n_positive > 0, n_negative > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                sensitivity = (called & positive).sum(axis=1) / n_positive
                specificity = (~called & ~positive).sum(axis=1) / n_negative
            both = has_positive & has_negative
            by_statistic = samples[name]
            by_statistic["sensitivity"].append(sensitivity[has_positive])
            by_statistic["specificity"].append(specificity[has_negative])
            by_statistic["auc"].append(rank_auc(matrix[rows[both], index], positive[both]))
    tail = (1 - confidence) / 2 * 100

    def interval(chunks: list[np.ndarray]) -> dict[str, float] | None:
        values = np.concatenate(chunks)
        if values.size == 0:
            return None
        low, high = np.percentile(values, [tail, 100 - tail])
        return {"ci_low": float(low), "ci_high": float(high)}

    return {
        "method": f"percentile bootstrap, {resamples} resamples of the samples, seed {seed}",
        "resamples": resamples,
        "confidence": confidence,
        "seed": seed,
        "per_class": {
            name: {statistic: interval(values) for statistic, values in by_statistic.items()}
            for name, by_statistic in samples.items()
        },
    }


__all__ = [
    "DEFAULT_BOOTSTRAP_RESAMPLES",
    "DEFAULT_ECE_BINS",
    "check_probabilities",
    "classification_metrics",
    "ece_if_calibrated",
    "expected_calibration_error",
    "per_class_intervals",
    "rank_auc",
    "reliability_bins",
    "roc_curves",
]
