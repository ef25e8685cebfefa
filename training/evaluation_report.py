"""Write the evaluation of a trained model from its logits: ``metrics.json``, three PNG plots and, given the
images' paths, ``predictions.csv`` (one row per image).

The inference loop lives elsewhere; this module only turns (labels, logits) into the report. The
temperature and the confidence map are fitted on validation logits (``fit_on``), never on the test logits
being reported, so the "after calibration" numbers are honest.

Plots are drawn on bare ``Figure`` objects with the Agg canvas: no pyplot state, no display needed, safe
to call from a server thread.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from neurovit.calibration import apply_temperature, fit_temperature
from neurovit.confidence_map import ConfidenceMap, apply_confidence_map, fit_confidence_map
from neurovit.metrics import (
    DEFAULT_ECE_BINS,
    classification_metrics,
    ece_if_calibrated,
    expected_calibration_error,
    per_class_intervals,
    reliability_bins,
    roc_curves,
)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
ROC_CURVES_PLOT = "roc_curves.png"
RELIABILITY_PLOT = "reliability.png"

_DPI = 120


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)  # attaches the Agg canvas explicitly, whatever the default backend is
    figure.savefig(path, dpi=_DPI)


def plot_confusion_matrix(confusion: list[list[int]], class_names: list[str], path: Path) -> None:
    """Confusion matrix heat map, rows true and columns predicted, each cell annotated with its count."""
    side = 3.0 + 0.6 * len(class_names)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    display = ConfusionMatrixDisplay(np.asarray(confusion), display_labels=class_names)
    display.plot(ax=axes, cmap="Blues", values_format="d", xticks_rotation=45, colorbar=True)
    axes.set_title("Confusion matrix (counts)")
    _save(figure, path)


def plot_roc_curves(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], per_class: dict, path: Path
) -> None:
    """One-vs-rest ROC curve per class, its AUC in the legend; classes with an undefined ROC are omitted."""
    figure = Figure(figsize=(6.0, 5.5), layout="constrained")
    axes = figure.add_subplot()
    curves = roc_curves(y_true, probs, class_names)
    for name, (fpr, tpr) in curves.items():
        axes.plot(fpr, tpr, label=f"{name} (AUC = {per_class[name]['auc']:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    if not curves:
        axes.text(0.5, 0.5, "ROC undefined: fewer than two classes present", ha="center", va="center")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="False positive rate (1 - specificity)",
        ylabel="True positive rate (sensitivity)",
        title="One-vs-rest ROC curves",
    )
    axes.legend(loc="lower right")
    _save(figure, path)


def _draw_reliability(axes, probs: np.ndarray, y_true: np.ndarray, title: str) -> None:
    bins = reliability_bins(probs, y_true, DEFAULT_ECE_BINS)
    edges, filled = bins["edges"], bins["count"] > 0
    width = edges[1] - edges[0]
    axes.bar(
        edges[:-1][filled],
        bins["accuracy"][filled],
        width=width,
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    axes.plot(
        bins["confidence"][filled],
        bins["confidence"][filled],
        "o",
        color="tab:red",
        markersize=4,
        label="mean confidence",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.set(
        xlim=(0, 1), ylim=(0, 1), xlabel="Confidence (top-label probability)", ylabel="Accuracy", title=title
    )
    axes.legend(loc="upper left")


def plot_reliability(y_true: np.ndarray, panels: Sequence[tuple[np.ndarray, str]], path: Path) -> None:
    """Reliability diagrams side by side, one per (probabilities, title): before calibration, after the
    temperature and, for a model that has one, after the confidence map."""
    figure = Figure(figsize=(5.5 * len(panels), 5.0), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for panel_axes, (probs, title) in zip(axes, panels, strict=True):
        _draw_reliability(panel_axes, probs, y_true, title)
    _save(figure, path)


def _choose_temperature(
    temperature: float | None, fit_on: tuple[np.ndarray, np.ndarray] | None
) -> tuple[float, str]:
    """The temperature to apply and where it came from ("validation", "given" or "none")."""
    if temperature is not None and fit_on is not None:
        raise ValueError("pass either temperature or fit_on, not both")
    if fit_on is not None:
        validation_logits, validation_labels = fit_on
        return fit_temperature(validation_logits, validation_labels), "validation"
    if temperature is not None:
        return float(temperature), "given"
    return 1.0, "none"


def _choose_confidence_map(
    confidence_map: ConfidenceMap | None,
    fit_on: tuple[np.ndarray, np.ndarray] | None,
    temperature: float,
) -> tuple[ConfidenceMap | None, str]:
    """The confidence map to apply after the temperature, and a sentence on where it came from."""
    if confidence_map is not None and fit_on is not None:
        raise ValueError("pass either confidence_map or fit_on, not both")
    if fit_on is not None:
        validation_logits, validation_labels = fit_on
        return fit_confidence_map(apply_temperature(validation_logits, temperature), validation_labels)
    if confidence_map is not None:
        return confidence_map, "confidence map: given"
    return None, "no confidence map"


def write_evaluation(
    out_dir: str | Path,
    y_true: np.ndarray,
    logits: np.ndarray,
    class_names: list[str],
    *,
    temperature: float | None = None,
    fit_on: tuple[np.ndarray, np.ndarray] | None = None,
    confidence_map: ConfidenceMap | None = None,
) -> dict:
    """Compute metrics before and after calibration and write the report into ``out_dir``.

    Calibration is the temperature, then the confidence map (``neurovit.confidence_map``) where there is one.

    Args:
        out_dir: folder to write into (created if missing).
        y_true: (N,) integer labels of the evaluated split.
        logits: (N, C) raw model outputs for the same samples.
        class_names: C names in logit column order.
        temperature: a temperature fitted earlier (e.g. saved with the model); exclusive with ``fit_on``.
        fit_on: (validation logits, validation labels) to fit the temperature and then the confidence map
            on. With neither argument T = 1 and the before/after numbers coincide.
        confidence_map: a map fitted earlier (saved with the model); exclusive with ``fit_on``.

    Returns:
        The dict written to ``metrics.json``: the calibrated metrics of ``classification_metrics`` at top
        level plus ``temperature``, ``temperature_source``, ``confidence_map`` (its knots, or None),
        ``confidence_map_source`` (a sentence: fitted on how many answers, given, or why not),
        ``ece_before_calibration``, ``ece_temperature_only``, ``ece_after_calibration``,
        ``nll_before_calibration``, ``nll_after_calibration``, ``per_class_intervals`` (bootstrap 95 %
        intervals of each class' sensitivity, specificity and AUC after calibration, seeded:
        ``neurovit.metrics.per_class_intervals``) and ``ece_if_calibrated`` (mean and 95th percentile of the
        ECE a calibrated model would show here: ``neurovit.metrics.ece_if_calibrated``).
    """
    out_path = Path(out_dir)
    labels = np.asarray(y_true)
    chosen_temperature, source = _choose_temperature(temperature, fit_on)
    chosen_map, map_source = _choose_confidence_map(confidence_map, fit_on, chosen_temperature)
    probs_before = apply_temperature(logits, 1.0)
    probs_temperature = apply_temperature(logits, chosen_temperature)
    probs_after = apply_confidence_map(probs_temperature, chosen_map)
    before = classification_metrics(labels, probs_before, class_names)
    after = classification_metrics(labels, probs_after, class_names)

    metrics = {
        **after,
        "temperature": chosen_temperature,
        "temperature_source": source,
        "confidence_map": None if chosen_map is None else chosen_map.to_dict(),
        "confidence_map_source": map_source,
        "ece_before_calibration": before["ece"],
        "ece_temperature_only": expected_calibration_error(probs_temperature, labels),
        "ece_after_calibration": after["ece"],
        "nll_before_calibration": before["nll"],
        "nll_after_calibration": after["nll"],
        "per_class_intervals": per_class_intervals(labels, probs_after, class_names),
        # What chance alone gives a calibrated model on this many images: the yardstick for the ECE above.
        "ece_if_calibrated": ece_if_calibrated(probs_after),
    }

    out_path.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: undefined values are None by construction; a NaN here would be a bug, not data.
    (out_path / METRICS_FILE).write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    plot_confusion_matrix(
        metrics["confusion_matrix"], metrics["class_names"], out_path / CONFUSION_MATRIX_PLOT
    )
    plot_roc_curves(
        labels, probs_after, metrics["class_names"], metrics["per_class"], out_path / ROC_CURVES_PLOT
    )
    panels = [
        (probs_before, f"Before calibration (T = 1)\nECE = {metrics['ece_before_calibration']:.4f}"),
        (
            probs_temperature,
            f"After the temperature (T = {chosen_temperature:.3f})\n"
            f"ECE = {metrics['ece_temperature_only']:.4f}",
        ),
    ]
    if chosen_map is not None:
        panels.append(
            (probs_after, f"After the confidence map\nECE = {metrics['ece_after_calibration']:.4f}")
        )
    plot_reliability(labels, panels, out_path / RELIABILITY_PLOT)
    return metrics


def write_predictions(
    out_dir: str | Path,
    relpaths: Sequence[str],
    y_true: np.ndarray,
    logits: np.ndarray,
    class_names: list[str],
    temperature: float,
    ood_scores: np.ndarray | None = None,
    ood_threshold: float | None = None,
    confidence_map: ConfidenceMap | None = None,
) -> Path:
    """``predictions.csv`` in ``out_dir``: one row per image, in the order given.

    Columns: ``path`` (relative to the data folder: the file name is the only thing about a patient it
    carries), ``true_class``, ``predicted_class``, ``p_<class>`` (calibrated probability: the temperature,
    then the confidence map where the model has one; one column per class), ``ood_score`` and
    ``ood_flagged`` (score above the version's threshold; both empty for a model without an OOD scorer).
    """
    labels = np.asarray(y_true)
    probs = apply_confidence_map(apply_temperature(np.asarray(logits), temperature), confidence_map)
    if not len(relpaths) == len(labels) == len(probs):
        raise ValueError(f"{len(relpaths)} paths, {len(labels)} labels and {len(probs)} rows of logits")
    if (ood_scores is None) != (ood_threshold is None):
        raise ValueError("pass both ood_scores and ood_threshold, or neither")
    if ood_scores is not None and len(ood_scores) != len(labels):
        raise ValueError(f"{len(ood_scores)} OOD scores for {len(labels)} images")
    path = Path(out_dir) / PREDICTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["path", "true_class", "predicted_class", *(f"p_{name}" for name in class_names)]
            + ["ood_score", "ood_flagged"]
        )
        for i, relpath in enumerate(relpaths):
            ood = ["", ""]
            if ood_scores is not None:
                ood = [f"{float(ood_scores[i]):.4f}", str(bool(ood_scores[i] > ood_threshold)).lower()]
            writer.writerow(
                [relpath, class_names[labels[i]], class_names[int(probs[i].argmax())]]
                + [f"{p:.6f}" for p in probs[i]]
                + ood
            )
    return path


__all__ = [
    "CONFUSION_MATRIX_PLOT",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "RELIABILITY_PLOT",
    "ROC_CURVES_PLOT",
    "plot_confusion_matrix",
    "plot_reliability",
    "plot_roc_curves",
    "write_evaluation",
    "write_predictions",
]
