"""The serving benchmarks find what they run: `make bench-load` reads its locust scenarios by path, a path the
layout can move without any import failing."""

from __future__ import annotations

import ast
import importlib.util

from handlers.benchmarks.capacity import LOCUSTFILE, SCENARIOS


def test_bench_load_finds_the_locust_users_it_names():
    assert LOCUSTFILE.is_file(), LOCUSTFILE
    classes = {
        node.name for node in ast.walk(ast.parse(LOCUSTFILE.read_text())) if isinstance(node, ast.ClassDef)
    }
    assert set(SCENARIOS.values()) <= classes, (SCENARIOS, classes)


def test_the_load_answers_are_checked_against_the_served_schema():
    spec = importlib.util.spec_from_file_location("answers", LOCUSTFILE.with_name("answers.py"))
    answers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(answers)
    assert answers.SCHEMA_FILE.resolve() == (LOCUSTFILE.parents[2] / "response.schema.json").resolve()
    assert answers.SCHEMA_FILE.is_file()


def test_bench_serve_refuses_a_runtime_it_does_not_know(capsys):
    from training.cli import main as neurovit

    assert neurovit(["bench", "serve", "--runtimes", "torchserve,triton"]) == 2
    assert "--runtimes: torchserve and/or kserve" in capsys.readouterr().err


def test_each_runtime_gets_its_own_request_shape(monkeypatch):
    """TorchServe gets the raw bytes and the explain header; the KServe runtime one v1 instance in base64."""
    import base64
    import json

    from handlers.benchmarks import latency

    sent = []

    class Answer:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return b"{}"

    monkeypatch.setattr(
        latency.urllib.request, "urlopen", lambda request, timeout: sent.append(request) or Answer()
    )
    latency.timed_request("http://ts/predictions/neurovit", "k", b"PNG", "rollout", "torchserve")
    latency.timed_request("http://ks/v1/models/neurovit:predict", None, b"PNG", "heatmap", "kserve")
    torchserve, kserve = sent
    assert torchserve.data == b"PNG" and torchserve.get_header("X-neurovit-explain") == "rollout"
    assert torchserve.get_header("Authorization") == "Bearer k"
    body = json.loads(kserve.data)
    assert body == {"instances": [{"data": base64.b64encode(b"PNG").decode(), "explain": "heatmap"}]}
    assert kserve.get_header("Authorization") is None


def test_the_in_process_predict_answers_the_same_bytes_with_the_serving_core(tmp_path, make_slice):
    """The row the served predict is held to: real answers from the same bytes, p50 <= p95; an image the
    core refuses stops the benchmark instead of timing an error."""
    import pytest
    from fixtures.serving_samples import VERSION, encode, save_tiny_model

    from handlers.benchmarks import latency

    version_dir = tmp_path / VERSION
    save_tiny_model(version_dir / "model")
    bodies = [encode(make_slice(seed, 64), "PNG") for seed in range(3)]
    timing = latency.in_process_predict(version_dir, "neurovit", bodies, requests=5)
    assert 0 < timing["p50_ms"] <= timing["p95_ms"], timing
    with pytest.raises(SystemExit, match="refused"):
        latency.in_process_predict(version_dir, "neurovit", [b"not an image"], requests=1)


def test_each_runtime_is_held_to_the_in_process_predict_and_the_bare_forward():
    from handlers.benchmarks import latency

    results = {
        explain: {"p50_ms": p50, "p95_ms": p50 * 2}
        for explain, p50 in (("none", 30.0), ("rollout", 33.0), ("heatmap", 45.0), ("all", 60.0))
    } | {"rps": 40.0}
    near = latency.ratios(results, bare=10.0, in_process={"p50_ms": 20.0, "p95_ms": 30.0})
    assert near["predict_p50_over_in_process"] == 1.5 and near["in_process_goal_met"] is True
    assert near["predict_p95_over_in_process"] == 2.0 and near["predict_p50_over_bare"] == 3.0
    far = latency.ratios(results, bare=10.0, in_process={"p50_ms": 19.0, "p95_ms": 30.0})
    assert far["predict_p50_over_in_process"] == 1.58 and far["in_process_goal_met"] is False
