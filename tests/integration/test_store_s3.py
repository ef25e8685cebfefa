"""The S3 artifact store through the minio SDK against moto's real S3 server, with IAM authentication on."""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import pytest
import urllib3
from minio import Minio

from neurovit.errors import IntegrityError, StoreError, VersionConflictError
from neurovit.store import open_store, resolve

pytestmark = pytest.mark.integration

MODEL = "neurovit"
BUCKET = "neurovit-artifacts"
ROOT = f"s3://{BUCKET}/team/models"


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "model-out"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(64 * 1024))
    (folder / "preprocessing.json").write_text('{"image_size": 128}\n')
    (folder / "sub" / "labels.txt").write_text("glioma\nmeningioma\nnotumor\npituitary\n")
    return folder


@pytest.fixture()
def store(s3_env: dict[str, str], request: pytest.FixtureRequest):
    """A store under a prefix of its own per test, so tests do not see each other's versions."""
    return open_store(f"{ROOT}/{request.node.name.replace('[', '-').rstrip(']')}", create_bucket=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != "manifest.json"
    }


def _object_names(store, model: str = MODEL) -> set[str]:
    prefix = f"{store.prefix}{model}/"
    return {
        entry.object_name[len(prefix) :]
        for entry in store._client.list_objects(BUCKET, prefix, recursive=True)
    }


def test_round_trip(store, source: Path, tmp_path: Path) -> None:
    version = store.publish(MODEL, source, metadata={"metrics": {"accuracy": 0.9}, "code_version": "abc"})
    assert _object_names(store) == {
        f"{version}/{name}"
        for name in ("weights.bin", "preprocessing.json", "sub/labels.txt", "manifest.json")
    }
    [listed] = store.list_versions(MODEL)
    assert listed["version"] == version and listed["metrics"] == {"accuracy": 0.9}
    assert store.latest(MODEL) == version
    assert store.list_models() == [MODEL]
    manifest = store.manifest(MODEL, version)
    assert manifest["code_version"] == "abc" and set(manifest["files"]) == set(_files(source))
    fetched = store.fetch(MODEL, version, tmp_path / "fetched")
    assert _files(fetched) == _files(source)
    assert store.verify(MODEL, version) == manifest


def test_an_upload_failing_midway_is_invisible_and_a_retry_completes(
    store, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put, uploads = Minio.put_object, []

    def put_then_fail(self, bucket, key, *args, **kwargs):
        uploads.append(key)
        if len(uploads) == 2:
            raise urllib3.exceptions.ProtocolError("connection reset by peer")
        return real_put(self, bucket, key, *args, **kwargs)

    monkeypatch.setattr(Minio, "put_object", put_then_fail)
    with pytest.raises(StoreError, match="cannot reach"):
        store.publish(MODEL, source, metadata={}, version="v20261125-153000-abcdef")
    assert store.list_versions(MODEL) == []
    with pytest.raises(IntegrityError, match="incomplete"):
        store.manifest(MODEL, "v20261125-153000-abcdef")
    assert len(_object_names(store)) == 1  # one object made it, the manifest did not

    uploads.clear()

    def put_and_count(self, bucket, key, *args, **kwargs):
        uploads.append(key)
        return real_put(self, bucket, key, *args, **kwargs)

    monkeypatch.setattr(Minio, "put_object", put_and_count)
    assert (
        store.publish(MODEL, source, metadata={}, version="v20261125-153000-abcdef")
        == "v20261125-153000-abcdef"
    )
    assert len(uploads) == 3  # the object already uploaded was skipped: two files + the manifest
    assert uploads[-1].endswith("/manifest.json")
    assert [entry["version"] for entry in store.list_versions(MODEL)] == ["v20261125-153000-abcdef"]
    store.verify(MODEL, "v20261125-153000-abcdef")


def test_tampered_object_fails_verification(store, source: Path, tmp_path: Path) -> None:
    version = store.publish(MODEL, source, metadata={})
    key = f"{store.prefix}{MODEL}/{version}/sub/labels.txt"
    store._client.put_object(BUCKET, key, io.BytesIO(b"tampered"), length=8)
    with pytest.raises(IntegrityError, match="sub/labels.txt"):
        store.verify(MODEL, version)
    with pytest.raises(IntegrityError, match="sub/labels.txt"):
        store.fetch(MODEL, version, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    store._client.remove_object(BUCKET, key)
    with pytest.raises(IntegrityError, match="sub/labels.txt: file missing"):
        store.verify(MODEL, version)


def test_prune(store, source: Path) -> None:
    versions = [store.publish(MODEL, source, metadata={}) for _ in range(3)]
    leftover = "v20200101-000000-aaaaaa"
    store._client.put_object(BUCKET, f"{store.prefix}{MODEL}/{leftover}/weights.bin", io.BytesIO(b"x"), 1)
    assert store.prune(MODEL, keep=1, stale_after_s=3600) == versions[:2]  # the leftover is too recent
    assert store.prune(MODEL, keep=1, stale_after_s=0) == [leftover]
    assert {name.split("/")[0] for name in _object_names(store)} == {versions[2]}


def test_resolve_s3_addresses(store, source: Path) -> None:
    first = store.publish(MODEL, source, metadata={})
    second = store.publish(MODEL, source, metadata={}, version="release-1")
    for address, expected in [
        (f"{store.uri}/{MODEL}/{first}", first),
        (f"{store.uri}/{MODEL}/release-1", second),
        (f"{store.uri}/{MODEL}/latest", second),
        (f"{store.uri}/{MODEL}", second),
    ]:
        resolved, model, version = resolve(address)
        assert (resolved.uri, model, version) == (store.uri, MODEL, expected)
    assert resolve(store.uri, model=MODEL)[2] == second
    with pytest.raises(StoreError, match="no version"):
        resolve(f"{store.uri}/{MODEL}/v20260101-000000-000000")


def test_missing_bucket(s3_env: dict[str, str]) -> None:
    with pytest.raises(StoreError, match="does not exist.*create_bucket=True"):
        open_store("s3://no-such-bucket/models")


@pytest.mark.parametrize("region", ["us-east-1", ""])  # with a region: HEAD bucket; without: location lookup
@pytest.mark.parametrize("wrong", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"])
def test_wrong_credentials(
    store, s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, wrong, region
) -> None:
    monkeypatch.setenv("NEUROVIT_S3_REGION", region)
    monkeypatch.setenv(wrong, "AKIAWRONGWRONGWRONG1" if wrong == "AWS_ACCESS_KEY_ID" else "not-the-secret")
    with pytest.raises(StoreError, match="S3 rejected the credentials for 127.0.0.1") as caught:
        open_store(store.uri)
    # Without a region the SDK first asks for the bucket's location, whose error names the exact problem.
    expected = {"AWS_SECRET_ACCESS_KEY": "SignatureDoesNotMatch", "AWS_ACCESS_KEY_ID": "InvalidAccessKeyId"}
    assert f"({expected[wrong] if not region else 'AccessDenied'})" in str(caught.value)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in str(caught.value)
    assert "not-the-secret" not in str(caught.value)


def test_unreachable_endpoint_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROVIT_S3_ENDPOINT", f"127.0.0.1:{_free_port()}")
    monkeypatch.setenv("NEUROVIT_S3_SECURE", "0")
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach S3 endpoint 127.0.0.1"):
        open_store(ROOT)
    assert time.monotonic() - started < 10


def test_missing_endpoint_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEUROVIT_S3_ENDPOINT", raising=False)
    with pytest.raises(StoreError, match="NEUROVIT_S3_ENDPOINT"):
        open_store(ROOT)


def test_check_writable_probes_the_bucket_and_leaves_nothing(store) -> None:
    store.check_writable()
    assert not [
        obj
        for obj in store._client.list_objects(store.bucket, recursive=True)
        if ".probe-" in obj.object_name
    ]


def _claims(store, model: str = MODEL) -> set[str]:
    prefix = f"{store.prefix}.claims/{model}/"
    return {entry.object_name[len(prefix) :] for entry in store._client.list_objects(BUCKET, prefix)}


def test_a_racing_publish_with_other_files_is_refused_by_the_conditional_claim(
    store, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = store.publish(MODEL, source, metadata={})
    assert _claims(store) == {f"{version}.json"}
    original = store.manifest(MODEL, version)
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"another training run")
    # The second publish looked for a manifest before the first one wrote it.
    monkeypatch.setattr(store, "_load_manifest", lambda model, version: None)
    with pytest.raises(VersionConflictError, match="claimed by another publish"):
        store.publish(MODEL, other, metadata={}, version=version)
    # Same files: a retry or a twin, allowed through the claim.
    assert store.publish(MODEL, source, metadata={}, version=version) == version
    monkeypatch.undo()
    assert store.manifest(MODEL, version)["files"] == original["files"]
    store.verify(MODEL, version)


def test_prune_removes_claims_with_their_versions_and_keeps_protected_ones(store, source: Path) -> None:
    versions = [store.publish(MODEL, source, metadata={}) for _ in range(3)]
    store._claim(MODEL, "v20200101-000000-dddddd", {})  # a publish that died before its first upload
    removed = store.prune(MODEL, keep=1, stale_after_s=0, protect={versions[0]})
    assert removed == [versions[1], "v20200101-000000-dddddd"]
    assert _claims(store) == {f"{versions[0]}.json", f"{versions[2]}.json"}
