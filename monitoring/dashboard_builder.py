"""Builds NeuroViT's Grafana dashboards (``monitoring/dashboards/*.json``) from a short description.

Written as code so that every panel gets the same datasource variable, label selector and layout; the
JSON is committed for Grafana's file provisioning and for ConfigMaps, and a test checks it is current:
    neurovit monitor dashboards
Queries use only METRICS.md's metrics, TorchServe's and the KServe runtime's own, `up`, and the recording
rules in monitoring/rules; a query that reads a runtime's own series reads the other's with `or`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitoring.contract import MONITORING_DIR

DASHBOARDS_DIR = MONITORING_DIR / "dashboards"
SCHEMA_VERSION = 39  # the classic JSON model as Grafana 11 reads it (newer versions migrate it on load)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'model_name=~"$model_name", model_version=~"$model_version"'
NEUROVIT_JOB = 'job=~".*neurovit.*"'  # as in the rules: keep "neurovit" in the scrape job's name
PSI_STEPS = [(None, "green"), (0.1, "orange"), (0.25, "red")]  # watch, act

Panel = dict[str, Any]


# ---- panels ------------------------------------------------------------------------------------------
def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    query: dict[str, Any] = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        query.update(instant=True, range=False, format="table")
    else:
        query.update(range=True)
    return query


def _with_ref_ids(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    unit: str,
    *,
    threshold_steps: list[tuple[float | None, str]] | None = None,
    dashed: str | None = None,
) -> Panel:
    """A time series; ``threshold_steps`` are drawn as lines; series matching regex ``dashed`` are dashed."""
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 0, "showPoints": "never"}
    custom["thresholdsStyle"] = {"mode": "line" if threshold_steps else "off"}
    overrides = []
    if dashed:
        dash = {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}}
        overrides.append({"matcher": {"id": "byRegexp", "options": dashed}, "properties": [dash]})
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _with_ref_ids(targets),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "min": 0,
                "custom": custom,
                "thresholds": _thresholds(threshold_steps or [(None, "green")]),
            },
            "overrides": overrides,
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, description: str, targets: list[dict[str, Any]], unit: str = "none") -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _with_ref_ids(targets),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": _thresholds([(None, "blue")])},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        },
    }


def bins_barchart(title: str, description: str, feature: str) -> Panel:
    """Live bin fractions of the last hour beside the training reference, one bar pair per bin."""
    where = f'{SEL}, feature="{feature}"'
    targets = [
        target(f"sum by (bin) (neurovit:drift_bin:fraction_1h{{{where}}})", "live", instant=True),
        target(f"sum by (bin) (neurovit:drift_reference_fraction:max{{{where}}})", "reference", instant=True),
    ]
    return {
        "type": "barchart",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _with_ref_ids(targets),
        "transformations": [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value #A": "last hour", "Value #B": "training reference"},
                },
            },
            {"id": "sortBy", "options": {"sort": [{"field": "bin"}]}},
        ],
        "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0}, "overrides": []},
        "options": {
            "xField": "bin",
            "orientation": "vertical",
            "groupWidth": 0.7,
            "barWidth": 0.9,
            "showValue": "never",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "none"},
        },
    }


def row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(rows: list[tuple[str, list[tuple[Panel, int]], int]]) -> list[Panel]:
    """Rows of (panel, width) on Grafana's 24-column grid; sets ``gridPos`` and ``id``."""
    panels, y = [], 0
    for title, row_panels, height in rows:
        panels.append({**row(title), "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y += 1
        x = 0
        for panel, width in row_panels:
            if x + width > 24:
                x, y = 0, y + height
            panels.append({**panel, "gridPos": {"h": height, "w": width, "x": x, "y": y}})
            x += width
        y += height
    return [{**panel, "id": i} for i, panel in enumerate(panels, start=1)]


# ---- variables ---------------------------------------------------------------------------------------
def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}  # fmt: skip


def query_variable(name: str, label: str, query: str, *, multi: bool) -> dict[str, Any]:
    variable: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time-range change: versions come and go
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {},
        "hide": 0,
        "options": [],
    }
    if multi:
        variable["allValue"] = ".*"
    return variable


def model_variables(*, versions_multi: bool) -> list[dict[str, Any]]:
    return [
        datasource_variable(),
        query_variable("model_name", "Model", "label_values(neurovit_model_info, model_name)", multi=False),
        query_variable(
            "model_version",
            "Version",
            'label_values(neurovit_model_info{model_name=~"$model_name"}, model_version)',
            multi=versions_multi,
        ),
    ]


def dashboard(uid: str, title: str, description: str, panels: list[Panel], variables: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["neurovit"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "annotations": {"list": []},
        "links": [],
        "templating": {"list": variables},
        "panels": panels,
    }


# ---- the dashboards ----------------------------------------------------------------------------------
def _rate(metric: str, by: str, where: str = SEL) -> str:
    return f"sum by ({by}) (rate({metric}{{{where}}}[$__rate_interval]))"


def service_overview() -> dict:
    replicas_up = stat(
        "Replicas up", "Server targets that answer their scrape.", [target(f"sum(up{{{NEUROVIT_JOB}}})")]
    )
    serving = stat(
        "Replicas serving each version",
        "Replicas that have answered with the version (neurovit_model_info is set on a first answer).",
        [target(f"count by (model_version) (neurovit_model_info{{{SEL}}})", "{{model_version}}")],
    )
    workers_loaded = stat(
        "Workers with the model loaded",
        "Workers that finished loading a model, all replicas: TorchServe's (WorkerLoadTime), or the KServe "
        "runtime's one model per replica (neurovit_model_info, set at load there).",
        [target(f"count(WorkerLoadTime{{{NEUROVIT_JOB}}}) or count(neurovit_model_info{{{NEUROVIT_JOB}}})")],
    )
    requests = timeseries(
        "Requests per second",
        "Answered requests per route and version (handler), and requests the server received.",
        [
            target(
                _rate("neurovit_request_duration_seconds_count", "model_version, route"),
                "{{model_version}} {{route}}",
            ),
            target('neurovit:server_requests:rate5m{model_name=~"$model_name"}', "received by the server"),
        ],
        "reqps",
    )
    request_latency = timeseries(
        "Request latency p50 / p95 / p99 (handler, 5 min)",
        "Handler time of the batch that answered each request. Objective p95: 0.5 s predict, 2.5 s explain.",
        [
            target(f"neurovit:request_duration_seconds:{q}_5m{{{SEL}}}", q + " {{route}} {{model_version}}")
            for q in ("p50", "p95", "p99")
        ],
        "s",
        threshold_steps=[(None, "green"), (0.5, "red")],
    )
    stage_latency = timeseries(
        "Stage latency p50 / p95 (5 min)",
        "Preprocessing, forward pass and explanation, per batch.",
        [
            target(f"neurovit:stage_duration_seconds:{q}_5m{{{SEL}}}", q + " {{stage}} {{model_version}}")
            for q in ("p50", "p95")
        ],
        "s",
    )
    torchserve_latency = timeseries(
        "Queue and server latency (mean, 5 min)",
        "The server's own view, per request: time in the queue (TorchServe's batching queue; the KServe "
        "runtime's wait for the model) and from receipt to answer.",
        [
            target('neurovit:queue_latency_seconds:mean_5m{model_name=~"$model_name"}', "queue"),
            target('neurovit:inference_latency_seconds:mean_5m{model_name=~"$model_name"}', "server total"),
        ],
        "s",
    )
    error_ratio = timeseries(
        "Error ratio (4xx + 5xx, 5 min)",
        "Requests answered with a counted 4xx or a 5xx over all requests. Alert above 5%.",
        [target(f"neurovit:error_ratio:ratio_rate5m{{{SEL}}}", "{{model_version}}")],
        "percentunit",
        threshold_steps=[(None, "green"), (0.05, "red")],
    )
    errors_by_reason = timeseries(
        "4xx by reason",
        "Requests refused as invalid, by cause (METRICS.md lists the reasons).",
        [target(_rate("neurovit_errors_total", "reason, status"), "{{reason}} ({{status}})")],
        "reqps",
    )
    server_errors = timeseries(
        "5xx, and 4xx refused before the handler",
        "5xx per version (TorchServe's attributed to the version each replica serves; the KServe runtime "
        "counts its own), and 4xx the server refused before any handler ran (TorchServe's frontend).",
        [
            target(f"neurovit:responses_5xx:rate5m{{{SEL}}}", "5xx {{model_version}}"),
            target(f"neurovit:responses_4xx_frontend:rate5m{{{SEL}}}", "4xx, no handler {{model_version}}"),
        ],
        "reqps",
    )
    restarts = timeseries(
        "Worker and server restarts (15 min)",
        "TorchServe: changes of WorkerLoadTime (a worker reloaded) and resets of its request counter "
        "(TorchServe restarted). The KServe runtime: changes of its process's start time (model and server "
        "are one process).",
        [
            target(
                f"sum by (instance) (changes(WorkerLoadTime{{{NEUROVIT_JOB}}}[15m]))"
                f" or sum by (instance) (changes(process_start_time_seconds{{{NEUROVIT_JOB}}}[15m]))",
                "worker {{instance}}",
            ),
            target(
                f"sum by (instance) (resets(ts_inference_requests_total{{{NEUROVIT_JOB}}}[15m]))"
                f" or sum by (instance) (changes(process_start_time_seconds{{{NEUROVIT_JOB}}}[15m]))",
                "server {{instance}}",
            ),
        ],
        "none",
    )
    host = timeseries(
        "CPU and memory",
        "TorchServe: CPUUtilization (% of the host) and MemoryUsed (MB of the host), as it reports them. The "
        "KServe runtime: its process's CPU (% of one core) and resident memory (MB).",
        [
            target(
                f"max by (instance) (CPUUtilization{{{NEUROVIT_JOB}}})"
                f" or max by (instance) (rate(process_cpu_seconds_total{{{NEUROVIT_JOB}}}[5m]) * 100)",
                "CPU % {{instance}}",
            ),
            target(
                f"max by (instance) (MemoryUsed{{{NEUROVIT_JOB}}})"
                f" or max by (instance) (process_resident_memory_bytes{{{NEUROVIT_JOB}}} / 1e6)",
                "memory MB {{instance}}",
            ),
        ],
        "none",
    )
    panels = layout(
        [
            ("Traffic", [(replicas_up, 4), (serving, 5), (workers_loaded, 4), (requests, 11)], 6),
            ("Latency", [(request_latency, 12), (stage_latency, 6), (torchserve_latency, 6)], 8),
            ("Errors", [(error_ratio, 8), (errors_by_reason, 8), (server_errors, 8)], 8),
            ("Workers", [(restarts, 12), (host, 12)], 7),
        ]
    )
    return dashboard(
        "neurovit-service-overview",
        "NeuroViT service overview",
        "Traffic, latency percentiles, errors by cause and replicas of the NeuroViT server (either runtime).",
        panels,
        model_variables(versions_multi=True),
    )


def model_health() -> dict:
    class_share = timeseries(
        "Predicted-class share (last hour) vs training",
        "Share of answers per predicted class over the last hour; dashed: the training split's mix.",
        [
            target(f"neurovit:predictions:share_1h{{{SEL}}}", "{{label}}"),
            target(f"neurovit:class_reference_fraction:max{{{SEL}}}", "{{label}} reference"),
        ],
        "percentunit",
        dashed=".*reference.*",
    )
    class_psi = timeseries(
        "Class-mix PSI (1 h)",
        "PSI of the predicted-class mix against the training mix. 0.1 watch, 0.25 act.",
        [target(f"neurovit:predictions:psi_1h{{{SEL}}}", "class mix")],
        "none",
        threshold_steps=PSI_STEPS,
    )
    answers_by_class = timeseries(
        "Answers per second by class",
        "Predictions by class.",
        [target(_rate("neurovit_predictions_total", "label"), "{{label}}")],
        "reqps",
    )
    confidence_bins = bins_barchart(
        "Confidence bins: last hour vs training",
        "Calibrated top-class probability in the training split's decile bins (bin 0: least confident).",
        "confidence",
    )
    samples = timeseries(
        "Answers in the PSI window (1 h)",
        "PSI is only judged (alerts) once a window holds 300 answers: below, its noise is about 9/n.",
        [target(f"neurovit:drift_samples:increase1h{{{SEL}}}", "{{feature}}")],
        "none",
        threshold_steps=[(None, "red"), (300, "green")],
    )
    psi = timeseries(
        "PSI per feature (1 h)",
        "Population Stability Index of each monitored feature against the training split. "
        "0.1 watch, 0.25 act.",
        [target(f"neurovit:drift_bin:psi_1h{{{SEL}}}", "{{feature}}")],
        "none",
        threshold_steps=PSI_STEPS,
    )
    feature_bins = bins_barchart(
        "Bins of $feature: last hour vs training",
        "Live bin fractions beside the training reference (deciles: about 10% each).",
        "$feature",
    )
    feature_bins.update(repeat="feature", repeatDirection="h", maxPerRow=3)
    ood_share = timeseries(
        "OOD-flagged share (15 min)",
        "Answers whose OOD score is over the version's threshold (set for about 5% on real MRI). "
        "Alert above 20%.",
        [target(f"neurovit:ood_flagged:ratio_15m{{{SEL}}}", "{{model_version}}")],
        "percentunit",
        threshold_steps=[(None, "green"), (0.2, "red")],
    )
    ood_rate = timeseries(
        "OOD-flagged per second",
        "Flagged answers (they are answered all the same).",
        [target(f"sum(rate(neurovit_ood_flagged_total{{{SEL}}}[$__rate_interval]))", "flagged")],
        "reqps",
    )
    ood_bins = bins_barchart(
        "OOD score bins: last hour vs training", "OOD score in the training split's decile bins.", "ood_score"
    )
    ood_threshold = stat(
        "OOD threshold",
        "Score above which an answer is flagged.",
        [target(f"max(neurovit_ood_threshold{{{SEL}}})")],
    )
    feature = query_variable(
        "feature",
        "Feature",
        'label_values(neurovit_drift_reference_fraction{model_name=~"$model_name"}, feature)',
        multi=True,
    )
    panels = layout(
        [
            ("Class mix", [(class_share, 10), (class_psi, 7), (answers_by_class, 7)], 8),
            ("Confidence", [(confidence_bins, 12), (samples, 12)], 8),
            ("Input drift", [(psi, 24), (feature_bins, 8)], 8),
            ("Out of distribution", [(ood_share, 8), (ood_rate, 6), (ood_bins, 7), (ood_threshold, 3)], 8),
        ]
    )
    return dashboard(
        "neurovit-model-health",
        "NeuroViT model health",
        "Class mix and confidence against the training reference, PSI per feature, out-of-distribution "
        "flags; one version at a time.",
        panels,
        model_variables(versions_multi=False) + [feature],
    )


DASHBOARDS: dict[str, Callable[[], dict]] = {
    "neurovit-service-overview.json": service_overview,
    "neurovit-model-health.json": model_health,
}


def render(build: Callable[[], dict]) -> str:
    return json.dumps(build(), indent=2) + "\n"


def build_all(out_dir: Path = DASHBOARDS_DIR) -> list[Path]:
    """Write every dashboard to ``out_dir`` (``neurovit monitor dashboards``); returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, build in DASHBOARDS.items():
        (out_dir / filename).write_text(render(build))
        written.append(out_dir / filename)
    return written


__all__ = ["DASHBOARDS", "DASHBOARDS_DIR", "build_all", "render"]
