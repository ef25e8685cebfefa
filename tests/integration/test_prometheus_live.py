"""A real Prometheus scraping a real model server (freshly packaged tiny model with its monitoring reference),
once per runtime (TorchServe, and the KServe runtime: the rules must read both unchanged): after traffic,
every recording rule, alert expression and dashboard query of monitoring/ returns data, and
the PSI the rules compute is the one the Python formula gives for the same counts."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass

import numpy as np
import pytest
from fixtures.serving_samples import MODEL, VERSION, assert_answer, b64, good_images

from monitoring import local_prometheus
from monitoring.local_stack import missing_from_scrape
from monitoring.promql import as_signal
from monitoring.queries import all_queries
from monitoring.rulefiles import load_rules
from neurovit.drift import psi
from training.evaluations.ood_samples import non_mri_samples

pytestmark = pytest.mark.integration


@dataclass
class Routes:
    """How one runtime is asked: TorchServe takes the image or a JSON object per request, the KServe
    runtime v1 ``{"instances": [...]}`` (one image per request here, as TorchServe's)."""

    predict: str
    explain: str
    kserve_v1: bool

    def ask(self, server, route: str, png: bytes, explain: str | None = None):
        if not self.kserve_v1:
            if explain is None:
                return server.post(route, png, "image/png")
            return server.post_json(route, {"data": b64(png), "explain": explain})
        instance = {"data": b64(png), **({"explain": explain} if explain else {})}
        return server.post_json(route, {"instances": [instance]})

    def answer(self, response) -> dict:
        body = response.json()
        if not self.kserve_v1:
            return body
        (answer,) = body["predictions"]
        return answer


RUNTIMES = {
    "torchserve": Routes(f"/predictions/{MODEL}", f"/explanations/{MODEL}", kserve_v1=False),
    "kserve": Routes(f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}:explain", kserve_v1=True),
}


@pytest.fixture(scope="module", params=sorted(RUNTIMES))
def runtime(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def server(runtime, request):
    """The runtime's server fixture (``torchserve`` or ``kserve``); /metrics on its metrics URL."""
    return request.getfixturevalue(runtime)


@pytest.fixture(scope="module")
def prometheus_url(server, tmp_path_factory):
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):  # `make test` installs it first: in CI a missing binary is a failure
            pytest.fail(local_prometheus.INSTALL_HINT)
        pytest.skip(local_prometheus.INSTALL_HINT)
    out = tmp_path_factory.mktemp("prometheus")
    target = server.metrics_url.split("//", 1)[1]
    with socket.socket() as probe:  # a free port for Prometheus's web API
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = local_prometheus.start(out, target, port=port, interval="1s")
    yield url
    local_prometheus.stop(out)


@pytest.fixture(scope="module")
def traffic(server, runtime, make_slice, prometheus_url) -> list[dict]:
    """Slices on both routes, each explanation choice, two refusals, and non-MRI images (some flagged), sent
    twice with scrapes between: Prometheus' increase() counts only what a series gained after its first
    scrape, so traffic sent before any scrape (or once only) leaves the windowed rules at zero."""
    local_prometheus.wait_for_scrape(prometheus_url, "up == 1")  # TorchServe exports nothing of ours yet
    answers = []
    for _ in range(2):
        answers += send_traffic(server, RUNTIMES[runtime], make_slice)
        time.sleep(3.0)  # three scrape intervals
    flagged = [answer for answer in answers if answer["ood"]["flagged"]]
    assert flagged, "no answer flagged out of distribution: the OOD queries would stay empty"
    return answers


def send_traffic(server, routes: Routes, make_slice) -> list[dict]:
    answers = []
    for seed in range(12):
        png = good_images(make_slice(seed, size=48))["png"]
        explain = ("none", "rollout", "heatmap", "all")[seed % 4]
        response = routes.ask(server, routes.predict, png, explain)
        assert response.status == 200, response.body[:300]
        answers.append(routes.answer(response))
    assert routes.ask(server, routes.explain, png).status == 200
    assert server.post(routes.predict, b"").status == 400
    assert routes.ask(server, routes.predict, b"not an image").status == 400
    small = [sample for sample in non_mri_samples() if len(sample.png) < 900_000]  # under the test limit
    for sample in small[::3]:
        response = routes.ask(server, routes.predict, sample.png)
        assert response.status == 200  # not MRI: answered and flagged, never refused
        answers.append(routes.answer(response))
    for answer in answers:
        assert_answer(answer, tuple(answer["explanations"]))
    return answers


def eventually(check, timeout_s: float = 60.0):
    """``check()``'s first truthy value, retried while scrapes and rule evaluations catch up."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(1.0)


def test_every_rule_alert_and_dashboard_query_returns_data(prometheus_url, traffic):
    queries = all_queries(MODEL, VERSION)
    assert len(queries) > 30
    local_prometheus.wait_for_scrape(prometheus_url, "neurovit_model_info")

    def missing():
        return [q for q in queries if not local_prometheus.query(prometheus_url, q.expr)]

    eventually(lambda: not missing(), timeout_s=120.0)  # retried while rate windows and rules fill up
    left = missing()
    assert not left, "queries without data:\n" + "\n".join(f"{q.source}: {q.expr}" for q in left)


def test_the_rules_psi_is_the_python_formula_on_the_scraped_counts(prometheus_url, traffic):
    def scraped(expr):
        return {
            (r["metric"].get("feature"), r["metric"].get("bin")): float(r["value"][1])
            for r in local_prometheus.query(prometheus_url, expr)
        }

    selector = f'{{model_name="{MODEL}", model_version="{VERSION}", feature="contrast"}}'
    psi_rule = eventually(lambda: scraped(f"neurovit:drift_bin:psi_1h{selector}"))
    assert psi_rule, "the PSI recording rule has no value for contrast"
    # The same window's counts (increase() over 1 h, which covers the whole test) against the exported
    # reference: the recording rules must compute exactly the Python formula from them.
    counts = scraped(f"sum by (feature, bin) (increase(neurovit_drift_bin_total{selector}[1h]))")
    reference = scraped(f"max by (feature, bin) (neurovit_drift_reference_fraction{selector})")
    bins = sorted(reference, key=lambda key: int(key[1]))
    live = np.array([counts.get(key, 0.0) for key in bins])
    expected = psi([reference[key] for key in bins], live)
    (value,) = psi_rule.values()
    assert value == pytest.approx(expected, rel=0.02, abs=1e-3)


def test_every_metric_a_rule_or_dashboard_names_is_in_the_scrape(server, runtime, traffic):
    assert missing_from_scrape(f"{server.metrics_url}/metrics", runtime) == []


# Alerts about the server's health, whose condition must be false on a server that loaded its model once and
# answers (error-ratio and drift alerts are left out: the test traffic has refusals and non-MRI on purpose).
HEALTH_ALERTS = (
    "NeuroViTDown",
    "NeuroViTReplicaDown",
    "NeuroViTModelNotLoaded",
    "NeuroViTNoTraffic",
    "NeuroViTWorkerRestarted",
)


def test_no_health_alert_condition_holds_on_a_healthy_serving_runtime(prometheus_url, traffic):
    rules = {rule.name: rule for rule in load_rules() if rule.kind == "alert"}
    local_prometheus.wait_for_scrape(prometheus_url, "neurovit_model_info")
    # Rate windows need two scrapes of the traffic before the no-traffic condition can be judged.
    answered = "sum(rate(neurovit_request_duration_seconds_count[15m])) > 0"
    assert eventually(lambda: local_prometheus.query(prometheus_url, answered)), (
        "no answered request in rates"
    )
    for name in HEALTH_ALERTS:
        # Each condition evaluated both ways: as a signal it must return data (the series exist), as the alert
        # it must return none (nothing fires).
        assert local_prometheus.query(prometheus_url, as_signal(rules[name].expr)), f"{name}: no data"
        assert local_prometheus.query(prometheus_url, rules[name].expr) == [], f"{name} would fire"
