"""Prometheus rules: valid, unit-tested alert by alert, documented in the runbook, and written only
against the metric contract (monitoring/METRICS.md) and TorchServe's own metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from monitoring.contract import MONITORING_DIR, load_contract
from monitoring.promql import metric_names
from monitoring.rulefiles import load_rules, recorded_names, rule_files

RUNBOOK = MONITORING_DIR / "RUNBOOK.md"
TEST_FILES = sorted((MONITORING_DIR / "tests").glob("*.yaml"))
ALERTS = [rule for rule in load_rules() if rule.kind == "alert"]
RECORDS = [rule for rule in load_rules() if rule.kind == "record"]


def _relative(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(MONITORING_DIR.parent)) for path in paths]


def test_rule_files_pass_promtool_check(promtool):
    result = promtool("check", "rules", *_relative(rule_files()))
    assert result.stdout.count("SUCCESS") == len(rule_files())


def test_rule_unit_tests_pass(promtool):
    result = promtool("test", "rules", *_relative(TEST_FILES))
    assert "FAILED" not in result.stdout + result.stderr


def test_local_prometheus_config_is_valid_and_loads_the_rules(promtool):
    result = promtool("check", "config", "monitoring/prometheus.yml")
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout


def _alert_tests() -> dict[str, list[list]]:
    """alertname -> the exp_alerts of each of its alert_rule_test cases, over all test files."""
    cases: dict[str, list[list]] = {}
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    return cases


@pytest.mark.parametrize("alert", ALERTS, ids=lambda rule: rule.name)
def test_every_alert_is_tested_firing_and_silent(alert):
    cases = _alert_tests().get(alert.name, [])
    assert any(cases), f"{alert.name}: no promtool case where it fires"
    assert any(not expected for expected in cases), f"{alert.name}: no promtool case where it stays silent"


def _runbook_anchors() -> set[str]:
    """GitHub's anchors for the runbook's headings (lower case, punctuation dropped, spaces to dashes)."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("alert", ALERTS, ids=lambda rule: rule.name)
def test_every_alert_has_severity_summary_description_and_runbook_section(alert):
    assert alert.labels.get("severity") in {"warning", "critical"}
    assert alert.annotations.get("summary") and alert.annotations.get("description")
    url = alert.annotations.get("runbook_url", "")
    page, _, anchor = url.partition("#")
    assert page == "monitoring/RUNBOOK.md" and anchor == alert.name.lower(), url
    assert anchor in _runbook_anchors(), f"RUNBOOK.md has no section for {alert.name}"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda rule: rule.name)
def test_alert_conditions_can_be_checked_live(alert):
    """The live test evaluates each condition with `bool` comparisons and expects data while all is well;
    absent() and `unless` would return nothing then, so conditions are written without them."""
    assert "absent(" not in alert.expr and "unless" not in alert.expr


def test_drift_alerts_use_the_documented_thresholds():
    drift = [rule for rule in ALERTS if "psi" in rule.expr]
    thresholds = {rule.name: re.search(r"psi_1h > ([\d.]+)", rule.expr).group(1) for rule in drift}
    assert thresholds["NeuroViTDriftWatch"] == "0.1"
    assert thresholds["NeuroViTDriftAct"] == "0.25"
    assert thresholds["NeuroViTClassMixDrift"] == "0.25"


@pytest.mark.parametrize("rule", RECORDS, ids=lambda rule: rule.name)
def test_recording_rules_are_named_level_metric_operations(rule):
    assert re.fullmatch(r"neurovit:[a-z0-9_]+:[a-z0-9_]+", rule.name)


def test_recording_rule_names_are_unique():
    names = [rule.name for rule in RECORDS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", load_rules(), ids=lambda rule: rule.name)
def test_rules_use_only_contract_metrics_and_recording_rules(rule):
    allowed = load_contract().series_names | recorded_names()
    unknown = metric_names(rule.expr) - allowed
    assert not unknown, (
        f"{rule.name} uses {sorted(unknown)}, not in METRICS.md, TorchServe's list or the rules"
    )
