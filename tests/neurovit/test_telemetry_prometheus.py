"""The prometheus-client backend of neurovit.telemetry: the same names, labels and kinds as the contract,
the model's own latency buckets, and what one answered request adds."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitoring.contract import load_contract
from neurovit import telemetry
from neurovit.telemetry import Telemetry
from neurovit.telemetry_prometheus import LATENCY_BUCKETS, PrometheusMetrics


def samples(registry) -> dict[str, list]:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    found: dict[str, list] = {}
    for family in families:
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_every_contract_metric_is_exported_with_its_labels(registry):
    metrics = PrometheusMetrics(registry)
    emit = Telemetry(metrics.get_metric, "neurovit", "v7", None, ["glioma", "notumor"])
    emit.request("predict", 0.004)
    emit.stages({"forward": 0.003})
    emit.answered({"label": "glioma", "ood": {"flagged": True}}, {"contrast": 3})
    emit.error("bad_json", 400)
    emit.reference_if_due()
    for spec in telemetry.METRICS:
        metric = metrics.get_metric(spec.name, spec.kind)
        metric.add_or_update(1.0, ["neurovit", "v7", *("x" for _ in spec.labels)])
    found = samples(registry)
    contract = load_contract()
    for spec in telemetry.METRICS:
        series = spec.name + ("_bucket" if spec.kind == "histogram" else "")
        assert series in found, spec.name
        assert set(found[series][0].labels) - {"le"} == set(spec.all_labels), spec.name
        assert spec.name in contract.neurovit
        assert (spec.kind == "histogram") == (spec.name in contract.histograms), spec.name
    (error,) = [s for s in found["neurovit_errors_total"] if s.labels["reason"] == "bad_json"]
    assert error.labels["status"] == "400" and error.value == 1


def test_latency_lands_in_the_models_buckets(registry):
    metrics = PrometheusMetrics(registry)
    emit = Telemetry(metrics.get_metric, "neurovit", "v7", None, [])
    emit.request("explain", 0.012)
    buckets = {
        float(s.labels["le"]): s.value
        for s in samples(registry)["neurovit_request_duration_seconds_bucket"]
        if s.labels["route"] == "explain"
    }
    assert sorted(buckets)[:-1] == list(LATENCY_BUCKETS)  # + Inf
    assert buckets[0.01] == 0 and buckets[0.015] == 1
    assert LATENCY_BUCKETS[0] < 0.005  # finer than TorchServe's first bucket: a lone prediction is ~3 ms


def test_a_metric_outside_the_contract_is_refused(registry):
    metrics = PrometheusMetrics(registry)
    with pytest.raises(KeyError):
        metrics.get_metric("neurovit_made_up_total", "counter")
    with pytest.raises(KeyError):
        metrics.get_metric("neurovit_predictions_total", "gauge")
