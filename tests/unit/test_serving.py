"""The serving core and the TorchServe handler without Java: TorchServe's own Context, its request parsing
(``Service.retrieve_data_for_inference``) and its KServe envelopes, around a tiny saved model."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import zipfile
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fixtures import hostile
from fixtures.serving_samples import (
    CLASS_NAMES,
    TEMPERATURE,
    TEST_OPTIONS,
    VERSION,
    assert_answer,
    assert_error,
    b64,
    bad_requests,
    encode,
    good_images,
    published_copy,
    save_tiny_model,
    served_version,
)
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.service import Service
from ts.torch_handler.request_envelope.kserve import KServeEnvelope
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope
from ts.utils.util import list_classes_from_module

from neurovit import telemetry
from neurovit.drift import FEATURES
from neurovit.explain import explain
from neurovit.preprocessing import to_tensor
from neurovit.serving import (
    EXPLAIN_HEADER,
    MODEL_CARD_FILE,
    InvalidInput,
    Predictor,
    ServingOptions,
    decode_base64,
    json_depth,
    parse_explain,
    parse_item,
    status_phrase,
)
from training.package import ServerSettings, config_properties, package_stage

ROOT = Path(__file__).resolve().parents[2]
HANDLER_PATH = ROOT / "handlers" / "neurovit_handler.py"
BOTH = ("heatmap", "rollout")


def load_handler_module():
    spec = importlib.util.spec_from_file_location("neurovit_handler", HANDLER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def handler_and_context(model_dir):
    return handler_for(model_dir)


def handler_for(model_dir):
    metrics = MetricsCacheYamlImpl(config_file_path=str(ROOT / "handlers" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "neurovit"
    context = Context(
        "neurovit",
        str(model_dir),
        {"model": {"modelName": "neurovit", "modelVersion": VERSION}},
        4,
        None,
        "0.12.0",
        metrics=metrics,
        model_yaml_config={"handler": asdict(TEST_OPTIONS)},
    )
    handler = load_handler_module().NeuroViTHandler()
    with served_version(published_copy(model_dir)):
        handler.initialize(context)
    return handler, context


@pytest.fixture(scope="module")
def images(make_slice) -> dict[str, bytes]:
    return good_images(make_slice(3, size=48))


def worker_value(body: bytes, content_type: str):
    """What TorchServe's Python worker makes of a body (otf_message_handler._retrieve_input_data)."""
    if content_type == "application/json":
        try:
            return json.loads(body.decode("utf-8"))
        except Exception:  # as the worker does: RecursionError too (it forwards the raw bytes)
            return bytearray(body)
    if content_type.startswith("text"):
        return body.decode("utf-8")
    return bytearray(body)


def request(body=b"", content_type="application/octet-stream", headers=None, form=None) -> dict:
    """One request as TorchServe's frontend sends it to the worker: parameters (the body, or form parts and
    query parameters) and headers."""
    if form is not None:
        parameters = [{"name": k, "contentType": "", "value": v} for k, v in form.items()]
    else:
        parameters = [
            {"name": "body", "contentType": content_type, "value": worker_value(body, content_type)}
        ]
    all_headers = {"explain": "False", "Content-Type": content_type, **(headers or {})}
    return {
        "parameters": parameters,
        "headers": [{"name": k.encode(), "value": v.encode()} for k, v in all_headers.items()],
    }


def run(handler_and_context, requests: list[dict], envelope=None):
    """Answers and (status, phrase) per request, as TorchServe's Service.predict would produce them."""
    handler, context = handler_and_context
    batch = [{"requestId": f"request-{i}".encode(), **r} for i, r in enumerate(requests)]
    processors, inputs, ids = Service.retrieve_data_for_inference(batch)
    context.request_ids, context.request_processor = ids, processors
    context.metrics.request_ids = ids
    entry = handler.handle if envelope is None else envelope(handler.handle).handle
    output = entry(inputs, context)
    assert isinstance(output, list) and len(output) == len(requests)
    return output, [context.get_response_status(i) for i in range(len(requests))]


def json_request(payload: dict, **kwargs) -> dict:
    return request(json.dumps(payload).encode(), "application/json", **kwargs)


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


# ---- parsing helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("none", ()),
        ("ALL", ("rollout", "heatmap")),
        ("heatmap, rollout", ("rollout", "heatmap")),
        (["heatmap"], ("heatmap",)),
        ([], ()),
        (b"rollout", ("rollout",)),
    ],
)
def test_parse_explain(value, expected):
    assert parse_explain(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [("gradcam", "unknown explanation 'gradcam'"), (3, "must be a string"), ([1], "must be a string")],
)
def test_parse_explain_refuses_unknown_names(value, message):
    with pytest.raises(InvalidInput, match=message) as caught:
        parse_explain(value)
    assert caught.value.status == 400


def test_base64_accepts_data_urls_url_safe_and_whitespace_and_refuses_the_rest():
    data = bytes(range(256))
    standard = b64(data)
    assert decode_base64(f"data:image/png;base64,{standard}") == data
    assert decode_base64(standard.replace("+", "-").replace("/", "_")) == data
    assert decode_base64(standard[:40] + "\n" + standard[40:]) == data
    assert decode_base64({"b64": standard}) == data
    for bad, message in [("abc", "malformed base64"), ("", "is empty"), (12, "must be a base64 string")]:
        with pytest.raises(InvalidInput, match=message):
            decode_base64(bad)


def test_parse_item_refuses_what_holds_no_image():
    for item, message in [
        ({"body": {"image": "x"}}, "expected a JSON object"),
        ({"body": [1, 2]}, "got a JSON list"),
        ({"explain": "all"}, "no image in the request"),
        (42, "expected an image or a JSON object"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            parse_item(item)


def test_a_dicom_preamble_starting_with_a_brace_is_not_json(images):
    dicom = images["dicom"]
    tricky = b"{" + dicom[1:]
    assert parse_item({"body": tricky}).data == tricky


def test_status_phrase_is_one_short_ascii_line():
    phrase = status_phrase("bad\r\nthing é " + "x" * 300)
    assert phrase.isascii() and "\n" not in phrase and "\r" not in phrase and len(phrase) <= 200


def test_serving_options_refuse_unknown_keys_and_document_their_defaults():
    with pytest.raises(ValueError, match="unknown serving options"):
        ServingOptions.from_mapping({"max_bytes": 1})
    with pytest.raises(ValueError, match="overlay_alpha"):
        ServingOptions(overlay_alpha=2.0)
    for field in fields(ServingOptions):
        assert field.name in ServingOptions.__doc__


def test_an_oversized_image_is_refused_before_decoding(handler_and_context):
    predictor = handler_and_context[0].predictor
    with pytest.raises(InvalidInput, match="image too large") as caught:
        predictor.prepare(parse_item({"body": b"\x89PNG" + b"\x00" * TEST_OPTIONS.max_image_bytes}))
    assert caught.value.status == 413


# ---- packaging ---------------------------------------------------------------------------------------------


def test_package_holds_the_archive_and_the_kserve_config(model_dir, tmp_path):
    files = package_stage(model_dir, tmp_path / "package", "neurovit", VERSION)
    assert sorted(files) == ["config/config.properties", "config/metrics.yaml", "model-store/neurovit.mar"]
    with zipfile.ZipFile(files["model-store/neurovit.mar"]) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
    expected = {"neurovit_handler.py", "model.safetensors", "config.json", "preprocessing.json"}
    expected |= {"neurovit.json", "model-config.yaml", "metrics.yaml", "response.schema.json"}
    assert expected <= names
    assert manifest["model"]["modelVersion"] == VERSION
    assert manifest["model"]["configFile"] == "model-config.yaml"
    properties = dict(
        line.split("=", 1)
        for line in files["config/config.properties"].read_text().splitlines()
        if "=" in line
    )
    # KServe's wrapper reaches both from inside the container; only metrics are for other pods.
    assert properties["inference_address"] == "http://127.0.0.1:8085"
    assert properties["management_address"] == "http://127.0.0.1:8086"
    assert properties["grpc_inference_address"] == properties["grpc_management_address"] == "127.0.0.1"
    assert properties["metrics_address"] == "http://0.0.0.0:8082"
    assert properties["metrics_mode"] == "prometheus" and properties["enable_envvars_config"] == "true"
    assert properties["model_store"] == "/mnt/models/model-store"
    assert int(properties["max_response_size"]) > 6_553_500
    snapshot = json.loads(properties["model_snapshot"])
    entry = snapshot["models"]["neurovit"][VERSION]
    assert entry["marName"] == "neurovit.mar" and entry["batchSize"] == 1  # KServe's envelopes cannot batch


def test_the_describe_call_returns_the_model_card_packed_in_the_archive(model_dir, tmp_path):
    """``GET /models/neurovit?customized=true``: TorchServe unpacks the .mar into the worker's model_dir
    and sends the describe job to the handler, which answers with the card the archive carries."""
    card = {"name": "neurovit", "version": VERSION, "intended_use": "research", "research_use_only": True}
    card_file = tmp_path / MODEL_CARD_FILE
    card_file.write_text(json.dumps(card))
    files = package_stage(model_dir, tmp_path / "package", "neurovit", VERSION, extra_files=[card_file])
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(files["model-store/neurovit.mar"]) as archive:
        archive.extractall(unpacked)
    assert json.loads((unpacked / MODEL_CARD_FILE).read_text()) == card
    (text,), _ = run(handler_for(unpacked), [describe_job()])
    described = json.loads(text)
    assert described["model_card"] == card and described["model"]["version"] == VERSION


def test_a_version_without_a_model_card_describes_itself_without_one(handler_and_context):
    (text,), _ = run(handler_and_context, [describe_job()])
    assert json.loads(text)["model_card"] is None


def test_config_properties_switches_token_authorisation():
    on = config_properties("m", "v1", ServerSettings(token_authorization=True))
    assert "disable_token_authorization=false" in on and "enable_model_api=false" in on
    assert "disable_token_authorization=true" in config_properties("m", "v1", ServerSettings())


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


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (hostile.v2_missing_name("aGk="), "without a 'name'"),
        (hostile.v2_bad_shape("aGk="), "disagrees"),
        (hostile.v2_tensor("aGk=", shape="1"), "'shape' must be a list"),
        (hostile.v2_tensor("aGk=", shape=[10**30, 0]), "disagrees"),
        (hostile.v2_tensor("aGk=", shape=[10**30]), "disagrees"),
        ({"body": hostile.deep_json()}, "nested 5001 deep"),
        ({"body": b'{"data": "' + b"A" * 2_000_000 + b'"}'}, "JSON body too large"),
        ({"data": "A" * 2_000_000}, "decodes to about 1,500,000 bytes"),
    ],
    ids=[
        "v2-missing-name",
        "v2-bad-shape",
        "v2-shape-not-a-list",
        "v2-empty-huge-shape",
        "v2-huge-shape",
        "deep-json",
        "big-json",
        "big-base64",
    ],
)
def test_parse_item_refuses_hostile_items_with_an_invalid_input(item, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_item(item, max_bytes=TEST_OPTIONS.max_image_bytes)


def test_json_depth_skips_strings():
    assert json_depth(b'{"a": "[[[[{{{", "b": [[1], {"c": "]]]\\"}]}') == 3
    assert json_depth(hostile.deep_json(5_000)) == 5_001


def test_the_default_pixel_limit_refuses_a_small_colour_bomb_before_decoding(model_dir):
    """A 58 KB one-colour 4096 x 4096 PNG took 419 MiB to decode under the old 40 MP default."""
    predictor = Predictor.load(model_dir, "neurovit", VERSION, options=ServingOptions())
    bomb = encode(np.zeros((4096, 4096, 3), np.uint8), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidInput, match="more than the limit of 4,194,304") as caught:
        predictor.prepare(parse_item({"body": bomb}))
    assert caught.value.status == 413
