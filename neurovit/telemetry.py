"""The service's own Prometheus metrics: names, labels, and what one answered batch adds to them.

The contract is ``monitoring/METRICS.md``; the declarations TorchServe needs are in ``handlers/metrics.yaml``
(a test checks that both list exactly the metrics and labels below). The handler hands ``Telemetry`` a
function that returns TorchServe's metric objects, so this module imports nothing from TorchServe and each
emission is one ``add_or_update(value, label values)`` call that TorchServe turns into a Prometheus sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from neurovit.drift import MonitoringReference

COMMON_LABELS = ("model_name", "model_version")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # TorchServe's metric type: counter, gauge or histogram
    unit: str
    labels: tuple[str, ...]  # beyond COMMON_LABELS, in the order values are passed

    @property
    def all_labels(self) -> tuple[str, ...]:
        return COMMON_LABELS + self.labels


REQUEST_DURATION = MetricSpec("neurovit_request_duration_seconds", "histogram", "s", ("route",))
STAGE_DURATION = MetricSpec("neurovit_stage_duration_seconds", "histogram", "s", ("stage",))
PREDICTIONS = MetricSpec("neurovit_predictions_total", "counter", "Count", ("label",))
ERRORS = MetricSpec("neurovit_errors_total", "counter", "Count", ("reason", "status"))
OOD_FLAGGED = MetricSpec("neurovit_ood_flagged_total", "counter", "Count", ())
DRIFT_BIN = MetricSpec("neurovit_drift_bin_total", "counter", "Count", ("feature", "bin"))
DRIFT_REFERENCE = MetricSpec("neurovit_drift_reference_fraction", "gauge", "ratio", ("feature", "bin"))
CLASS_REFERENCE = MetricSpec("neurovit_class_reference_fraction", "gauge", "ratio", ("label",))
MODEL_INFO = MetricSpec("neurovit_model_info", "gauge", "info", ())
OOD_THRESHOLD = MetricSpec("neurovit_ood_threshold", "gauge", "score", ())

METRICS = (
    REQUEST_DURATION,
    STAGE_DURATION,
    PREDICTIONS,
    ERRORS,
    OOD_FLAGGED,
    DRIFT_BIN,
    DRIFT_REFERENCE,
    CLASS_REFERENCE,
    MODEL_INFO,
    OOD_THRESHOLD,
)
REFERENCE_REFRESH_S = 60.0  # gauges are re-sent this often, so a restarted frontend gets them back soon


class Metric(Protocol):
    def add_or_update(self, value: float, dimension_values: list[str], request_id: str = "") -> None: ...


class Telemetry:
    """Emits one batch's worth of samples.

    Args:
        get_metric: ``(name, kind) -> Metric``; the handler wraps TorchServe's ``context.metrics.get_metric``.
        model_name, model_version: the values of the common labels.
        reference: the version's monitoring reference (None: no drift gauges, no drift bins).
        class_names: the model's classes (for the class-mix reference).
    """

    def __init__(
        self,
        get_metric: Callable[[str, str], Metric],
        model_name: str,
        model_version: str,
        reference: MonitoringReference | None,
        class_names: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._get_metric = get_metric
        self._common = [model_name, model_version]
        self._reference = reference
        self._class_names = list(class_names)
        self._clock = clock
        self._reference_sent_at: float | None = None

    def _emit(self, spec: MetricSpec, value: float, *labels: Any) -> None:
        self._get_metric(spec.name, spec.kind).add_or_update(value, self._common + [str(x) for x in labels])

    def request(self, route: str, seconds: float, count: int = 1) -> None:
        for _ in range(count):  # every request of the batch waited for the whole batch
            self._emit(REQUEST_DURATION, seconds, route)

    def stages(self, seconds_by_stage: Mapping[str, float], count: int = 1) -> None:
        for stage, seconds in seconds_by_stage.items():
            for _ in range(count):
                self._emit(STAGE_DURATION, seconds, stage)

    def answered(self, answer: Mapping[str, Any], bins: Mapping[str, int]) -> None:
        self._emit(PREDICTIONS, 1, answer["label"])
        if (answer.get("ood") or {}).get("flagged"):
            self._emit(OOD_FLAGGED, 1)
        for feature, index in bins.items():
            self._emit(DRIFT_BIN, 1, feature, index)

    def error(self, reason: str, status: int) -> None:
        self._emit(ERRORS, 1, reason, status)

    def reference_if_due(self) -> None:
        """The version's gauges (info, OOD threshold, reference fractions), on the first batch and then at
        most every ``REFERENCE_REFRESH_S``: they never change while the version is loaded."""
        now = self._clock()
        if self._reference_sent_at is not None and now - self._reference_sent_at < REFERENCE_REFRESH_S:
            return
        self._reference_sent_at = now
        self._emit(MODEL_INFO, 1)
        if self._reference is None:
            return
        if self._reference.ood_threshold is not None:
            self._emit(OOD_THRESHOLD, self._reference.ood_threshold)
        for feature, shares in self._reference.fractions.items():
            for index, share in enumerate(shares):
                self._emit(DRIFT_REFERENCE, share, feature, index)
        for label in self._class_names:
            self._emit(CLASS_REFERENCE, self._reference.class_fractions.get(label, 0.0), label)


__all__ = ["COMMON_LABELS", "METRICS", "MetricSpec", "Telemetry"]
