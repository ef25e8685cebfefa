"""The handler in a real TorchServe (Java frontend, Python worker) from a freshly packaged archive: every
input format, the explanation choice per request, batching, the explanations route, every bad input answered
4xx with the worker still serving, KServe's v1 and v2 envelopes, token authorisation and Prometheus metrics.
Every answer is validated against handlers/response.schema.json."""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fixtures import hostile
from fixtures.serving_samples import (
    CLASS_NAMES,
    MODEL,
    VERSION,
    assert_answer,
    assert_error,
    b64,
    bad_requests,
    good_images,
)

from neurovit import telemetry
from neurovit.serving import EXPLAIN_HEADER

pytestmark = pytest.mark.integration

PREDICT = f"/predictions/{MODEL}"
BOTH = ("heatmap", "rollout")
BAD = bad_requests(np.full((40, 40), 90, np.uint8))


@pytest.fixture(scope="module")
def slices(make_slice) -> list[np.ndarray]:
    return [make_slice(seed, size=48) for seed in range(8)]


@pytest.fixture(scope="module")
def png(slices) -> bytes:
    return good_images(slices[0])["png"]


def answered(response, explanations=()) -> dict:
    assert response.status == 200, (response.status, response.body[:300])
    assert response.headers.get("Content-Type", "").startswith("application/json")
    answer = response.json()
    assert_answer(answer, explanations)
    assert answer["model"] == {"name": MODEL, "version": VERSION}
    return answer


def backend_batches(server) -> int:
    """How many batches the Python worker has received (one log line each)."""
    log = server.workdir / "logs" / "model_log.log"
    return log.read_text(errors="replace").count("Backend received inference") if log.is_file() else 0


# ---- TorchServe's own routes, no envelope ------------------------------------------------------------------


def test_token_authorisation_is_on(torchserve, png):
    refused = torchserve.post(PREDICT, png, "image/png", token=False)
    assert refused.status == 400 and b"Token Authorization failed" in refused.body  # TorchServe 0.12: 400
    answered(torchserve.post(PREDICT, png, "image/png"))


def test_every_input_format_and_encoding_is_answered(torchserve, slices):
    images = good_images(slices[1])
    for name, data in images.items():
        answered(torchserve.post(PREDICT, data, f"image/{name}"))
    answered(torchserve.post_json(PREDICT, {"data": b64(images["png"])}))
    answered(torchserve.post_form(PREDICT, {"data": images["dicom"]}))  # multipart file upload
    answered(torchserve.post_form(PREDICT, {"data": b64(images["jpeg"])}))  # a base64 form field


def test_the_explanation_is_chosen_per_request(torchserve, png):
    answered(torchserve.post_json(PREDICT, {"data": b64(png), "explain": "rollout"}), ("rollout",))
    answered(torchserve.post_form(PREDICT, {"file": png, "explain": "heatmap"}), ("heatmap",))
    answered(torchserve.post(PREDICT, png, "image/png", headers={EXPLAIN_HEADER: "all"}), BOTH)
    # TorchServe forwards query parameters on /invocations (its /predictions route drops them).
    invocations = f"/invocations?model_name={MODEL}&explain=heatmap"
    answered(torchserve.post(invocations, png, "image/png"), ("heatmap",))
    answered(torchserve.post_json(PREDICT, {"data": b64(png), "explain": "none"}))


def test_the_explanations_route_gives_both_maps(torchserve, png):
    answer = answered(torchserve.post(f"/explanations/{MODEL}", png, "image/png"), BOTH)
    assert answer["explanations"]["rollout"]["grid_size"] == 8  # 32 px input, total stride 4


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(torchserve, slices):
    choices = ["none", "rollout", "heatmap", "all"] * 2
    wanted = [{"none": (), "all": BOTH}.get(choice, (choice,)) for choice in choices]
    payloads = [
        {"data": b64(good_images(pixels)["png"]), "explain": choice}
        for pixels, choice in zip(slices, choices, strict=True)
    ]
    alone = [
        answered(torchserve.post_json(PREDICT, payload), w)
        for payload, w in zip(payloads, wanted, strict=True)
    ]
    before = backend_batches(torchserve)
    with ThreadPoolExecutor(len(payloads)) as pool:
        responses = list(pool.map(lambda payload: torchserve.post_json(PREDICT, payload), payloads))
    batches = backend_batches(torchserve) - before
    assert 0 < batches < len(payloads), f"{batches} batches for {len(payloads)} concurrent requests"
    for response, expected, single in zip(responses, wanted, alone, strict=True):
        answer = answered(response, expected)
        assert answer["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
        for name in expected:
            assert np.allclose(
                answer["explanations"][name]["grid"], single["explanations"][name]["grid"], atol=1e-3
            )


@pytest.mark.parametrize("bad", BAD, ids=lambda bad: bad.name)
def test_a_bad_input_gets_a_4xx_with_its_reason_and_the_worker_keeps_serving(torchserve, png, bad):
    response = torchserve.post(PREDICT, bad.body, bad.content_type)
    assert response.status == bad.status, (response.status, response.body[:300])
    assert_error(response.json(), bad.status, bad.message, bad.reason)
    assert bad.message in response.reason  # the status line says it too
    answered(torchserve.post(PREDICT, png, "image/png"))


def test_bad_and_good_requests_in_one_batch_get_their_own_statuses(torchserve, png):
    text, bomb = BAD[2], BAD[4]
    requests = [
        (png, "image/png"),
        (text.body, text.content_type),
        (png, "image/png"),
        (bomb.body, "image/png"),
    ]
    with ThreadPoolExecutor(len(requests)) as pool:
        responses = list(pool.map(lambda r: torchserve.post(PREDICT, *r), requests))
    assert [r.status for r in responses] == [200, 400, 200, 413]
    answered(responses[0])
    assert_error(responses[3].json(), 413, "too large")


def test_prometheus_metrics_count_answers_and_refusals(torchserve, png):
    answered(torchserve.post(PREDICT, png, "image/png"))
    with urllib.request.urlopen(f"{torchserve.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "ts_inference_requests_total" in text
    # Every metric of the contract reaches TorchServe's Prometheus endpoint (errors: after the bad inputs
    # of the tests above; the histograms with their buckets).
    for spec in telemetry.METRICS:
        assert f"\n{spec.name}" in text, spec.name
    assert "neurovit_request_duration_seconds_bucket{" in text and 'le="0.05"' in text
    assert 'reason="empty_body"' in text and 'feature="ood_score"' in text


def test_the_management_api_describes_the_model_and_its_card_through_the_handler(torchserve):
    custom = torchserve.describe(MODEL)
    assert custom["class_names"] == CLASS_NAMES and custom["model"]["version"] == VERSION
    card = custom["model_card"]  # the version's model_card.json, from the archive
    assert card["version"] == VERSION and card["research_use_only"] is True
    assert card["network_data_format"]["inputs"]["image"]["modality"] == "MR"


# ---- hostile input (issue 18) ------------------------------------------------------------------------------


def timed(call):
    start = time.perf_counter()
    response = call()
    return response, time.perf_counter() - start


def test_a_hostile_batch_beside_good_requests_gets_per_request_answers_and_the_worker_survives(
    torchserve, png
):
    """Every hostile body of the issue, sent at once with good requests on both routes (one carrying a
    client-set ``describe`` header): TorchServe batches them together (batch 4), yet each good request is
    answered as if alone, each hostile one gets its own 4xx and reason, and the worker keeps serving."""
    bad = hostile.hostile_requests()
    good = [
        lambda: torchserve.post(PREDICT, png, "image/png"),
        lambda: torchserve.post(f"/explanations/{MODEL}", png, "image/png"),
        lambda: torchserve.post(PREDICT, png, "image/png", headers={"describe": "True"}),
        lambda: torchserve.post_json(PREDICT, {"data": b64(png), "explain": "rollout"}),
    ]
    calls = [*good, *(lambda b=b: torchserve.post(PREDICT, b.body, b.content_type) for b in bad)]
    calls.insert(5, good[0])  # interleaved, so batches mix both kinds
    with ThreadPoolExecutor(len(calls)) as pool:
        results = list(pool.map(timed, calls))
    answers = [response for response, _ in results]
    answered(answers[0])
    answered(answers[1], BOTH)
    answered(answers[2])  # a prediction, not the model's description
    answered(answers[3], ("rollout",))
    answered(answers[5])
    refusals = answers[4:5] + answers[6:]
    for case, response, (_, seconds) in zip(bad, refusals, results[4:5] + results[6:], strict=True):
        assert response.status == case.status, (case.name, response.status, response.body[:300])
        assert_error(response.json(), case.status, case.message, case.reason)
        assert seconds < 5.0, (case.name, seconds)  # queueing behind a batch included
    answered(torchserve.post(PREDICT, png, "image/png"))  # the worker survived
    with urllib.request.urlopen(f"{torchserve.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'reason="invalid_intensity"' in text and "Requests4XX" in text


def test_kserve_v1_hostile_bodies_are_4xx_and_the_next_request_succeeds(torchserve_kserve, png):
    path = f"/v1/models/{MODEL}:predict"
    too_many = hostile.many_instances(png, 17)  # the package's limit is 16
    for body, status, message in [
        (json.dumps({"instances": 5}).encode(), 400, "expected a list of images"),
        (json.dumps(too_many).encode(), 413, "too many images in one request"),
        (hostile.deep_json(), 400, "nested too deeply"),
    ]:
        response = torchserve_kserve.post(path, body, "application/json")
        assert response.status == status, (message, response.status, response.body[:300])
        assert message in response.json()["predictions"][0]["error"]
    response = torchserve_kserve.post_json(path, {"instances": [{"data": b64(png)}]})
    assert response.status == 200
    assert_answer(response.json()["predictions"][0])


def test_kserve_v2_hostile_inputs_are_4xx_and_the_next_request_succeeds(torchserve_kservev2, png):
    path = f"/v2/models/{MODEL}/infer"
    for body, message in [
        ({"inputs": [hostile.v2_missing_name(b64(png))]}, "'name' is missing"),
        ({"inputs": [hostile.v2_bad_shape(b64(png))]}, "disagrees with one base64 image"),
        ({"inputs": [hostile.v2_tensor(b64(png), datatype="FP32", shape=[2], data=[1.0])]}, "cannot reshape"),
    ]:
        response = torchserve_kservev2.post_json(path, body)
        assert response.status == 400, (message, response.status, response.body[:300])
        assert message in json.loads(response.json()["outputs"][0]["data"][0])["error"]
    response = torchserve_kservev2.post_json(path, v2_body(b64(png)))
    assert response.status == 200
    assert_answer(json.loads(response.json()["outputs"][0]["data"][0]))


# ---- KServe envelopes -------------------------------------------------------------------------------------


def test_kserve_v1_predict_and_explain(torchserve_kserve, png):
    body = {"instances": [{"data": b64(png)}, {"data": b64(png), "explain": "rollout"}]}
    response = torchserve_kserve.post_json(f"/v1/models/{MODEL}:predict", body)
    assert response.status == 200, response.body[:300]
    first, second = response.json()["predictions"]
    assert_answer(first)
    assert_answer(second, ("rollout",))
    response = torchserve_kserve.post_json(f"/v1/models/{MODEL}:explain", {"instances": [{"data": b64(png)}]})
    assert response.status == 200, response.body[:300]
    assert_answer(response.json()["explanations"][0], BOTH)


def test_kserve_v1_bad_instance_is_a_4xx_and_the_next_request_succeeds(torchserve_kserve, png):
    response = torchserve_kserve.post_json(f"/v1/models/{MODEL}:predict", {"instances": [{"data": "@@"}]})
    assert response.status == 400
    assert_error(response.json()["predictions"][0], 400, "malformed base64")
    text = BAD[2].body
    response = torchserve_kserve.post_json(
        f"/v1/models/{MODEL}:predict", {"instances": [{"data": b64(text)}]}
    )
    assert response.status == 400 and "holds text" in response.json()["predictions"][0]["error"]
    response = torchserve_kserve.post_json(f"/v1/models/{MODEL}:predict", {"instances": [{"data": b64(png)}]})
    assert response.status == 200
    assert_answer(response.json()["predictions"][0])


def v2_body(data: str, explain: str | None = None) -> dict:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}
    if explain:
        tensor["parameters"] = {"explain": explain}
    return {"id": "request-7", "inputs": [tensor]}


def test_kserve_v2_answer_is_a_json_string_in_a_bytes_output(torchserve_kservev2, png):
    response = torchserve_kservev2.post_json(f"/v2/models/{MODEL}/infer", v2_body(b64(png), "heatmap"))
    assert response.status == 200, response.body[:300]
    body = response.json()
    assert body["id"] == "request-7" and body["model_name"] == MODEL and body["model_version"] == VERSION
    (output,) = body["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [1] and output["name"] == "image"
    answer = json.loads(output["data"][0])
    assert_answer(answer, ("heatmap",))
    assert answer["label"] in CLASS_NAMES


def test_kserve_v2_bad_input_is_a_4xx_and_the_next_request_succeeds(torchserve_kservev2, png):
    response = torchserve_kservev2.post_json(f"/v2/models/{MODEL}/infer", v2_body(b64(BAD[4].body)))
    assert response.status == 413
    assert_error(json.loads(response.json()["outputs"][0]["data"][0]), 413, "too large")
    response = torchserve_kservev2.post_json(f"/v2/models/{MODEL}/infer", v2_body(b64(png), "bogus"))
    assert response.status == 400
    response = torchserve_kservev2.post_json(f"/v2/models/{MODEL}/infer", v2_body(b64(png)))
    assert response.status == 200
    assert_answer(json.loads(response.json()["outputs"][0]["data"][0]))
