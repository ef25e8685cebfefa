"""The KServe runtime for real: KServe's own model server (handlers.kserve_server, from .venv-kserve) on the
tiny published version. Readiness, v1 predict and explain, v2 inference read by KServe's own v2 client,
model metadata, /metrics, the hostile-input corpus, the same answers as TorchServe's, and KServe's storage
initializer code fetching a version from the S3 test endpoint into the folder the runtime loads."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import textwrap
import urllib.request
from pathlib import Path

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

from handlers import local_service
from neurovit import RESEARCH_DISCLAIMER, telemetry
from neurovit.integrity import MANIFEST_FILE
from neurovit.serving import EXPLAIN_HEADER
from neurovit.store import open_store

pytestmark = pytest.mark.integration

PREDICT = f"/v1/models/{MODEL}:predict"
EXPLAIN = f"/v1/models/{MODEL}:explain"
INFER = f"/v2/models/{MODEL}/infer"
BOTH = ("heatmap", "rollout")
BAD = bad_requests(np.full((40, 40), 90, np.uint8))


@pytest.fixture(scope="module")
def slices(make_slice) -> list[np.ndarray]:
    return [make_slice(seed, size=48) for seed in range(4)]


@pytest.fixture(scope="module")
def png(slices) -> bytes:
    return good_images(slices[0])["png"]


def v1_answers(response, key: str = "predictions") -> list[dict]:
    assert response.status == 200, (response.status, response.body[:300])
    answers = response.json()[key]
    for answer in answers:
        assert answer["model"] == {"name": MODEL, "version": VERSION}
    return answers


def refused(response, status: int, message: str, reason: str | None = None) -> dict:
    assert response.status == status, (message, response.status, response.body[:300])
    body = response.json()
    assert_error({key: body[key] for key in ("error", "code", "reason")}, status, message, reason)
    return body


# ---- readiness, v1, metadata -------------------------------------------------------------------------------


def test_the_model_is_ready_on_both_protocols(kserve):
    assert kserve.get(f"/v1/models/{MODEL}").json() == {"name": MODEL, "ready": True}
    assert kserve.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert kserve.get("/v2/models/another/ready").status == 404


def test_describe_returns_what_torchserves_describe_call_does_with_the_model_card(kserve, torchserve):
    description = kserve.get(f"/v1/models/{MODEL}/describe").json()
    assert description["model"] == {"name": MODEL, "version": VERSION}
    card = description["model_card"]  # the version folder's model_card.json, beside model/
    assert card["version"] == VERSION and card["research_use_only"] is True
    # TorchServe's frontend (Gson) drops null fields
    assert without_nulls(description) == torchserve.describe(MODEL)


def without_nulls(value):
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    return [without_nulls(item) for item in value] if isinstance(value, list) else value


def test_v1_predict_and_explain_answer_as_torchserve_does(kserve, png):
    body = {"instances": [{"data": b64(png)}, {"data": b64(png), "explain": "rollout"}]}
    first, second = v1_answers(kserve.post_json(PREDICT, body))
    assert_answer(first)
    assert_answer(second, ("rollout",))
    (explained,) = v1_answers(kserve.post_json(EXPLAIN, {"instances": [{"data": b64(png)}]}), "explanations")
    assert_answer(explained, BOTH)
    assert explained["explanations"]["rollout"]["grid_size"] == 8  # 32 px input, total stride 4
    # The raw file with its own content type, the map named in the header; a lone JSON object.
    (raw,) = v1_answers(kserve.post(PREDICT, png, "image/png", headers={EXPLAIN_HEADER: "heatmap"}))
    assert_answer(raw, ("heatmap",))
    (lone,) = v1_answers(kserve.post_json(PREDICT, {"data": b64(png), "explain": "all"}))
    assert_answer(lone, BOTH)
    assert raw["probabilities"] == pytest.approx(first["probabilities"], abs=1e-6)  # batch of 1 vs 2


def test_the_v2_metadata_declares_the_typed_inputs_and_outputs(kserve):
    metadata = kserve.get(f"/v2/models/{MODEL}").json()
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {output["name"]: (output["datatype"], output["shape"]) for output in metadata["outputs"]}
    assert outputs == {
        "label": ("BYTES", [-1]),
        "probabilities": ("FP32", [-1, len(CLASS_NAMES)]),
        "confidence": ("FP32", [-1]),
        "ood_score": ("FP32", [-1]),
        "ood_flagged": ("BOOL", [-1]),
        "rollout": ("FP32", [-1, 8, 8]),
        "rollout_overlay": ("BYTES", [-1]),
        "heatmap": ("FP32", [-1, 8, 8]),
        "heatmap_overlay": ("BYTES", [-1]),
    }


# ---- v2, read by KServe's own v2 client -------------------------------------------------------------------

V2_CLIENT = """
import asyncio, base64, json, sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

url, first, second = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()


def read(response):
    outputs = {}
    for output in response.outputs:
        values = output.as_numpy()
        plain = [v.decode() if isinstance(v, bytes) else v for v in values.ravel().tolist()]
        outputs[output.name] = {
            "datatype": output.datatype, "shape": list(values.shape), "dtype": values.dtype.kind,
            "values": np.array(plain, dtype=object).reshape(values.shape).tolist(),
        }
    return {"id": response.id, "parameters": dict(response.parameters or {}), "outputs": outputs}


async def main():
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=300, retries=0))
    images = [base64.b64encode(first).decode(), base64.b64encode(second).decode()]
    as_json = InferInput("image", [2], "BYTES", images, parameters={"explain": "heatmap"})
    request = InferRequest("neurovit", [as_json], request_id="r-7", parameters={"overlays": True})
    typed = read(await client.infer(url, request, model_name="neurovit"))
    # The binary extension both ways (KServe's server reads binary BYTES inputs as UTF-8 text: base64 in).
    as_binary = InferInput("image", [1], "BYTES")
    as_binary.set_data_from_numpy(np.array([base64.b64encode(first)], dtype=object), binary_data=True)
    wanted = [
        RequestedOutput("probabilities", {"binary_data": True}),
        RequestedOutput("label", {"binary_data": False}),
    ]
    request = InferRequest("neurovit", [as_binary], request_id="r-8", request_outputs=wanted)
    binary = read(await client.infer(url, request, model_name="neurovit"))
    raw = InferInput("image", [1], "BYTES")
    raw.set_data_from_numpy(np.array([first], dtype=object), binary_data=True)  # the PNG itself: not text
    try:
        await client.infer(url, InferRequest("neurovit", [raw]), model_name="neurovit")
        refused = {"status": 200}
    except Exception as error:  # httpx.HTTPStatusError
        refused = {"status": error.response.status_code, **error.response.json()}
    await client.close()
    print(json.dumps({"typed": typed, "binary": binary, "raw_png": refused}))


asyncio.run(main())
"""


def run_in_kserve_venv(python, script: str, *args: str, env: dict | None = None) -> dict:
    result = subprocess.run(
        [str(python), "-c", textwrap.dedent(script), *args],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_v2_client_reads_typed_tensors(kserve, kserve_python, slices, tmp_path):
    files = []
    for i in range(2):
        files.append(tmp_path / f"slice{i}.png")
        files[-1].write_bytes(good_images(slices[i])["png"])
    read = run_in_kserve_venv(kserve_python, V2_CLIENT, kserve.url, *map(str, files))
    typed, outputs = read["typed"], read["typed"]["outputs"]
    assert typed["id"] == "r-7"
    assert typed["parameters"]["class_names"].split(",") == CLASS_NAMES
    assert typed["parameters"]["disclaimer"] == RESEARCH_DISCLAIMER
    shapes = {name: (o["datatype"], o["shape"], o["dtype"]) for name, o in outputs.items()}
    assert shapes == {
        "label": ("BYTES", [2], "O"),
        "probabilities": ("FP32", [2, 4], "f"),
        "confidence": ("FP32", [2], "f"),
        "ood_score": ("FP32", [2], "f"),
        "ood_flagged": ("BOOL", [2], "b"),
        "heatmap": ("FP32", [2, 8, 8], "f"),
        "heatmap_overlay": ("BYTES", [2], "O"),
    }
    for i, path in enumerate(files):  # the same numbers as the v1 answer for the same file
        (answer,) = v1_answers(
            kserve.post(PREDICT, path.read_bytes(), "image/png", headers={EXPLAIN_HEADER: "heatmap"})
        )
        assert outputs["label"]["values"][i] == answer["label"]
        expected = [answer["probabilities"][name] for name in CLASS_NAMES]
        assert outputs["probabilities"]["values"][i] == pytest.approx(expected, abs=1e-6)
        assert outputs["ood_flagged"]["values"][i] == answer["ood"]["flagged"]
        assert np.allclose(
            outputs["heatmap"]["values"][i], answer["explanations"]["heatmap"]["grid"], atol=1e-6
        )
        assert outputs["heatmap_overlay"]["values"][i] == answer["explanations"]["heatmap"]["overlay_png"]
    binary = read["binary"]["outputs"]
    assert read["raw_png"]["status"] == 400 and read["raw_png"]["reason"] == "bad_base64"
    assert list(binary) == ["probabilities", "label"]  # only the requested outputs
    assert binary["probabilities"]["shape"] == [1, 4]
    first = binary["probabilities"]["values"][0]
    assert first == pytest.approx(outputs["probabilities"]["values"][0], abs=1e-7)


# ---- refusals ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", hostile.hostile_requests(), ids=lambda bad: bad.name)
def test_every_hostile_body_is_a_4xx_with_its_reason_and_the_server_keeps_answering(kserve, png, bad):
    refused(kserve.post(PREDICT, bad.body, bad.content_type), bad.status, bad.message, bad.reason)
    v1_answers(kserve.post(PREDICT, png, "image/png"))


@pytest.mark.parametrize("bad", BAD, ids=lambda bad: bad.name)
def test_every_bad_input_is_a_4xx_with_a_reason(kserve, png, bad):
    response = kserve.post(PREDICT, bad.body, bad.content_type)
    if bad.content_type == "application/octet-stream":
        # KServe's server reads octet-stream bodies as JSON (its JSON_HEADERS): a file sent so is refused as
        # malformed JSON before the model sees it; send images with their own content type.
        refused(response, 400, "malformed JSON body: not JSON", "bad_json")
    else:
        refused(response, bad.status, bad.message, bad.reason)
    v1_answers(kserve.post(PREDICT, png, "image/png"))


def test_v1_bodies_the_server_cannot_use_are_4xx_and_a_bad_instance_fails_alone(kserve, png):
    refused(kserve.post_json(PREDICT, {"instances": 5}), 400, "expected a list of images", "bad_request")
    refused(
        kserve.post_json(PREDICT, hostile.many_instances(png, 17)), 413, "too many images", "too_many_images"
    )
    refused(
        kserve.post(PREDICT, hostile.deep_json(), "application/json"), 400, "nested too deeply", "bad_json"
    )
    refused(kserve.post(PREDICT, b'{"instances": [', "application/json"), 400, "malformed", "bad_json")
    body = refused(
        kserve.post_json(PREDICT, {"instances": [{"data": b64(png)}, {"data": "@@"}]}),
        400,
        "malformed base64",
        "bad_base64",
    )
    good, bad = body["predictions"]  # every instance answered, the status is the first error's
    assert_answer(good)
    assert_error(bad, 400, "malformed base64", "bad_base64")


@pytest.mark.parametrize(
    ("body", "status", "message", "reason"),
    [
        ({"inputs": [hostile.v2_missing_name("x")]}, 400, "name: Field required", "bad_request"),
        (
            {"inputs": [hostile.v2_tensor("x", shape=[3], data=["x", "y"])]},
            400,
            "disagrees with one",
            "bad_request",
        ),
        (
            {"inputs": [hostile.v2_tensor("x", datatype="FP32", shape=[2], data=[1.0])]},
            400,
            "BYTES",
            "bad_request",
        ),
        ({"inputs": []}, 400, "no image", "empty_body"),
        ({"inputs": [hostile.v2_tensor("@@")]}, 400, "malformed base64", "bad_base64"),
        (
            {"inputs": [hostile.v2_tensor("x", shape=[17], data=["x"] * 17)]},
            413,
            "too many images",
            "too_many_images",
        ),
    ],
    ids=["no name", "shape", "datatype", "no inputs", "base64", "too many"],
)
def test_v2_inputs_the_core_refuses_are_4xx_with_its_reasons(kserve, png, body, status, message, reason):
    refused(kserve.post_json(INFER, body), status, message, reason)


def test_a_v2_body_nested_too_deep_is_a_400(kserve, png):
    refused(
        kserve.post(INFER, b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json"),
        400,
        "malformed",
        "bad_json",
    )
    body = {"inputs": [hostile.v2_tensor(b64(png))]}
    assert kserve.post_json(INFER, body).status == 200


# ---- metrics -----------------------------------------------------------------------------------------------


def test_metrics_carry_the_contracts_series_after_requests(kserve, png):
    v1_answers(kserve.post(PREDICT, png, "image/png"))
    v1_answers(kserve.post(EXPLAIN, png, "image/png"), "explanations")
    kserve.post(PREDICT, b"", "image/png")
    with urllib.request.urlopen(f"{kserve.url}/metrics", timeout=30) as response:
        text = response.read().decode()
    for spec in telemetry.METRICS:
        assert f"\n{spec.name}" in text, spec.name
    assert 'neurovit_request_duration_seconds_bucket{le="0.0025"' in text  # this model's buckets
    assert 'route="explain"' in text and 'stage="explanation"' in text
    assert 'stage="queue"' in text  # the wait for the model: this runtime's queue (METRICS.md)
    assert 'reason="empty_body"' in text and 'feature="ood_score"' in text
    assert "request_predict_seconds_bucket" in text  # KServe's own stage histograms beside


# ---- the same answers as TorchServe's ----------------------------------------------------------------------


def test_both_runtimes_give_the_same_answers_for_the_same_slices(kserve, torchserve, slices):
    for pixels in slices:
        image = good_images(pixels)["png"]
        (ours,) = v1_answers(kserve.post(PREDICT, image, "image/png", headers={EXPLAIN_HEADER: "all"}))
        response = torchserve.post(
            f"/predictions/{MODEL}", image, "image/png", headers={EXPLAIN_HEADER: "all"}
        )
        assert response.status == 200, response.body[:300]
        theirs = response.json()
        assert ours["label"] == theirs["label"] and ours["ood"] == theirs["ood"]
        assert ours["probabilities"] == pytest.approx(theirs["probabilities"], abs=1e-5)
        for name in BOTH:
            assert ours["explanations"][name]["grid"] == theirs["explanations"][name]["grid"], name


def publish_to(store_uri, version_dir: Path, staging: Path):
    """``version_dir``'s files published again as VERSION in the store at ``store_uri``."""
    shutil.copytree(version_dir, staging, ignore=shutil.ignore_patterns(MANIFEST_FILE))
    store = open_store(store_uri, create_bucket=True)
    store.publish(MODEL, staging, metadata={}, version=VERSION)
    return store


# ---- KServe's storage initializer --------------------------------------------------------------------------

STORAGE_INITIALIZER = """
import json, sys
from kserve_storage import Storage

# What the storage-initializer init container runs: the storageUri into the model mount.
print(json.dumps(Storage.download_files([sys.argv[1]], [sys.argv[2]])))
"""


def test_the_storage_initializer_fetches_a_version_the_runtime_then_loads(
    kserve_python, published_version, s3_server, start_kserve, png, monkeypatch, tmp_path
):
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    store = publish_to("s3://neurovit-models/serving", published_version, tmp_path / "staged")
    uri = (
        store.version_uri(MODEL, VERSION) + "/"
    )  # with the slash, as storageUri must be (no sibling versions)
    pod_env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ENDPOINT_URL": f"http://{s3_server['NEUROVIT_S3_ENDPOINT']}",
        "AWS_ACCESS_KEY_ID": s3_server["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": s3_server["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    mount = tmp_path / "mnt-models"
    run_in_kserve_venv(kserve_python, STORAGE_INITIALIZER, uri, str(mount), env=pod_env)
    assert (mount / "manifest.json").is_file() and (mount / "model" / "model.safetensors").is_file()
    with start_kserve(mount, tmp_path / "server") as server:
        # Loaded and not yet asked: the model-not-loaded alert reads neurovit_model_info on this runtime.
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
            assert f'neurovit_model_info{{model_name="{MODEL}",model_version="{VERSION}"}} 1.0' in (
                response.read().decode()
            )
        (answer,) = v1_answers(server.post(PREDICT, png, "image/png"))
        assert_answer(answer)


# ---- make serve RUNTIME=kserve, make predict, make stop ------------------------------------------------


def test_neurovit_serve_with_the_kserve_runtime_then_predict_and_stop(
    kserve_python, published_version, png, tmp_path, capsys
):
    serve_dir, image = tmp_path / "serve", tmp_path / "slice.png"
    image.write_bytes(png)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = publish_to(tmp_path / "store", published_version, tmp_path / "staged")
    state = local_service.serve("latest", store.uri, serve_dir, port=port, runtime="kserve")
    try:
        assert state["runtime"] == "kserve" and state["version"] == VERSION
        assert local_service.is_running(serve_dir)
        answer = local_service.predict(image, "rollout", serve_dir=serve_dir, out_dir=tmp_path / "out")
        assert_answer(answer, ("rollout",))
        assert (tmp_path / "out" / "slice.rollout.png").is_file()
    finally:
        assert local_service.stop(serve_dir)
    assert not local_service.is_running(serve_dir)
    assert "the KServe runtime stopped" in capsys.readouterr().out
