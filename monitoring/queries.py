"""Every PromQL expression the monitoring uses, ready to evaluate against a live Prometheus.

``all_queries(model_name, model_version)`` returns ``Query(source, expr)`` pairs for
- each recording rule's expression (it may name other recording rules: load the rule files);
- each alert's condition in its "signal" form (comparisons to numbers as ``bool``, see
  ``promql.as_signal``), which returns data whenever the metrics behind the alert exist, firing or not;
- each dashboard query and variable query, Grafana variables replaced by concrete values: the model's
  name and version, each drift feature of METRICS.md for panels repeated per feature, and fixed values
  for ``$__rate_interval`` and friends.

With a TorchServe that has answered valid requests on both routes (predict and explain), at least one
request refused with a 4xx and one answer flagged out of distribution, every query returns data.
Requests5XX is the one metric named that a healthy TorchServe may lack (it appears with the first 5xx);
the one rule that reads it falls back to 0 without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from monitoring.contract import load_contract
from monitoring.dashboard_builder import DASHBOARDS_DIR
from monitoring.promql import as_signal, metric_names, substitute
from monitoring.rulefiles import RULES_DIR, load_rules

# Metrics a query may name although a healthy live system need not export them yet.
EVENT_ONLY_METRICS = {"Requests5XX": "TorchServe creates it on its first 5xx answer"}
GRAFANA_DEFAULTS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


class Query(NamedTuple):
    source: str  # where the expression lives, for messages: "record ...", "alert ...", "dashboard ..."
    expr: str


def rule_queries(rules_dir: Path = RULES_DIR) -> list[Query]:
    queries = []
    for rule in load_rules(rules_dir):
        where = f"{rule.file.name}"
        if rule.kind == "record":
            queries.append(Query(f"record {rule.name} ({where})", rule.expr))
        else:
            queries.append(Query(f"alert {rule.name} ({where}), as signal", as_signal(rule.expr)))
    return queries


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Panels, those nested in collapsed rows included."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _variable_query(variable: dict[str, Any]) -> str | None:
    """``label_values(selector, label)`` as the PromQL Grafana runs for it."""
    query = variable.get("query")
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    if variable.get("type") != "query" or not text.startswith("label_values("):
        return None
    selector, _, label = text[len("label_values(") : -1].rpartition(",")
    return f"group by ({label.strip()}) ({selector.strip()})"


def dashboard_queries(
    model_name: str, model_version: str, dashboards_dir: Path = DASHBOARDS_DIR, **grafana: str
) -> list[Query]:
    features = load_contract().features
    base = {**GRAFANA_DEFAULTS, **grafana, "model_name": model_name, "model_version": model_version}
    queries = []
    for path in sorted(dashboards_dir.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for variable in dashboard.get("templating", {}).get("list", []):
            expr = _variable_query(variable)
            if expr:
                source = f"dashboard {path.name}: variable ${variable['name']}"
                queries.append(Query(source, substitute(expr, base)))
        for panel in _panels(dashboard):
            repeat = panel.get("repeat")
            # A repeated panel is one copy per value of its variable: check each (drift features only).
            cases = [{"feature": f} for f in features] if repeat == "feature" else [{}]
            for target in panel.get("targets", []):
                for case in cases:
                    values = {**base, "feature": ".*", **case}
                    label = f" [{case['feature']}]" if case else ""
                    source = f"dashboard {path.name}: {panel['title']!r} {target['refId']}{label}"
                    queries.append(Query(source, substitute(target["expr"], values)))
    return queries


def all_queries(model_name: str, model_version: str, **grafana: str) -> list[Query]:
    """Every rule, alert and dashboard expression; ``grafana`` overrides ``GRAFANA_DEFAULTS``."""
    return rule_queries() + dashboard_queries(model_name, model_version, **grafana)


def metrics_used() -> dict[str, list[str]]:
    """Exported metric names (recording rules excluded) -> the sources that use them."""
    recorded = {rule.name for rule in load_rules() if rule.kind == "record"}
    used: dict[str, list[str]] = {}
    for query in all_queries("model", "version"):
        for name in metric_names(query.expr) - recorded:
            used.setdefault(name, []).append(query.source)
    return used


__all__ = ["EVENT_ONLY_METRICS", "Query", "all_queries", "dashboard_queries", "metrics_used", "rule_queries"]
