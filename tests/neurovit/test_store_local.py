"""The local-folder artifact store: round trip, integrity, interrupted publishes, pruning, resolve, errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from neurovit import store as store_module
from neurovit.errors import IntegrityError, StoreError, VersionConflictError
from neurovit.store import MANIFEST_FILE, VERSION_PATTERN, new_version_id, open_store, resolve

MODEL = "neurovit"
METADATA = {"metrics": {"accuracy": 0.91, "macro_f1": 0.88, "note": "text"}, "code_version": "abc123"}


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "model-out"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(os.urandom(4096))
    (folder / "preprocessing.json").write_text('{"image_size": 128}\n')
    (folder / "sub" / "labels.txt").write_text("glioma\nmeningioma\nnotumor\npituitary\n")
    return folder


@pytest.fixture()
def store(tmp_path: Path) -> store_module.ArtifactStore:
    return open_store(tmp_path / "store")


def _files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != MANIFEST_FILE
    }


def test_round_trip(store: store_module.ArtifactStore, source: Path, tmp_path: Path) -> None:
    version = store.publish(MODEL, source, metadata=METADATA)
    assert VERSION_PATTERN.match(version)

    [listed] = store.list_versions(MODEL)
    assert listed["version"] == version
    assert listed["size"] == sum(len(data) for data in _files(source).values())
    assert listed["metrics"] == {"accuracy": 0.91, "macro_f1": 0.88}  # scalars only
    assert store.latest(MODEL) == version
    assert store.list_models() == [MODEL]

    manifest = store.manifest(MODEL, version)
    assert manifest["model"] == MODEL and manifest["version"] == version
    assert manifest["code_version"] == "abc123" and manifest["metrics"] == METADATA["metrics"]
    weights = (source / "weights.bin").read_bytes()
    assert manifest["files"]["weights.bin"] == {"sha256": hashlib.sha256(weights).hexdigest(), "size": 4096}
    assert set(manifest["files"]) == {"weights.bin", "preprocessing.json", "sub/labels.txt"}

    fetched = store.fetch(MODEL, version, tmp_path / "fetched")
    assert _files(fetched) == _files(source)
    assert json.loads((fetched / MANIFEST_FILE).read_text()) == manifest
    assert store.verify(MODEL, version) == manifest
    assert store.manifest(MODEL, "latest") == manifest


def test_versions_sort_by_time() -> None:
    earlier = datetime(2026, 11, 25, 15, 30, tzinfo=UTC)
    ids = [new_version_id(earlier + timedelta(seconds=seconds)) for seconds in (0, 1, 60, 86400)]
    assert ids == sorted(ids)
    assert ids[0].startswith("v20261125-153000-")


def test_tampered_file_fails_verify_and_fetch(
    store: store_module.ArtifactStore, source: Path, tmp_path: Path
) -> None:
    version = store.publish(MODEL, source, metadata={})
    stored = tmp_path / "store" / MODEL / version / "weights.bin"
    stored.write_bytes(b"\0" + stored.read_bytes()[1:])
    with pytest.raises(IntegrityError, match="weights.bin"):
        store.verify(MODEL, version)
    with pytest.raises(IntegrityError, match="weights.bin"):
        store.fetch(MODEL, version, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".dest")]  # no staging left


def test_missing_file_names_the_file(store: store_module.ArtifactStore, source: Path, tmp_path: Path) -> None:
    version = store.publish(MODEL, source, metadata={})
    (tmp_path / "store" / MODEL / version / "sub" / "labels.txt").unlink()
    with pytest.raises(IntegrityError, match="sub/labels.txt"):
        store.verify(MODEL, version)


def test_manifest_cannot_write_outside_the_destination(
    store: store_module.ArtifactStore, source: Path, tmp_path: Path
) -> None:
    version = store.publish(MODEL, source, metadata={})
    manifest_path = tmp_path / "store" / MODEL / version / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["../../escaped.txt"] = manifest["files"].pop("sub/labels.txt")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="unsafe"):
        store.fetch(MODEL, version, tmp_path / "deep" / "dest")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_version_without_manifest_is_invisible(store: store_module.ArtifactStore, tmp_path: Path) -> None:
    half = tmp_path / "store" / MODEL / "v20260101-000000-abcdef"
    half.mkdir(parents=True)
    (half / "weights.bin").write_bytes(b"partial")
    assert store.list_versions(MODEL) == []
    assert store.list_models() == []
    with pytest.raises(StoreError, match="no complete version"):
        store.latest(MODEL)
    with pytest.raises(IntegrityError, match="incomplete"):
        store.manifest(MODEL, half.name)
    with pytest.raises(StoreError, match="no version"):
        store.manifest(MODEL, "v20260101-000000-000000")


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_publish_failing_midway_leaves_nothing_and_a_retry_completes(
    store: store_module.ArtifactStore,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: BaseException,
) -> None:
    real_copy, calls = store_module._copy_file, []

    def copy_then_fail(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise failure
        real_copy(src, dst)

    monkeypatch.setattr(store_module, "_copy_file", copy_then_fail)
    version = new_version_id()
    with pytest.raises(StoreError if isinstance(failure, OSError) else KeyboardInterrupt):
        store.publish(MODEL, source, metadata={}, version=version)
    assert len(calls) == 2
    assert store.list_versions(MODEL) == []
    assert list((tmp_path / "store" / MODEL).iterdir()) == []  # the build folder was cleaned up

    monkeypatch.setattr(store_module, "_copy_file", real_copy)
    assert store.publish(MODEL, source, metadata={}, version=version) == version
    assert [entry["version"] for entry in store.list_versions(MODEL)] == [version]
    store.verify(MODEL, version)


def test_republishing_is_idempotent_but_versions_are_immutable(
    store: store_module.ArtifactStore, source: Path
) -> None:
    version = store.publish(MODEL, source, metadata={})
    assert store.publish(MODEL, source, metadata={}, version=version) == version
    (source / "weights.bin").write_bytes(b"retrained")
    with pytest.raises(StoreError, match="immutable"):
        store.publish(MODEL, source, metadata={}, version=version)
    assert len(store.list_versions(MODEL)) == 1


def test_prune_keeps_the_newest_and_removes_stale_leftovers(
    store: store_module.ArtifactStore, source: Path, tmp_path: Path
) -> None:
    versions = [store.publish(MODEL, source, metadata={"metrics": {"run": run}}) for run in range(4)]
    model_dir = tmp_path / "store" / MODEL
    crashed = [model_dir / "v20200101-000000-aaaaaa", model_dir / ".publishing-v20200101-000000-bbbbbb-x1"]
    for folder in crashed:  # a crashed publish's version folder, and a crashed build folder
        folder.mkdir()
        (folder / "weights.bin").write_bytes(b"partial")
        for path in (folder / "weights.bin", folder):
            os.utime(path, (time.time() - 7200, time.time() - 7200))
    fresh = model_dir / "v20990101-000000-cccccc"  # an incomplete version that may still be publishing
    fresh.mkdir()

    removed = store.prune(MODEL, keep=2, stale_after_s=60)
    assert removed == [*versions[:2], *sorted(folder.name for folder in crashed)]
    assert [entry["version"] for entry in store.list_versions(MODEL)] == versions[2:]
    assert fresh.exists()  # too young to be called stale
    assert sorted(path.name for path in model_dir.iterdir()) == sorted([*versions[2:], fresh.name])

    assert store.prune(MODEL, keep=1, stale_after_s=0) == [versions[2], fresh.name]
    with pytest.raises(ValueError):
        store.prune(MODEL, keep=0)


def test_fetch_into_existing_folders(store: store_module.ArtifactStore, source: Path, tmp_path: Path) -> None:
    version = store.publish(MODEL, source, metadata={})
    dest = store.fetch(MODEL, version, tmp_path / "dest")
    assert store.fetch(MODEL, version, dest) == dest  # already there and intact: reused
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="overwrite"):
        store.fetch(MODEL, version, other)
    assert (other / "keep.txt").exists()
    store.fetch(MODEL, version, other, overwrite=True)
    assert _files(other) == _files(source)


def test_resolve_local_addresses(store: store_module.ArtifactStore, source: Path, tmp_path: Path) -> None:
    first = store.publish(MODEL, source, metadata={})
    second = store.publish(MODEL, source, metadata={}, version="release-1")
    root = tmp_path / "store"
    for address, expected in [
        (root / MODEL / first, first),
        (root / MODEL / "release-1", second),
        (root / MODEL / "latest", second),
        (root / MODEL, second),
    ]:
        resolved_store, model, version = resolve(str(address))
        assert (model, version) == (MODEL, expected)
        assert resolved_store.manifest(model, version)["version"] == expected
    assert resolve(str(root), model=MODEL)[1:] == (MODEL, second)
    with pytest.raises(StoreError):
        resolve(str(root / MODEL / "v20260101-000000-000000"))


def test_unusable_store_paths(source: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="is a file"):
        open_store(blocker / "store")
    with pytest.raises(StoreError, match="is a file"):
        open_store(blocker)
    # The root is fine but the model folder cannot be created.
    root = tmp_path / "root"
    root.mkdir()
    (root / MODEL).write_text("in the way")
    with pytest.raises(StoreError, match="not writable"):
        open_store(root).publish(MODEL, source, metadata={})


def test_rejects_bad_input(store: store_module.ArtifactStore, source: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        store.publish(MODEL, source, metadata={"files": {}})
    with pytest.raises(ValueError, match="JSON"):
        store.publish(MODEL, source, metadata={"when": datetime.now(UTC)})
    with pytest.raises(ValueError, match="invalid model"):
        store.publish("../escape", source, metadata={})
    with pytest.raises(ValueError, match="invalid version"):
        store.manifest(MODEL, "../../elsewhere")
    with pytest.raises(StoreError, match="nothing to publish"):
        store.publish(MODEL, tmp_path / "missing", metadata={})
    with pytest.raises(StoreError, match="unsupported"):
        open_store("ftp://host/store")


def test_check_writable_fails_fast_on_an_unusable_store(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="unusable"):
        open_store(str(blocker / "store")).check_writable()
    store_root = tmp_path / "fresh" / "store"
    open_store(str(store_root)).check_writable()
    assert store_root.is_dir() and not any(store_root.iterdir())  # the probe leaves nothing behind


# ---- hardening: names, concurrent publishes, protected versions, credentials ------------------------------


@pytest.mark.parametrize("name", ["v1\n", "neurovit\n", "v20261125-160000-ab12cd\n"])
def test_names_with_a_trailing_newline_are_refused(
    store: store_module.ArtifactStore, source: Path, name: str
) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        store.publish(MODEL, source, metadata={}, version=name)
    with pytest.raises(ValueError, match="invalid model"):
        store.publish(name, source, metadata={})
    assert not VERSION_PATTERN.match(name)  # \Z: a caller's .match() is exact too
    assert store.list_models() == []


def test_a_racing_publish_with_other_files_is_refused_and_deletes_nothing(
    store: store_module.ArtifactStore, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = new_version_id()
    store.publish(MODEL, source, metadata={}, version=version)
    original = store.manifest(MODEL, version)
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"another training run")
    # The second publish looked for a manifest before the first one had renamed its version into place.
    monkeypatch.setattr(store, "_load_manifest", lambda model, version: None)
    with pytest.raises(VersionConflictError, match="claimed by another publish"):
        store.publish(MODEL, other, metadata={}, version=version)
    monkeypatch.undo()
    assert store.manifest(MODEL, version) == original
    store.verify(MODEL, version)


def test_a_twin_publish_of_the_same_files_completes_without_harm(
    store: store_module.ArtifactStore, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    version = new_version_id()
    store.publish(MODEL, source, metadata={}, version=version)
    original = store.manifest(MODEL, version)
    monkeypatch.setattr(store, "_load_manifest", lambda model, version: None)
    assert store.publish(MODEL, source, metadata={}, version=version) == version
    monkeypatch.undo()
    assert store.manifest(MODEL, version) == original


def test_an_interrupted_claim_blocks_other_files_until_pruned(
    store: store_module.ArtifactStore, source: Path, tmp_path: Path
) -> None:
    version = new_version_id()
    store._claim(MODEL, version, {"weights.bin": {"sha256": "0" * 64, "size": 1}})  # then the run died
    with pytest.raises(VersionConflictError):
        store.publish(MODEL, source, metadata={}, version=version)
    assert not (tmp_path / "store" / MODEL / version).exists()
    assert store.prune(MODEL, keep=1, stale_after_s=0) == [version]
    assert store.publish(MODEL, source, metadata={}, version=version) == version


def test_prune_keeps_protected_versions(store: store_module.ArtifactStore, source: Path) -> None:
    versions = [store.publish(MODEL, source, metadata={"metrics": {"run": run}}) for run in range(4)]
    # versions[0]: the rollback target; versions[1]: serving. Neither counts toward keep.
    assert store.prune(MODEL, keep=1, protect={versions[0], versions[1]}) == [versions[2]]
    assert [entry["version"] for entry in store.list_versions(MODEL)] == [
        versions[0],
        versions[1],
        versions[3],
    ]


SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "uri",
    [
        f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@neurovit",
        f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@neurovit/neurovit/v20261125-160000-ab12cd",
        f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@neurovit/neurovit/latest",
    ],
)
def test_credentials_in_a_store_uri_are_refused_and_never_printed(
    uri: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import traceback

    monkeypatch.setenv("NEUROVIT_S3_ENDPOINT", "127.0.0.1:1")  # nothing listens: fails fast if reached
    monkeypatch.setenv("NEUROVIT_S3_SECURE", "0")
    caplog.set_level(logging.DEBUG)
    for call in (lambda: open_store(uri), lambda: resolve(uri)):
        with pytest.raises(StoreError, match="carries credentials") as caught:
            call()
        text = "".join(traceback.format_exception(caught.value))
        assert SECRET not in text and "AKIAIOSFODNN7EXAMPLE" not in text
        assert "s3://***@neurovit" in str(caught.value)
    assert SECRET not in caplog.text


def test_redact_uri() -> None:
    assert store_module.redact_uri(f"s3://key:{SECRET}@bucket/p") == "s3://***@bucket/p"
    assert store_module.redact_uri("http://user@host:9000") == "http://***@host:9000"
    assert store_module.redact_uri("s3://bucket/a@b") == "s3://bucket/a@b"  # an @ in a key is no credential


@pytest.mark.parametrize("action", ["publish", "fetch"])
def test_disk_full_is_a_clear_store_error_that_leaves_nothing(
    store: store_module.ArtifactStore,
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    import errno

    version = store.publish(MODEL, source, metadata={}) if action == "fetch" else new_version_id()
    real_copy, calls = store_module._copy_file, []

    def copy_until_full(src: Path, dst: Path) -> None:
        calls.append(src)
        if len(calls) == 2:
            dst.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_copy(src, dst)

    monkeypatch.setattr(store_module, "_copy_file", copy_until_full)
    dest = tmp_path / "fetched" / "version"
    with pytest.raises(StoreError, match="no space left on the device"):
        if action == "publish":
            store.publish(MODEL, source, metadata={}, version=version)
        else:
            store.fetch(MODEL, version, dest)
    if action == "publish":
        assert list((tmp_path / "store" / MODEL).iterdir()) == []
    else:
        assert list((tmp_path / "fetched").iterdir()) == []  # no destination, no hidden staging folder
