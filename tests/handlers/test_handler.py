"""The TorchServe handler without Java (fixtures.handler_harness): TorchServe's own Context, its request
parsing and its KServe envelopes, around a tiny saved model: every input style, bad and hostile requests, the
maps it serves, and the metrics it emits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import hostile
from fixtures.handler_harness import (
    HANDLER_PATH,
    handler_for,
    json_request,
    load_handler_module,
    request,
    run,
)
from fixtures.serving_samples import (
    CLASS_NAMES,
    CONFIDENCE_MAP,
    TEMPERATURE,
    TEST_OPTIONS,
    VERSION,
    assert_answer,
    assert_error,
    b64,
    bad_requests,
    good_images,
    save_tiny_model,
)
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope
from ts.utils.util import list_classes_from_module

from neurovit import telemetry
from neurovit.drift import FEATURES
from neurovit.explain import explain
from neurovit.preprocessing import to_tensor
from neurovit.serving import EXPLAIN_HEADER, InvalidInput, parse_item

ROOT = Path(__file__).resolve().parents[2]
BOTH = ("heatmap", "rollout")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def handler_and_context(model_dir):
    return handler_for(model_dir)


@pytest.fixture(scope="module")
def images(make_slice) -> dict[str, bytes]:
    return good_images(make_slice(3, size=48))


# ---- the handler as TorchServe loads it --------------------------------------------------------------------


def test_handler_is_one_thin_class_torchserve_can_load_without_side_effects():
    module = load_handler_module()
    assert list_classes_from_module(module) == [module.NeuroViTHandler]
    source = HANDLER_PATH.read_text()
    assert len(source.splitlines()) <= 150 and "print(" not in source
    handler = module.NeuroViTHandler()
    assert handler.predictor is None and not handler.initialized  # nothing loads before initialize


def test_initialize_reads_labels_temperature_preprocessing_and_limits_from_the_archive(handler_and_context):
    predictor = handler_and_context[0].predictor
    assert predictor.class_names == CLASS_NAMES
    assert predictor.temperature == pytest.approx(TEMPERATURE)
    assert predictor.loaded.preprocessing.image_size == 32
    assert predictor.options == TEST_OPTIONS
    assert (predictor.name, predictor.version) == ("neurovit", VERSION)


def describe_job() -> dict:
    """What TorchServe's management API sends for ``GET /models/<name>?customized=true``: no parameter at
    all, and the ``describe`` header (ManagementRequestHandler.handleDescribeModel)."""
    return request(form={}, headers={"describe": "True"})


def test_describe_tells_what_the_service_answers_with(handler_and_context):
    (text,), _ = run(handler_and_context, [describe_job()])
    described = json.loads(text)
    assert described["class_names"] == CLASS_NAMES and described["temperature"] == pytest.approx(TEMPERATURE)
    assert described["explanations"] == ["rollout", "heatmap"] and described["model"]["version"] == VERSION


# ---- answers -----------------------------------------------------------------------------------------------


def test_a_batch_in_every_input_style_gets_one_answer_per_request_in_order(handler_and_context, images):
    png = images["png"]
    requests = [
        request(images["png"], "image/png"),
        request(images["jpeg"], "image/jpeg", headers={EXPLAIN_HEADER: "rollout"}),
        request(images["tiff"], "image/tiff", headers={"X-NeuroViT-Explain": "heatmap"}),
        request(images["dicom"], "application/dicom"),
        json_request({"data": b64(png), "explain": "all"}),
        # multipart: TorchServe passes file parts and text fields alike as bytes
        request(form={"data": bytearray(png), "explain": bytearray(b"heatmap")}),
        request(form={"file": bytearray(png), "explain": bytearray(b"rollout,heatmap")}),
        request(form={"data": bytearray(b64(png).encode())}),  # a base64 text field
    ]
    expected = [(), ("rollout",), ("heatmap",), (), BOTH, ("heatmap",), BOTH, ()]
    output, statuses = run(handler_and_context, requests)
    for answer, explanations in zip(output, expected, strict=True):
        assert_answer(answer, explanations)
    assert [status for status, _ in statuses] == [200] * len(requests)
    # Order: each answer is the one its image gets alone.
    for i in (1, 3):
        alone, _ = run(handler_and_context, [requests[i]])
        assert alone[0]["probabilities"] == pytest.approx(output[i]["probabilities"], abs=1e-6)


def test_confidence_is_the_temperature_scaled_softmax(handler_and_context, images):
    handler = handler_and_context[0]
    (answer,), _ = run(handler_and_context, [request(images["png"], "image/png")])
    prepared = handler.predictor.prepare(parse_item({"body": images["png"]}))
    pixels = torch.as_tensor(prepared.image, dtype=torch.float32)[None, None] / 255.0
    with torch.no_grad():
        logits = handler.predictor.model((pixels - 0.5) / 0.5).logits[0].double()
    expected = torch.softmax(logits / TEMPERATURE, dim=-1).numpy()
    assert [answer["probabilities"][name] for name in CLASS_NAMES] == pytest.approx(expected, abs=1e-6)
    assert answer["confidence"] == pytest.approx(expected.max(), abs=1e-6)
    assert answer["index"] == int(np.argmax(expected))


def test_a_model_with_a_confidence_map_serves_the_mapped_confidence(tmp_path, images):
    mapped_model = save_tiny_model(tmp_path / "model", monitoring=False, confidence_map=CONFIDENCE_MAP)
    handler_and_context = handler_for(mapped_model)
    handler = handler_and_context[0]
    (answer,), _ = run(handler_and_context, [request(images["png"], "image/png")])
    prepared = handler.predictor.prepare(parse_item({"body": images["png"]}))
    pixels = torch.as_tensor(prepared.image, dtype=torch.float32)[None, None] / 255.0
    with torch.no_grad():
        logits = handler.predictor.model((pixels - 0.5) / 0.5).logits.double()
    scaled = torch.softmax(logits / TEMPERATURE, dim=-1).numpy()
    expected = CONFIDENCE_MAP.apply(scaled)[0]
    assert abs(expected.max() - scaled.max()) > 0.05  # the map moves this confidence: the test can fail
    assert [answer["probabilities"][name] for name in CLASS_NAMES] == pytest.approx(expected, abs=1e-6)
    assert answer["confidence"] == pytest.approx(expected.max(), abs=1e-6)
    assert answer["index"] == int(np.argmax(scaled))  # the map never changes the answer
    assert handler.predictor.describe()["confidence_map"] == CONFIDENCE_MAP.to_dict()


def test_the_served_maps_are_the_cores_gradient_rollout_and_rollout(handler_and_context, images):
    handler = handler_and_context[0]
    (answer,), _ = run(handler_and_context, [json_request({"data": b64(images["png"]), "explain": "all"})])
    prepared = handler.predictor.prepare(parse_item({"body": images["png"]}))
    pixels = to_tensor(prepared.image, handler.predictor.loaded.preprocessing)
    expected = explain(handler.predictor.model, pixels, ("gradient_rollout", "rollout"))
    for name, method in (("heatmap", "gradient_rollout"), ("rollout", "rollout")):
        served = np.asarray(answer["explanations"][name]["grid"], dtype=np.float64)
        np.testing.assert_allclose(served, expected[method][0], atol=1e-3, err_msg=name)


def test_a_mixed_batch_costs_one_forward_pass(handler_and_context, images, monkeypatch):
    model = handler_and_context[0].predictor.model
    calls = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    choices = ["none", "rollout", "heatmap", "all"]
    output, _ = run(
        handler_and_context, [json_request({"data": b64(images["png"]), "explain": c}) for c in choices]
    )
    assert len(calls) == 1
    for answer, choice in zip(output, choices, strict=True):
        assert_answer(answer, {"none": (), "all": BOTH}.get(choice, (choice,)))


def test_the_explanations_route_gives_both_maps_unless_a_request_chose(handler_and_context, images):
    explain = {"explain": "True"}
    requests = [
        request(images["png"], "image/png", headers=explain),
        json_request({"data": b64(images["png"]), "explain": "rollout"}, headers=explain),
    ]
    output, _ = run(handler_and_context, requests)
    assert_answer(output[0], BOTH)
    assert_answer(output[1], ("rollout",))


@pytest.mark.parametrize("bad", bad_requests(np.full((40, 40), 90, np.uint8)), ids=lambda bad: bad.name)
def test_a_bad_request_gets_its_4xx_and_the_rest_of_the_batch_is_answered(handler_and_context, images, bad):
    requests = [request(images["png"], "image/png"), request(bad.body, bad.content_type)]
    output, statuses = run(handler_and_context, requests)
    assert_answer(output[0])
    assert_error(output[1], bad.status, bad.message, bad.reason)
    assert statuses[0][0] == 200
    assert statuses[1][0] == bad.status and bad.message in statuses[1][1]
    assert "\n" not in statuses[1][1]
    output, statuses = run(handler_and_context, [request(images["png"], "image/png")])  # still serving
    assert statuses[0][0] == 200 and output[0]["label"] in CLASS_NAMES


# ---- KServe envelopes (TS_SERVICE_ENVELOPE) ----------------------------------------------------------------


def test_kserve_v1_answers_every_instance_with_its_own_explanations(handler_and_context, images):
    png = b64(images["png"])
    body = {"instances": [{"data": png}, {"data": png, "explain": "heatmap"}, {"b64": png}]}
    (response,), statuses = run(handler_and_context, [json_request(body)], KServeEnvelope)
    assert statuses[0][0] == 200
    for answer, explanations in zip(response["predictions"], [(), ("heatmap",), ()], strict=True):
        assert_answer(answer, explanations)


def test_kserve_v1_explain_and_a_bad_instance(handler_and_context, images):
    png = b64(images["png"])
    explain = {"explain": "True"}
    (response,), _ = run(
        handler_and_context, [json_request({"instances": [png]}, headers=explain)], KServeEnvelope
    )
    assert_answer(response["explanations"][0], BOTH)
    body = {"instances": [{"data": png}, {"data": "%%%"}]}
    (response,), statuses = run(handler_and_context, [json_request(body)], KServeEnvelope)
    assert statuses[0][0] == 400 and "malformed base64" in statuses[0][1]
    assert_answer(response["predictions"][0])
    assert_error(response["predictions"][1], 400, "malformed base64")
    (response,), statuses = run(handler_and_context, [json_request({"instances": []})], KServeEnvelope)
    assert statuses[0][0] == 400 and "no image" in response["predictions"][0]["error"]


def test_kserve_v2_answers_travel_as_json_strings(handler_and_context, images):
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(images["png"])]}
    body = {"id": "req-1", "inputs": [{**tensor, "parameters": {"explain": "rollout"}}]}
    (response,), statuses = run(handler_and_context, [json_request(body)], KServev2Envelope)
    assert statuses[0][0] == 200 and response["id"] == "req-1"
    (output,) = response["outputs"]
    assert output["name"] == "image" and output["datatype"] == "BYTES" and list(output["shape"]) == [1]
    assert_answer(json.loads(output["data"][0]), ("rollout",))
    bad = {"inputs": [{**tensor, "datatype": "FP32", "data": [1.0]}]}
    (response,), statuses = run(handler_and_context, [json_request(bad)], KServev2Envelope)
    assert statuses[0][0] == 400
    assert_error(json.loads(response["outputs"][0]["data"][0]), 400, "must have datatype BYTES")
    (response,), statuses = run(handler_and_context, [json_request({"inputs": []})], KServev2Envelope)
    assert statuses[0][0] == 400
    assert_error(json.loads(response["outputs"][0]["data"][0]), 400, "no image")


def test_an_oversized_image_is_refused_before_decoding(handler_and_context):
    predictor = handler_and_context[0].predictor
    with pytest.raises(InvalidInput, match="image too large") as caught:
        predictor.prepare(parse_item({"body": b"\x89PNG" + b"\x00" * TEST_OPTIONS.max_image_bytes}))
    assert caught.value.status == 413


# ---- metrics (monitoring/METRICS.md) -----------------------------------------------------------------------


def emitted(caplog) -> list[tuple[str, float, dict]]:
    """(name, value, labels) of every sample the handler sent TorchServe, parsed from its [METRICS] lines."""
    samples = []
    for record in caplog.records:
        message = record.getMessage()
        assert "Failed to update metric" not in message, message
        if message.startswith("[METRICS]neurovit_"):
            head, dimensions = message[len("[METRICS]") :].split("|#")[:2]
            name_unit, value = head.rsplit(":", 1)
            labels = dict(pair.split(":", 1) for pair in dimensions.split(","))
            samples.append((name_unit.rsplit(".", 1)[0], float(value), labels))
    return samples


def test_metrics_yaml_declares_exactly_what_telemetry_emits():
    declared = yaml.safe_load((ROOT / "handlers" / "metrics.yaml").read_text())["model_metrics"]
    ours = {
        metric["name"]: (kind, tuple(metric["dimensions"]))
        for kind, metrics in declared.items()
        for metric in metrics
        if metric["name"].startswith("neurovit_")
    }
    assert ours == {spec.name: (spec.kind, spec.all_labels) for spec in telemetry.METRICS}


def test_a_batch_emits_latency_outcome_drift_and_reference_samples(model_dir, images, caplog):
    caplog.set_level(logging.INFO, logger="ts.metrics.caching_metric")
    fresh = handler_for(model_dir)
    good = json_request({"data": b64(images["png"]), "explain": "all"})
    output, _ = run(fresh, [good, request(b"", "application/octet-stream")])
    samples = emitted(caplog)
    by_name = {}
    for name, value, labels in samples:
        assert labels["model_name"] == "neurovit" and labels["model_version"] == VERSION
        by_name.setdefault(name, []).append((value, labels))

    assert [labels["route"] for _, labels in by_name["neurovit_request_duration_seconds"]] == ["predict"] * 2
    stages = {labels["stage"] for _, labels in by_name["neurovit_stage_duration_seconds"]}
    assert stages == {"preprocess", "forward", "explanation"}
    assert [labels["label"] for _, labels in by_name["neurovit_predictions_total"]] == [output[0]["label"]]
    ((_, error),) = by_name["neurovit_errors_total"]
    assert (error["reason"], error["status"]) == ("empty_body", "400")
    assert {labels["feature"] for _, labels in by_name["neurovit_drift_bin_total"]} == set(FEATURES)
    reference = fresh[0].predictor.reference
    confidence_bin = reference.bin_of("confidence", output[0]["confidence"])
    assert ("confidence", str(confidence_bin)) in {
        (labels["feature"], labels["bin"]) for _, labels in by_name["neurovit_drift_bin_total"]
    }
    gauges = by_name["neurovit_drift_reference_fraction"]
    assert len(gauges) == sum(len(shares) for shares in reference.fractions.values())
    assert len(by_name["neurovit_class_reference_fraction"]) == len(CLASS_NAMES)
    assert by_name["neurovit_model_info"][0][0] == 1
    assert by_name["neurovit_ood_threshold"][0][0] == pytest.approx(reference.ood_threshold)

    caplog.clear()  # the reference gauges are not re-sent on every batch
    run(fresh, [good])
    assert "neurovit_drift_reference_fraction" not in {name for name, _, _ in emitted(caplog)}


def test_every_answer_carries_its_ood_check(handler_and_context, images):
    (answer,), _ = run(handler_and_context, [request(images["png"], "image/png")])
    ood = answer["ood"]
    assert ood["flagged"] == (ood["score"] > ood["threshold"])
    noise = np.random.default_rng(5).integers(0, 256, (48, 48), dtype=np.uint8)
    (odd,), _ = run(handler_and_context, [request(good_images(noise)["png"], "image/png")])
    assert_answer(odd)  # an input unlike the training data is answered (maybe flagged), never refused


# ---- hostile input (issue 18): one bad item never changes another item's answer ---------------------------


@pytest.mark.parametrize("bad", hostile.hostile_requests(), ids=lambda bad: bad.name)
def test_a_hostile_request_gets_its_4xx_beside_good_ones(handler_and_context, images, bad):
    good = request(images["png"], "image/png")
    output, statuses = run(handler_and_context, [good, request(bad.body, bad.content_type), good])
    assert [status for status, _ in statuses] == [200, bad.status, 200]
    assert_answer(output[0]) or assert_answer(output[2])
    assert_error(output[1], bad.status, bad.message, bad.reason)


def test_an_unexpected_failure_of_one_item_is_a_500_for_it_alone(handler_and_context, images, monkeypatch):
    predictor = handler_and_context[0].predictor
    prepare = predictor.prepare

    def flaky(image_request):
        if image_request.data.startswith(b"BOOM"):
            raise RuntimeError("a bug in decoding")
        return prepare(image_request)

    monkeypatch.setattr(predictor, "prepare", flaky)
    good = request(images["png"], "image/png")
    output, statuses = run(handler_and_context, [good, request(b"BOOM" + images["png"]), good])
    assert [status for status, _ in statuses] == [200, 500, 200]
    assert output[1]["reason"] == "internal_error" and "internal error" in output[1]["error"]
    assert_answer(output[0])


def test_a_client_describe_header_cannot_take_over_the_batch(handler_and_context, images):
    good = request(images["png"], "image/png")
    sneaky = request(images["png"], "image/png", headers={"describe": "True"})
    output, statuses = run(handler_and_context, [good, sneaky, good])
    assert [status for status, _ in statuses] == [200] * 3
    for answer in output:
        assert_answer(answer)
    (alone,), _ = run(handler_and_context, [sneaky])  # alone in its batch, with a body: still a prediction
    assert_answer(alone)


def test_a_batch_mixing_routes_answers_each_request_on_its_own_route(handler_and_context, images):
    explain = {"explain": "True"}
    requests = [
        request(images["png"], "image/png"),
        request(images["png"], "image/png", headers=explain),
        request(images["png"], "image/png"),
    ]
    output, _ = run(handler_and_context, requests)
    assert_answer(output[0])
    assert_answer(output[1], BOTH)
    assert_answer(output[2])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": 5}, "expected a list of images"),
        ({"instances": "abc"}, "expected a list of images"),
        (hostile.deep_json(), "nested too deeply"),
        (b"not json at all", "not JSON"),
    ],
    ids=["instances-5", "instances-string", "deep-json", "not-json"],
)
def test_kserve_v1_bodies_the_envelope_cannot_use_are_a_400(handler_and_context, images, body, message):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    (response,), statuses = run(handler_and_context, [request(raw, "application/json")], KServeEnvelope)
    assert statuses[0][0] == 400, statuses
    assert message in response["predictions"][0]["error"]
    (response,), statuses = run(  # the worker carries on
        handler_and_context, [json_request({"instances": [{"data": b64(images["png"])}]})], KServeEnvelope
    )
    assert statuses[0][0] == 200
    assert_answer(response["predictions"][0])


def test_too_many_images_in_one_request_are_a_413_before_any_is_decoded(
    handler_and_context, images, monkeypatch
):
    predictor = handler_and_context[0].predictor
    monkeypatch.setattr(predictor, "prepare", lambda *a: pytest.fail("nothing may be decoded"))
    limit = predictor.options.max_images_per_request
    body = hostile.many_instances(images["png"], limit + 1)
    (response,), statuses = run(handler_and_context, [json_request(body)], KServeEnvelope)
    assert statuses[0][0] == 413
    assert_error(response["predictions"][0], 413, "too many images in one request", "too_many_images")
    tensors = [hostile.v2_tensor(b64(images["png"]), name=f"i{i}") for i in range(limit + 1)]
    (response,), statuses = run(handler_and_context, [json_request({"inputs": tensors})], KServev2Envelope)
    assert statuses[0][0] == 413
    assert_error(json.loads(response["outputs"][0]["data"][0]), 413, "too many images", "too_many_images")


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (hostile.v2_missing_name, "'name' is missing"),
        (hostile.v2_bad_shape, "disagrees with one base64 image per input"),
        (lambda data: hostile.v2_tensor(data, datatype="FP32", shape=[2], data=[1.0]), "cannot reshape"),
        (lambda data: hostile.v2_tensor(data, data=[]), "malformed KServe v2 body"),
    ],
    ids=["missing-name", "shape-2-of-bytes", "shape-disagrees-with-fp32-data", "empty-data"],
)
def test_kserve_v2_inputs_the_envelope_cannot_use_are_a_400(handler_and_context, images, tensor, message):
    body = {"inputs": [tensor(b64(images["png"]))]}
    (response,), statuses = run(handler_and_context, [json_request(body)], KServev2Envelope)
    assert statuses[0][0] == 400, statuses
    assert message in json.loads(response["outputs"][0]["data"][0])["error"]
    good = {"inputs": [hostile.v2_tensor(b64(images["png"]))]}
    (response,), statuses = run(handler_and_context, [json_request(good)], KServev2Envelope)
    assert statuses[0][0] == 200


def test_one_bad_v2_input_beside_a_good_one_is_refused_alone(handler_and_context, images):
    png = b64(images["png"])
    body = {"inputs": [hostile.v2_tensor(png), hostile.v2_tensor(png, name="b", shape=[3])]}
    (response,), statuses = run(handler_and_context, [json_request(body)], KServev2Envelope)
    first, second = (json.loads(output["data"][0]) for output in response["outputs"])
    assert_answer(first)
    assert second["code"] == 400 and "disagrees" in second["error"]


def test_a_version_without_a_model_card_describes_itself_without_one(handler_and_context):
    (text,), _ = run(handler_and_context, [describe_job()])
    assert json.loads(text)["model_card"] is None
