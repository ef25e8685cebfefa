"""`make deploy` rolls out only one complete, verified version, always as its folder with a trailing slash
(handlers/kserve_rollout.py reads it through neurovit.store; a local store stands in for the bucket)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handlers import kserve_rollout
from neurovit.errors import StoreError
from neurovit.store import LocalStore
from training.cli import main as neurovit

MODEL = "neurovit"
VERSION = "v20261125-160000-abcdef"
SIBLING = "v20261125-160000-abcdef0"  # a prefix of it without the slash is a prefix of this one too


@pytest.fixture
def store(tmp_path) -> LocalStore:
    source = tmp_path / "source"
    (source / "model-store").mkdir(parents=True)
    (source / "model-store" / "neurovit.mar").write_bytes(b"archive " * 100)
    (source / "config").mkdir()
    (source / "config" / "config.properties").write_text("inference_address=http://0.0.0.0:8085\n")
    store = LocalStore(tmp_path / "store")
    store.publish(MODEL, source, metadata={}, version=VERSION)
    store.publish(MODEL, source, metadata={}, version=SIBLING)
    return store


def version_folder(store: LocalStore, version: str = VERSION) -> Path:
    return store.root / MODEL / version


def test_a_complete_version_is_sent_as_its_folder_with_a_trailing_slash(store):
    uri = store.version_uri(MODEL, VERSION)
    assert kserve_rollout.verified_version_uri(uri) == uri + "/"
    assert kserve_rollout.verified_version_uri(uri + "/") == uri + "/"


def test_a_tampered_file_is_refused(store):
    archive = version_folder(store) / "model-store" / "neurovit.mar"
    archive.write_bytes(b"ARCHIVE " * 100)  # same size, other content
    with pytest.raises(StoreError, match="not one complete, verified version: .*sha256"):
        kserve_rollout.verified_version_uri(store.version_uri(MODEL, VERSION))


def test_a_version_without_manifest_is_refused(store):
    (version_folder(store) / "manifest.json").unlink()
    with pytest.raises(StoreError, match="incomplete"):
        kserve_rollout.verified_version_uri(store.version_uri(MODEL, VERSION))


def test_an_incomplete_version_is_refused(store):
    (version_folder(store) / "config" / "config.properties").unlink()
    with pytest.raises(StoreError, match="file missing"):
        kserve_rollout.verified_version_uri(store.version_uri(MODEL, VERSION))


@pytest.mark.parametrize("suffix", ["", "/latest"])
def test_a_model_or_latest_is_not_one_version(store, suffix):
    uri = f"{store.uri}/{MODEL}{suffix}"
    with pytest.raises(kserve_rollout.DeployError, match="does not name one version") as refused:
        kserve_rollout.verified_version_uri(uri)
    assert f"use {store.version_uri(MODEL, SIBLING)}/" in str(refused.value)  # the newest, spelt exactly


def test_a_manifest_of_another_version_is_refused(store):
    manifest = version_folder(store) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": SIBLING}))
    with pytest.raises(StoreError, match="moved or copied folder"):
        kserve_rollout.verified_version_uri(store.version_uri(MODEL, VERSION))


class FakeClient:
    def __init__(self) -> None:
        self.patches: list = []

    def get(self, name, namespace=None):
        storage = {"storageUri": "s3://neurovit/neurovit/v20261101-000000-aaaaaa/"}
        annotations = {kserve_rollout.MODE_ANNOTATION: "Knative"}
        return {
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"predictor": {"model": storage}},
        }

    def patch(self, name, inferenceservice, namespace=None):
        self.patches.append(inferenceservice)


def test_make_deploy_sends_nothing_for_a_version_it_cannot_verify(monkeypatch, capsys):
    client = FakeClient()
    monkeypatch.setattr(kserve_rollout, "connect", lambda: client)
    monkeypatch.delenv("NEUROVIT_S3_ENDPOINT", raising=False)
    uri = f"s3://neurovit/{MODEL}/{VERSION}"
    assert neurovit(["deploy", "canary", "--storage-uri", uri]) == 3  # a store error
    assert "is not one complete, verified version" in capsys.readouterr().err
    assert client.patches == []


def test_make_deploy_sends_the_verified_folder(monkeypatch, store, capsys):
    client = FakeClient()
    monkeypatch.setattr(kserve_rollout, "connect", lambda: client)
    monkeypatch.setattr(
        kserve_rollout, "STORAGE_URI", kserve_rollout.re.compile(r".*")
    )  # a local store stands in for S3
    monkeypatch.setattr(kserve_rollout, "as_inference_service", lambda patch: patch)
    assert neurovit(["deploy", "canary", "--storage-uri", store.version_uri(MODEL, VERSION)]) == 0
    (patch,) = client.patches
    assert patch["spec"]["predictor"]["model"]["storageUri"] == store.version_uri(MODEL, VERSION) + "/"
