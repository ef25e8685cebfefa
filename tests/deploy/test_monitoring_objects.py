"""The PrometheusRule and the Grafana dashboard ConfigMaps are generated from monitoring/ (never a second
copy by hand): the committed copies are in sync, and the generation works on any set of files (a fixture).
"""

from __future__ import annotations

import json
import shutil

import yaml
from k8s_render import (
    CHART,
    MANIFESTS,
    METRICS_PORT,
    by_kind,
    chart_values,
    kustomize,
    manifests_copy,
    render_chart,
    runtime_of,
    scraped_port,
)

from monitoring import k8s_sync

RULES = """groups:
  - name: fixture.rules
    rules:
      - record: neurovit:fixture:rate5m
        expr: sum(rate(neurovit_predictions_total[5m]))
      - alert: FixtureAlert
        expr: vector(1) > 2
        for: 5m
        labels: {severity: warning}
        annotations: {summary: fixture}
"""


def test_generated_copies_are_in_sync_with_monitoring() -> None:
    stale = k8s_sync.stale_files(k8s_sync.read_sources())
    assert not stale, f"run `make kube-monitoring`: {stale}"


def test_podmonitor_scrapes_the_runtimes_metrics_of_predictor_pods(rendered) -> None:
    for name, objects in rendered.items():
        monitors = by_kind(objects, "PodMonitor")
        if name == "helm/parts-off":
            assert not monitors
            continue
        (monitor,) = monitors
        assert monitor["spec"]["selector"]["matchLabels"] == {
            "serving.kserve.io/inferenceservice": "neurovit",
            "component": "predictor",
        }
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        assert endpoint["path"] == "/metrics" and endpoint["portNumber"] == 8080, name  # the declared port
        assert scraped_port(endpoint) == METRICS_PORT[runtime_of(objects)], name


def test_rule_and_dashboards_come_from_any_sources(tmp_path) -> None:
    """A fixture monitoring/ (rules, a promtool test file that is not a rule file, a dashboard) generates
    the same objects in kustomize and in the chart."""
    sources = tmp_path / "monitoring"
    (sources / "rules").mkdir(parents=True)
    (sources / "dashboards").mkdir()
    (sources / "rules" / "fixture.yaml").write_text(RULES)
    (sources / "rules" / "fixture_test.yaml").write_text("rule_files: [fixture.yaml]\ntests: []\n")
    (sources / "dashboards" / "NeuroViT Drift.json").write_text(json.dumps({"title": "Drift", "panels": []}))
    manifests = manifests_copy(tmp_path)
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.rmtree(chart / "files", ignore_errors=True)
    found = k8s_sync.read_sources(sources)
    assert list(found.rules) == ["fixture.yaml"]
    monitoring_dir = manifests / "base" / "monitoring"
    k8s_sync.write(found, monitoring_dir, chart / "files" / "monitoring")
    assert not k8s_sync.stale_files(found, monitoring_dir, chart / "files" / "monitoring")

    built = kustomize(manifests / "overlays" / "knative")
    assert built.returncode == 0, built.stderr
    kustomized = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    charted = render_chart(chart_values("default"), chart)
    for objects in (kustomized, charted):
        (rule,) = by_kind(objects, "PrometheusRule")
        assert [group["name"] for group in rule["spec"]["groups"]] == ["fixture.rules"]
        (dashboard,) = [o for o in by_kind(objects, "ConfigMap") if "dashboard" in o["metadata"]["name"]]
        assert dashboard["metadata"]["name"] == "neurovit-dashboard-neurovit-drift"
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["NeuroViT Drift.json"])["title"] == "Drift"

    (sources / "dashboards" / "NeuroViT Drift.json").unlink()
    stale = k8s_sync.stale_files(
        k8s_sync.read_sources(sources), monitoring_dir, chart / "files" / "monitoring"
    )
    assert any(path.name == "NeuroViT Drift.json" for path in stale), "a deleted source must be noticed"
    assert MANIFESTS.exists()
