"""A real Prometheus scraping a real TorchServe (freshly packaged tiny model with its monitoring reference):
after traffic, every recording rule, alert expression and dashboard query of monitoring/ returns data, and
the PSI the rules compute is the one the Python formula gives for the same counts."""

from __future__ import annotations

import os
import shutil
import socket
import time

import numpy as np
import pytest
from fixtures.serving_samples import MODEL, VERSION, assert_answer, b64, good_images

from monitoring import local_prometheus
from monitoring.local_stack import missing_from_scrape
from monitoring.queries import all_queries
from neurovit.drift import psi
from training.evaluations.ood_samples import non_mri_samples

pytestmark = pytest.mark.integration
PREDICT, EXPLAIN = f"/predictions/{MODEL}", f"/explanations/{MODEL}"


@pytest.fixture(scope="module")
def prometheus_url(torchserve, tmp_path_factory):
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):  # `make test` installs it first: in CI a missing binary is a failure
            pytest.fail(local_prometheus.INSTALL_HINT)
        pytest.skip(local_prometheus.INSTALL_HINT)
    out = tmp_path_factory.mktemp("prometheus")
    target = torchserve.metrics_url.split("//", 1)[1]
    with socket.socket() as probe:  # a free port for Prometheus's web API
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = local_prometheus.start(out, target, port=port, interval="1s")
    yield url
    local_prometheus.stop(out)


@pytest.fixture(scope="module")
def traffic(torchserve, make_slice) -> list[dict]:
    """Slices on both routes, each explanation choice, two refusals, and non-MRI images (some flagged)."""
    answers = []
    for seed in range(12):
        png = good_images(make_slice(seed, size=48))["png"]
        explain = ("none", "rollout", "heatmap", "all")[seed % 4]
        response = torchserve.post_json(PREDICT, {"data": b64(png), "explain": explain})
        assert response.status == 200, response.body[:300]
        answers.append(response.json())
    assert torchserve.post(EXPLAIN, png, "image/png").status == 200
    assert torchserve.post(PREDICT, b"").status == 400
    assert torchserve.post(PREDICT, b"not an image", "text/plain").status == 400
    small = [sample for sample in non_mri_samples() if len(sample.png) < 900_000]  # under the test limit
    for sample in small[::3]:
        response = torchserve.post(PREDICT, sample.png, "image/png")
        assert response.status == 200  # not MRI: answered and flagged, never refused
        answers.append(response.json())
    for answer in answers:
        assert_answer(answer, tuple(answer["explanations"]))
    flagged = [answer for answer in answers if answer["ood"]["flagged"]]
    assert flagged, "no answer flagged out of distribution: the OOD queries would stay empty"
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

    left = eventually(lambda: missing() or None) or []  # retried while rate windows fill up
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


def test_every_metric_a_rule_or_dashboard_names_is_in_the_scrape(torchserve, traffic):
    assert missing_from_scrape(f"{torchserve.metrics_url}/metrics") == []
