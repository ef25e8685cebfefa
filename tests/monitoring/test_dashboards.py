"""Grafana dashboards and provisioning: current with their builder, one datasource variable used by every
panel, and queries that name only contract metrics, TorchServe's own, `up` or recording rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from monitoring.contract import MONITORING_DIR, load_contract
from monitoring.dashboard_builder import DASHBOARDS, DASHBOARDS_DIR, DATASOURCE, SCHEMA_VERSION, render
from monitoring.promql import metric_names
from monitoring.rulefiles import recorded_names

PROVISIONING = MONITORING_DIR / "grafana" / "provisioning"
FILES = sorted(DASHBOARDS_DIR.glob("*.json"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _variables(dashboard: dict) -> dict[str, dict]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def test_committed_dashboards_are_the_builders_output():
    assert sorted(path.name for path in FILES) == sorted(DASHBOARDS)
    for filename, build in DASHBOARDS.items():
        assert (DASHBOARDS_DIR / filename).read_text() == render(build), (
            f"{filename} is stale: neurovit monitor dashboards"
        )


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_dashboard_model(path):
    dashboard = _load(path)
    assert dashboard["schemaVersion"] == SCHEMA_VERSION
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("NeuroViT")
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_datasource_variable_is_used_by_every_panel_and_query(path):
    dashboard = _load(path)
    variables = _variables(dashboard)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert DATASOURCE == {"type": "prometheus", "uid": "${datasource}"}
    for panel in _panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_model_variables_come_from_label_values(path):
    variables = _variables(_load(path))
    assert variables["model_name"]["query"] == "label_values(neurovit_model_info, model_name)"
    assert variables["model_version"]["query"].startswith("label_values(neurovit_model_info{")
    assert variables["model_version"]["query"].endswith(", model_version)")


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_every_query_names_only_known_metrics(path):
    allowed = load_contract().series_names | recorded_names()
    for panel in _panels(_load(path)):
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - allowed
            assert not unknown, f"{path.name} {panel['title']!r}: {sorted(unknown)}"


def test_model_health_shows_psi_thresholds_and_every_drift_feature():
    dashboard = _load(DASHBOARDS_DIR / "neurovit-model-health.json")
    psi = next(panel for panel in _panels(dashboard) if panel["title"].startswith("PSI per feature"))
    steps = [step["value"] for step in psi["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.1, 0.25]
    assert psi["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line"
    repeated = [panel for panel in _panels(dashboard) if panel.get("repeat") == "feature"]
    assert len(repeated) == 1 and "feature" in _variables(dashboard)


def test_provisioning_files():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "neurovit-prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    assert [source["type"] for source in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "neurovit.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
