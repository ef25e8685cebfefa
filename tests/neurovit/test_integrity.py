"""A model server loads only a folder that is exactly one published version (neurovit.integrity), and the
TorchServe handler refuses to initialise otherwise: TorchServe then never reports the model ready."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
from fixtures.serving_samples import MODEL, VERSION, published_copy, save_tiny_model, served_version
from ts.context import Context

from neurovit.errors import IntegrityError
from neurovit.integrity import DEFAULT_VERSION_DIR, VERSION_DIR_ENV, verify_folder, verify_served_version

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def version_dir(tmp_path) -> Path:
    source = tmp_path / "package"
    (source / "model-store").mkdir(parents=True)
    (source / "model-store" / "neurovit.mar").write_bytes(b"archive " * 100)
    (source / "config").mkdir()
    (source / "config" / "config.properties").write_text("inference_address=http://0.0.0.0:8085\n")
    return published_copy(source)


def test_an_intact_version_verifies(version_dir):
    manifest = verify_folder(version_dir, model=MODEL, version=VERSION)
    assert set(manifest["files"]) == {"model-store/neurovit.mar", "config/config.properties"}


def test_a_tampered_file_is_refused(version_dir):
    (version_dir / "model-store" / "neurovit.mar").write_bytes(b"ARCHIVE " * 100)  # same size
    with pytest.raises(IntegrityError, match="neurovit.mar: sha256 .* does not match"):
        verify_folder(version_dir)


def test_a_truncated_file_is_refused(version_dir):
    (version_dir / "model-store" / "neurovit.mar").write_bytes(b"archive ")
    with pytest.raises(IntegrityError, match="size 8 bytes, manifest says 800"):
        verify_folder(version_dir)


def test_a_folder_without_manifest_is_refused(version_dir):
    (version_dir / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="has no manifest.json"):
        verify_folder(version_dir)


def test_an_incomplete_version_is_refused(version_dir):
    (version_dir / "config" / "config.properties").unlink()
    with pytest.raises(IntegrityError, match="config.properties: file missing"):
        verify_folder(version_dir)


def test_files_of_a_sibling_version_are_refused(version_dir):
    """What a storageUri without trailing slash copies: .../v1 also matches .../v10's objects."""
    shutil.copytree(version_dir / "model-store", version_dir / "0" / "model-store")
    with pytest.raises(IntegrityError, match="files its manifest does not list .*0/model-store/neurovit.mar"):
        verify_folder(version_dir)


def test_a_manifest_path_leaving_the_folder_is_refused(version_dir):
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"]["../outside"] = {"sha256": "0" * 64, "size": 1}
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="unsafe file path"):
        verify_folder(version_dir)


def test_an_archive_of_another_version_is_refused(version_dir):
    with pytest.raises(IntegrityError, match="is for version .*, the server loads 'v20990101-000000-000000'"):
        verify_folder(version_dir, model=MODEL, version="v20990101-000000-000000")


def test_the_served_folder_is_kserves_mount_unless_named(monkeypatch, version_dir, caplog):
    monkeypatch.delenv(VERSION_DIR_ENV, raising=False)
    if not Path(DEFAULT_VERSION_DIR).exists():
        with pytest.raises(IntegrityError, match=f"{DEFAULT_VERSION_DIR} is not a folder"):
            verify_served_version(MODEL, VERSION)
    monkeypatch.setenv(VERSION_DIR_ENV, str(version_dir))
    caplog.set_level(logging.INFO, logger="neurovit.integrity")
    assert verify_served_version(MODEL, VERSION)["version"] == VERSION
    assert "2 files match manifest.json" in caplog.text


def load_handler():
    spec = importlib.util.spec_from_file_location(
        "neurovit_handler", ROOT / "handlers" / "neurovit_handler.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.NeuroViTHandler()


def test_the_handler_loads_nothing_from_a_tampered_version(tmp_path, caplog):
    model_dir = save_tiny_model(tmp_path / "model", monitoring=False)
    version_dir = published_copy(model_dir)
    weights = version_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    context = Context(
        MODEL, str(model_dir), {"model": {"modelName": MODEL, "modelVersion": VERSION}}, 1, None, "0.12.0"
    )
    handler = load_handler()
    caplog.set_level(logging.ERROR, logger="neurovit.integrity")
    with served_version(version_dir), pytest.raises(IntegrityError, match="model.safetensors: sha256"):
        handler.initialize(context)
    assert "refusing to load neurovit v20261125-160000-abcdef" in caplog.text
    assert handler.predictor is None and not handler.initialized
