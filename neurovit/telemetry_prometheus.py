"""Metrics via prometheus-client: neurovit.telemetry's, for a server other than TorchServe (KServe's).

Same names, labels and meanings as ``neurovit.telemetry`` (the contract is ``monitoring/METRICS.md``):
``PrometheusMetrics.get_metric`` is the ``get_metric`` that ``Telemetry`` calls, so what one answered request
adds is decided in one place for both runtimes. The metrics live in a registry (prometheus-client's default
one unless told otherwise: KServe's model server exports that registry on ``/metrics``).

The latency histograms get buckets for this model instead of TorchServe's fixed Java-client ones
(``LATENCY_BUCKETS``; the reasons are in METRICS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from neurovit.telemetry import METRICS, MetricSpec

# Seconds. A lone prediction of the served ViT takes 3-10 ms on a CPU and an explained one 10-60 ms, so the
# buckets are dense from 2.5 ms to 100 ms (where p50 and p95 fall), then coarser up to 10 s for queueing
# under overload; TorchServe's fixed buckets start at 5 ms and have nothing between 10 and 25 ms.
LATENCY_BUCKETS = (
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _Sample:
    """One metric as ``Telemetry`` uses it: ``add_or_update(value, label values)``."""

    def __init__(self, metric, kind: str) -> None:
        self._metric, self.kind = metric, kind

    def add_or_update(self, value: float, dimension_values: list[str], request_id: str = "") -> None:
        child = self._metric.labels(*dimension_values)
        if self.kind == "counter":
            child.inc(value)
        elif self.kind == "gauge":
            child.set(value)
        else:
            child.observe(value)


class PrometheusMetrics:
    """Every metric of ``neurovit.telemetry.METRICS`` registered once in ``registry``.

    Args:
        registry: where the metrics are registered (KServe exports the default one).
        buckets: the latency histograms' upper bounds, in seconds.
    """

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        self.registry = registry
        self._samples = {spec.name: _Sample(_declare(spec, registry, buckets), spec.kind) for spec in METRICS}

    def get_metric(self, name: str, kind: str) -> _Sample:
        sample = self._samples.get(name)
        if sample is None or sample.kind != kind:
            raise KeyError(f"no {kind} metric {name!r} in neurovit.telemetry.METRICS")
        return sample


def _declare(spec: MetricSpec, registry: CollectorRegistry, buckets: Sequence[float]):
    help_text = f"NeuroViT {spec.name} ({spec.unit}); monitoring/METRICS.md"
    labels = list(spec.all_labels)
    if spec.kind == "counter":  # prometheus-client adds the _total suffix back on exposition
        return Counter(spec.name.removesuffix("_total"), help_text, labels, registry=registry)
    if spec.kind == "gauge":
        return Gauge(spec.name, help_text, labels, registry=registry)
    if spec.kind == "histogram":
        return Histogram(spec.name, help_text, labels, registry=registry, buckets=tuple(buckets))
    raise ValueError(f"{spec.name}: unknown metric kind {spec.kind!r}")


__all__ = ["LATENCY_BUCKETS", "PrometheusMetrics"]
