"""Packaging a version for TorchServe and KServe (handlers/package.py): the archive, the KServe config and
token authorisation."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from fixtures.handler_harness import handler_for, request, run
from fixtures.serving_samples import VERSION, save_tiny_model

from handlers.package import ServerSettings, config_properties, package_stage
from neurovit.serving import MODEL_CARD_FILE


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("package") / "model")


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


def test_config_properties_switches_token_authorisation():
    on = config_properties("m", "v1", ServerSettings(token_authorization=True))
    assert "disable_token_authorization=false" in on and "enable_model_api=false" in on
    assert "disable_token_authorization=true" in config_properties("m", "v1", ServerSettings())


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
    describe = request(form={}, headers={"describe": "True"})  # the management API's describe job
    (text,), _ = run(handler_for(unpacked), [describe])
    described = json.loads(text)
    assert described["model_card"] == card and described["model"]["version"] == VERSION
