"""The query list the live Prometheus test evaluates, and the PromQL helpers behind it."""

from __future__ import annotations

import pytest
import yaml

from monitoring.contract import TORCHSERVE_METRICS_YAML, load_contract
from monitoring.promql import as_signal, metric_names, substitute
from monitoring.queries import EVENT_ONLY_METRICS, all_queries, metrics_used
from monitoring.rulefiles import load_rules

MODEL, VERSION = "neurovit", "v20261125-173903-45eb9a"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, route) (rate(a_bucket{le="0.5"}[5m]))', {"a_bucket"}),
        ("x / on (model_name) group_left () y or z * 0", {"x", "y", "z"}),
        ("clamp_min(max by (bin) (ref), 1e-4) / 1e6", {"ref"}),
        (
            'neurovit:rule:p95_5m{route="predict"} > 0.5 and on () sum(up{job=~".*x.*"}) > 0',
            {"neurovit:rule:p95_5m", "up"},
        ),
        ("histogram_quantile(0.95, sum(rate(h_bucket[$__rate_interval])) by (le))", {"h_bucket"}),
    ],
)
def test_metric_names(expr, names):
    assert metric_names(expr) == names


def test_signal_form_keeps_every_series():
    assert as_signal('x{a!="1"} > 0.5 and y >= 300') == 'x{a!="1"} > bool 0.5 and y >= bool 300'
    assert as_signal("(sum(up) or vector(0)) <1") == "(sum(up) or vector(0)) < bool 1"
    assert as_signal('x{job=~"a.*"} > bool 1') == 'x{job=~"a.*"} > bool 1'


def test_substitute_fills_every_variable_or_refuses():
    expr = 'rate(x{m=~"$model_name", v="${model_version}"}[$__rate_interval])'
    assert substitute(expr, {"model_name": "n", "model_version": "v", "__rate_interval": "1m"}) == (
        'rate(x{m=~"n", v="v"}[1m])'
    )
    with pytest.raises(KeyError, match="model_version"):
        substitute(expr, {"model_name": "n", "__rate_interval": "1m"})


def test_all_queries_covers_every_rule_and_panel_with_concrete_values():
    queries = all_queries(MODEL, VERSION)
    sources = [query.source for query in queries]
    assert len(sources) == len(set(sources))
    for rule in load_rules():
        assert any(source.startswith(f"{rule.kind} {rule.name} ") for source in sources), rule.name
    for feature in load_contract().features:
        assert any(source.endswith(f"[{feature}]") for source in sources), feature
    for source, expr in queries:
        assert "$" not in expr, source
    assert any(f'model_version=~"{VERSION}"' in expr for _, expr in queries)


def test_every_query_parses(promtool, tmp_path):
    """promtool parses each expression as a recording rule (the dashboards' queries are in no rule file)."""
    rules = [
        {"record": f"check:query:n{i}", "expr": expr}
        for i, (_, expr) in enumerate(all_queries(MODEL, VERSION))
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    promtool("check", "rules", str(path))


def test_metrics_used_are_all_in_the_contract():
    used = set(metrics_used())
    assert used <= load_contract().series_names
    assert set(EVENT_ONLY_METRICS) <= used | load_contract().torchserve
    assert {"neurovit_drift_bin_total", "neurovit_drift_reference_fraction", "up", "WorkerLoadTime"} <= used


def test_contract_neurovit_metrics_match_torchserve_declarations():
    """METRICS.md and handlers/metrics.yaml list the same neurovit_* metrics (TorchServe drops the others)."""
    config = yaml.safe_load(TORCHSERVE_METRICS_YAML.read_text())
    declared = {entry["name"] for kind in config["model_metrics"].values() for entry in kind}
    assert {name for name in declared if name.startswith("neurovit_")} == load_contract().neurovit
    assert load_contract().features == (
        "mean_intensity",
        "contrast",
        "foreground_fraction",
        "confidence",
        "ood_score",
    )


def test_each_runtime_has_its_own_series_and_the_queries_read_both():
    contract = load_contract()
    assert {"request_predict_seconds_sum", "request_predict_seconds_count", "process_start_time_seconds"} <= (
        contract.own_series("kserve")
    )
    assert "WorkerLoadTime" in contract.own_series("torchserve")
    assert not contract.own_series("kserve") & contract.own_series("torchserve")
    used = set(metrics_used())
    # Both runtimes' own views are read (with `or`): neither runtime's install is left without them.
    assert used & contract.own_series("kserve") and used & contract.own_series("torchserve")
    with pytest.raises(ValueError, match="unknown runtime"):
        contract.own_series("triton")
